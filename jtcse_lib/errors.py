"""One exception type for problems the user can fix: bad data, bad model names, bad configuration.

The CLI prints such an error as one line (cause and fix) on stderr and exits with status 2; anything
else is a bug and keeps its traceback.
"""


class JtcseError(Exception):
    """A problem with the user's input, stated as 'what is wrong. Fix: what to do'."""

    exit_code = 2  # what the CLI exits with

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if fix is None else f"{problem}. Fix: {fix}")


class DataError(JtcseError):
    """A data folder or data file is missing or malformed."""


class ModelError(JtcseError):
    """A model name or folder cannot be resolved to an encoder."""


class ConfigError(JtcseError):
    """A profile, key or value of the run configuration is invalid."""


class Interrupted(JtcseError):
    """Training was stopped by SIGINT (Ctrl-C) or SIGTERM after writing a checkpoint: the same command resumes."""

    exit_code = 130
