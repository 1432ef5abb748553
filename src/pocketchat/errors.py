"""Errors a user can fix. The CLI prints these as one clear line instead of a traceback."""


class UserError(Exception):
    """Bad input from the user: a file, a config value, a flag. The message names what and where."""
