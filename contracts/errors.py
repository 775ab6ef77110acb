"""User-facing errors: the message says what is wrong and how to fix it.

``python -m training`` prints them as ``error: <message>`` and exits with status 2, without a
traceback. Everything else is a bug and keeps its traceback.
"""


class DataError(ValueError):
    """The data cannot be used as given (missing folder, bad CSV, unreadable image, ...)."""


class ConfigError(ValueError):
    """The configuration asks for something impossible (unknown model, bad fractions, ...)."""
