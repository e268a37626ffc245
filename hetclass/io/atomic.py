"""Atomic file output: write under a temporary name in the target directory, then rename.

A reader (RELION's GUI, a resumed run, another process) therefore sees either the old file
or the complete new one, never a half-written file. The temporary name keeps the target's
file name as its suffix (``.tmp-<token>-run_data.star``), so tools that infer the format
from the extension (``np.save``, ``mrcfile``) behave as for the final name.

Every operating-system error while writing (disk full, read-only, no permission) becomes an
:class:`hetclass.errors.OutputError` naming the target: one line, and the target untouched.
A process killed with SIGKILL leaves its temporaries behind; :func:`remove_temporaries`
clears them when the next run takes the output folder's lock (:mod:`hetclass.io.lock`).
A set of files that belongs together is written with :func:`staged_directory`: into a hidden
folder first, then renamed into place only when every file is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import OutputError, output_error
from . import StrPath

TEMP_PREFIX = ".tmp-"
_TEMP_NAME = re.compile(r"^\.tmp-\d+-[0-9a-f]{8}-")   # what _temp_name and staged_directory make


def _temp_name(path: str) -> str:
    directory, base = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{base}")


def is_temporary(name: str) -> bool:
    """Whether a file name is one of this module's temporaries (``.tmp-<pid>-<hex>-...``)."""
    return bool(_TEMP_NAME.match(name))


def remove_temporaries(directory: StrPath) -> int:
    """Remove every temporary file or staging folder this module made directly in
    ``directory`` (left by a killed run); returns how many were removed.

    Only call it while holding the folder's lock: a live writer's temporaries would go too.
    Sub-folders are left alone (they may be other runs' output folders).
    """
    removed = 0
    directory = os.fspath(directory)
    for name in os.listdir(directory):
        if not is_temporary(name):
            continue
        path = os.path.join(directory, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        removed += 1
    return removed


@contextlib.contextmanager
def atomic_path(path: StrPath) -> Iterator[str]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    On an exception inside the block the temporary file is removed and the exception
    propagates; ``path`` is left untouched. The caller must have closed the file before the
    block ends.

    Example::

        with atomic_path("out/run_class001.mrc") as tmp:
            write_something(tmp)
    """
    path = os.fspath(path)
    tmp = _temp_name(path)
    try:
        yield tmp
        if not os.path.exists(tmp):
            raise FileNotFoundError(f"atomic write of {path}: nothing was written to {tmp}")
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise output_error(exc, path) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def staged_directory(directory: StrPath, last: Sequence[str] = ()) -> Iterator[str]:
    """Yield a new hidden folder inside ``directory``; write a set of files there.

    When the block ends normally every file in the folder is renamed into ``directory``
    (renames need no space; the names in ``last`` go last, in that order) and the folder is
    removed. On any error the folder and its files are removed and ``directory`` keeps
    what it had: no file of the set is half-written, and none appears unless all were
    written. OSErrors become :class:`~hetclass.errors.OutputError`.
    """
    directory = os.fspath(directory)
    stage = os.path.join(directory, f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-staged")
    try:
        os.makedirs(stage)
    except OSError as exc:
        raise output_error(exc, directory) from None
    try:
        yield stage
        present = set(os.listdir(stage))
        names = sorted(present - set(last)) + [n for n in last if n in present]
        for name in names:
            os.replace(os.path.join(stage, name), os.path.join(directory, name))
        os.rmdir(stage)
    except OSError as exc:
        shutil.rmtree(stage, ignore_errors=True)
        raise output_error(exc, directory) from None
    except OutputError as exc:   # name the file as it would have been called
        shutil.rmtree(stage, ignore_errors=True)
        if exc.file is not None and exc.file.startswith(stage + os.sep):
            exc = OutputError(exc.message, file=os.path.join(directory, os.path.relpath(
                exc.file, stage)), field=exc.field, value=exc.value)
        raise exc from None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def atomic_write_text(path: StrPath, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def atomic_save_npy(path: StrPath, array: np.ndarray) -> None:
    """Save ``array`` as a ``.npy`` file at exactly ``path`` (no extension added), atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(array), allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())


def _json_default(obj: Any):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if hasattr(obj, "__fspath__"):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_write_json(path: StrPath, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (NumPy scalars/arrays become plain values)."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    atomic_write_text(path, text)
