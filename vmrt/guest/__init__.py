"""The guest image: how it is built from Debian packages, and how it is found."""
