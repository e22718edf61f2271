"""The project's exceptions. The CLI maps each to an exit code; nothing else is shown to users."""


class LoadsimError(Exception):
    """Root of every error loadsim reports to a person as one line."""

    exit_code = 1


class ScenarioError(LoadsimError):
    """A scenario file, a flag or an environment variable holds something invalid."""

    exit_code = 2


class DatabaseUnavailable(LoadsimError):
    """The server could not be reached, or refused us."""

    exit_code = 3


class EventLogError(LoadsimError):
    """A run log given to `report` or `compare` is not one loadsim can read."""

    exit_code = 2


class InstanceFailed(LoadsimError):
    """An instance of a fleet failed: it exited with a status we did not cause, or was killed.
    The exit code is the instance's own when that says what went wrong (2: bad input, 3: the
    database), else 1: the run completed, but something failed."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class OutputError(LoadsimError):
    """The event stream could not be written: `--output` or stdout failed of itself (a full
    disk, an I/O error), not because a reader went away. Like an --output that cannot be
    opened, exit code 2: what the run was told to write to cannot be written."""

    exit_code = 2
