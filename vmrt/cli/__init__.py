"""The ``vmrt`` command line."""
