"""The root of vmrt's own exceptions, so callers can tell them from bugs."""


class VmrtError(Exception):
    """An error with a message meant for the user."""
