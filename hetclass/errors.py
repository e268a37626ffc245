"""Error and warning classes shared by the core and every front end.

Front ends turn :class:`InputError` into a one-line message on stderr and exit code 2.
"""

from __future__ import annotations

import errno
import os
from typing import Any, Optional


class HetclassError(Exception):
    """Base class of every error hetclass raises on purpose."""


class InputError(HetclassError, ValueError):
    """Bad user input: names the file, the field and the offending value.

    Parameters
    ----------
    message : what is wrong, in words a user understands.
    file : the file concerned (or None for command-line values).
    field : the column / option / header field concerned.
    value : the offending value (shortened when printed).
    """

    def __init__(self, message: str, file: Optional[str] = None, field: Optional[str] = None,
                 value: Any = None):
        self.message = message
        self.file = None if file is None else str(file)
        self.field = field
        self.value = value
        super().__init__(self.one_line())

    def one_line(self) -> str:
        parts = []
        if self.file is not None:
            parts.append(self.file)
        if self.field is not None:
            parts.append(f"field {self.field}")
        if self.value is not None:
            text = repr(self.value) if not isinstance(self.value, str) else repr(self.value)
            if len(text) > 80:
                text = text[:77] + "..."
            parts.append(f"value {text}")
        prefix = ": ".join(parts)
        msg = f"{prefix}: {self.message}" if prefix else self.message
        return " ".join(msg.split())  # one line, always


class OutputError(InputError):
    """The output location cannot be written (read-only, full, no permission, locked).

    An :class:`InputError` because the user chose the location (``--out``, ``--cache``):
    front ends print its one line and exit with code 2.
    """


def describe_os_error(exc: OSError) -> str:
    """``exc`` in words, one line: the system's reason and its errno name, without the path
    (callers name the file themselves), e.g. ``"No space left on device (ENOSPC)"``."""
    reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
    code = errno.errorcode.get(exc.errno) if exc.errno is not None else None
    return f"{reason} ({code})" if code else reason


def output_error(exc: OSError, path: Optional[str] = None, doing: str = "cannot write") -> OutputError:
    """An :class:`OutputError` for ``exc`` met while writing ``path`` (default: the path the
    error names). Disk-full and read-only errors get a hint."""
    target = path if path is not None else (exc.filename or None)
    hint = ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "; free some space (or choose another --out) and rerun (--continue resumes)"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        hint = "; choose a writable --out"
    return OutputError(f"{doing}: {describe_os_error(exc)}{hint}",
                       file=None if target is None else os.fspath(target))


class AbortRequested(HetclassError):
    """Raised when a caller-provided abort check fires between iterations or batches."""


class HetclassWarning(UserWarning):
    """Domain warnings (empty class, missing stacks during conversion, ...)."""


class EmptyClassWarning(HetclassWarning):
    """A class lost all its particles during EM."""
