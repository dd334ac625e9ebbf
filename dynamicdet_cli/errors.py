"""The one exception type a user can cause.

Anything a user can get wrong (a path, a recipe key, a checkpoint, a threshold, an image)
raises `DynamicDetError` with a one-line message that says what is wrong and what to do.
The CLI prints that line and exits non-zero; it never shows a traceback for these.
Asserts are kept for programmer errors only.
"""


class DynamicDetError(Exception):
    """A user-facing error: `str(err)` is a complete one-line message."""
