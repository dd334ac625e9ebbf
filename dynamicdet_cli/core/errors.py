"""The one exception type a user can cause, and the funnel that turns user errors into one line.

Anything a user can get wrong (a path, a recipe key, a checkpoint, a threshold, an image)
raises `DynamicDetError` with a one-line message that says what is wrong and what to do.
The CLI prints that line and exits non-zero; it never shows a traceback for these.
Asserts are kept for programmer errors only.

The file system raises its own errors (a folder where a file is expected, a read-only
folder, a full disk); `user_message` words those as one line too, so the CLI catches both
in one place. Anything else is a programmer error and keeps its traceback.

Warnings a user should see (dropped boxes, a checkpoint without checksum) go through
`warn`, which the CLI routes to its error console as one `warning:` line; library code
never uses Python's `warnings` module for them.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable


class DynamicDetError(Exception):
    """A user-facing error: `str(err)` is a complete one-line message."""


USER_ERRORS = (DynamicDetError, OSError)

_OS_HINTS = {
    errno.EACCES: "permission denied: choose a folder you can write to, or change its permissions",
    errno.EPERM: "operation not permitted: choose another path",
    errno.EISDIR: "is a folder: give a file path",
    errno.ENOTDIR: "a part of this path is a file, not a folder: choose another path",
    errno.ENOENT: "no such file or folder",
    errno.EEXIST: "already exists",
    errno.ENOSPC: "no space left on the device: free some space or write elsewhere",
    errno.EROFS: "read-only file system: write elsewhere",
    errno.ENAMETOOLONG: "file name too long",
}


def missing_file(path, message: str) -> DynamicDetError:
    """The error for a file that is not there: `message`, unless the path is a folder, which
    is said as such (the README promises a folder is reported as what it is)."""
    if os.path.isdir(path):
        return DynamicDetError(f"{os.fsdecode(path)}: {_OS_HINTS[errno.EISDIR]}")
    return DynamicDetError(message)


def user_message(err: BaseException) -> str:
    """One line for a user error (DynamicDetError or OSError): what went wrong, where."""
    if isinstance(err, OSError) and not isinstance(err, DynamicDetError):
        return _os_message(err)
    text = str(err)
    if "Original Traceback" in text:  # re-raised by a DataLoader worker with its traceback
        text = text.rstrip().splitlines()[-1]
        text = text.split("Error: ", 1)[-1] if "Error: " in text else text
    return " ".join(text.split()) or type(err).__name__


def memory_message(err: BaseException) -> str | None:
    """One line for an allocation that failed (MemoryError, torch's CPU allocator or CUDA out
    of memory), or None for any other error."""
    text = str(err)
    if not (isinstance(err, MemoryError) or "can't allocate memory" in text or "out of memory" in text.lower()):
        return None
    first = " ".join(text.strip().splitlines()[0].split()) if text.strip() else type(err).__name__
    return (f"not enough memory ({first[:200]}): use smaller images (--image-size or model.transform.max_size), "
            "a smaller --batch-size, or fewer classes")


def _os_message(err: OSError) -> str:
    # os.replace(tmp, target) names the target second: the user knows the target, not our tmp
    path = err.filename2 if err.filename2 is not None else err.filename
    what = _OS_HINTS.get(err.errno) or (err.strerror or str(err) or type(err).__name__)
    if err.errno == errno.EEXIST and path is not None and os.path.isfile(path):
        what = "is a file, not a folder: choose another path"  # mkdir with a file in the way
    if path is None:
        text = str(err).splitlines()[-1] if str(err) else what
        return " ".join(f"file system error: {text}".split())
    return f"{os.fsdecode(path)}: {what}"


# ----------------------------------------------------------------------------- warnings

def _stderr_sink(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


_sink: Callable[[str], None] = _stderr_sink


def warn(message: str) -> None:
    """Tell the user something they should know that does not stop the command (one line)."""
    _sink(message)


def set_warning_sink(sink: Callable[[str], None] | None) -> None:
    """Route `warn` to `sink` (the CLI's console); None restores plain stderr."""
    global _sink
    _sink = sink or _stderr_sink
