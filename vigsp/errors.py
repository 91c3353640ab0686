"""Exceptions that carry a message for the user rather than a traceback."""


class UserError(Exception):
    """Bad input from the user: a path, a config key, an image. The message says what to do."""
