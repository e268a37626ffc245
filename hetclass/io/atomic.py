"""Atomic file output: write under a temporary name in the target directory, then rename.

A reader (RELION's GUI, a resumed run, another process) therefore sees either the old file
or the complete new one, never a half-written file. The temporary name keeps the target's
file name as its suffix (``.tmp-<token>-run_data.star``), so tools that infer the format
from the extension (``np.save``, ``mrcfile``) behave as for the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from typing import Any, Iterator

import numpy as np


def _temp_name(path: str) -> str:
    directory, base = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".tmp-{os.getpid()}-{secrets.token_hex(4)}-{base}")


@contextlib.contextmanager
def atomic_path(path) -> Iterator[str]:
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
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def atomic_save_npy(path, array) -> None:
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


def atomic_write_json(path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (NumPy scalars/arrays become plain values)."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    atomic_write_text(path, text)
