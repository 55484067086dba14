"""The one error type a user can fix: the command line prints it as one line, exit status 2."""

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A config, its overrides, a command's arguments or the files they name cannot make a run;
    the message names the key, option or file and what to do. A ``ValueError``, so code that
    catches those keeps working; anything else raised is a bug and keeps its traceback."""
