"""GPU backend of the EM pass (CuPy): availability, device choice per MPI rank, attachment.

``attach(ws, device)`` is called by :func:`hetclass.engine.prepare` for ``--device gpu|auto``;
it returns a :class:`hetclass.gpu.device_pass.DevicePass` (data uploaded to the device) or,
for "auto" without a usable GPU, None (the CPU path). CuPy is imported only here and in the
modules that need it, never at ``import hetclass``.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional, Tuple

from ..errors import InputError

LOCAL_RANK_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID",
                        "MV2_COMM_WORLD_LOCAL_RANK", "PMI_LOCAL_RANK")


def available() -> Tuple[bool, str]:
    """(True, description) when CuPy imports and sees a CUDA device, else (False, reason)."""
    try:
        import cupy
    except Exception as exc:  # ImportError, or a CUDA library that fails to load
        return False, f"cupy cannot be imported ({type(exc).__name__}: {exc})".strip()
    try:
        count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as exc:
        return False, f"CUDA runtime error ({type(exc).__name__}: {exc})"
    if count < 1:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        return False, ("no CUDA device visible"
                       + ("" if visible is None else f" (CUDA_VISIBLE_DEVICES={visible!r})"))
    return True, f"{count} CUDA device(s) visible"


def local_rank(environ: Optional[Mapping[str, str]] = None) -> int:
    """This process's rank on its node from the MPI launcher's environment (0 if unknown)."""
    env = os.environ if environ is None else environ
    for name in LOCAL_RANK_VARIABLES:
        value = env.get(name)
        if value is not None and value.strip().isdigit():
            return int(value)
    return 0


def choose_device(n_devices: int, environ: Optional[Mapping[str, str]] = None) -> int:
    """Device index for this process: local rank modulo the visible devices.

    CUDA numbers only the devices in ``CUDA_VISIBLE_DEVICES``, so the index is among those.
    """
    if n_devices < 1:
        raise ValueError("no device to choose from")
    return local_rank(environ) % int(n_devices)


def attach(ws, device: str, classes: Optional[int] = None, precision: str = "auto"):
    """A DevicePass for ``ws`` on this rank's GPU, None for "cpu" or for "auto" without one.

    ``device == "gpu"`` without a usable GPU raises
    ``InputError("no usable GPU: <reason>", field="--device", value="gpu")``.
    """
    if device == "cpu":
        return None
    ok, reason = available()
    if not ok:
        if device == "auto":
            return None
        raise InputError(f"no usable GPU: {reason}", field="--device", value=device)
    import cupy

    from .device_pass import DevicePass
    from .kernels import KERNEL_NAMES, CupyBackend
    index = choose_device(cupy.cuda.runtime.getDeviceCount())
    cupy.cuda.Device(index).use()   # this process's device for the pass and the M-step
    backend = CupyBackend()
    try:   # compile before uploading anything: a broken CUDA toolchain fails early
        for name in KERNEL_NAMES:
            backend.function((), name)
    except Exception as exc:
        if device == "auto":
            return None
        raise InputError(f"no usable GPU: the CUDA kernels do not compile ({type(exc).__name__}: "
                         f"{exc})", field="--device", value=device) from exc
    return DevicePass(ws, xp=cupy, backend=backend, precision=precision, classes=classes)
