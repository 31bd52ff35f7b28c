"""The exceptions mrlkit raises for problems a user can act on.

Every stage turns these into one clear line on stderr and a non-zero exit
(see ``mrlkit.cli``); anything else is a bug and keeps its traceback.
"""


class MrlkitError(Exception):
    """A problem with the user's input, config or environment, stated plainly."""


class ConfigError(MrlkitError):
    """The pipeline config is invalid; raised before any work starts."""


class StorageError(MrlkitError):
    """A storage location cannot be read or written (after bounded retries)."""


class StorageNotFound(StorageError):
    """The object or published output does not exist."""


class ModelError(MrlkitError):
    """A model reference cannot be resolved, downloaded or verified."""
