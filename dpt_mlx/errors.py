"""Exceptions for problems a user can fix. Their message is one line that says what to do."""


class DPTError(Exception):
    """Base class: something about the user's input, files or environment is wrong."""


class CheckpointError(DPTError, ValueError):
    """A checkpoint is missing, unreadable, incomplete or does not match its config."""


class UnsupportedModelError(CheckpointError):
    """The checkpoint is of a model type or backbone dpt_mlx does not implement."""


class ImageError(DPTError, ValueError):
    """An input image is missing, unreadable or not an image."""


class UsageError(DPTError):
    """A bad option or combination of options on a command line (exit status 2)."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), for one-line errors."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
