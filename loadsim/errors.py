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
