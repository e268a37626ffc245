"""The array module of the inputs (NumPy or CuPy) and the one way back to the host.

CuPy is imported only when an input already is a CuPy array, so CPU-only installs never
touch it.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

Array = Any   # a NumPy or a CuPy array (CuPy is optional, so no narrower static type)


def is_device_array(a: Array) -> bool:
    """True for a CuPy array (checked by type, without importing CuPy)."""
    return type(a).__module__.split(".")[0] == "cupy"


def array_module(*arrays: Array) -> ModuleType:
    """``cupy`` when any argument is a CuPy array, else ``numpy``."""
    for a in arrays:
        if is_device_array(a):
            import cupy
            return cupy
    return np


def to_host(a: Array) -> np.ndarray:
    """A NumPy array with the values of ``a`` (a copy only when ``a`` is on the device)."""
    if is_device_array(a):
        return a.get()
    return np.asarray(a)
