"""The exceptions mrlkit raises for problems a user can act on.

Every stage turns these into one clear line on stderr and a non-zero exit
(see ``mrlkit.cli``); anything else is a bug and keeps its traceback, except a full
disk (:func:`disk_full_error`), which is the user's to fix wherever it happens.
"""

import errno

NO_SPACE = "No space left on device"  # os.strerror(errno.ENOSPC) on Linux; pyarrow's errors carry only this text


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


def disk_full_error(exc: BaseException) -> OSError | None:
    """The "no space left on device" error behind ``exc``, if there is one.

    A disk can fill in any stage, in the driver or in a Ray task. Ray re-raises a task's exception
    wrapped (``RayTaskError``, the original as ``cause``) and libraries chain theirs, so this looks
    through ``cause``, ``__cause__`` and ``__context__``. pyarrow's OSError carries no errno, only the text.
    """
    todo: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and (current.errno == errno.ENOSPC or NO_SPACE in str(current)):
            return current
        todo += [current.__cause__, current.__context__, getattr(current, "cause", None)]
    return None
