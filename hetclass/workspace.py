"""Per-dataset working set for EM: batches, the cached slice operators and grid bookkeeping.

Built once per preprocessed dataset and shared by every replicate (the operators depend only
on the poses). Batches never straddle half sets, so each batch's back-projection goes to one
half-set accumulator.
"""

from __future__ import annotations

import threading
from typing import List, Optional, Tuple

import numpy as np

from .comm import SerialComm
from .preprocess import FourierData
from .projector import grid_side, slice_operator
from .reconstruct import grid_shells

DEFAULT_CACHE_BYTES = 3 * 2 ** 30


class Workspace:
    """Batches and operators for ``data``; ``pad`` is the Fourier oversampling of the maps."""

    def __init__(self, data: FourierData, k: int, pad: int = 2, batch_size: Optional[int] = None,
                 cache_bytes: Optional[int] = None, comm=None):
        self.data = data
        self.comm = SerialComm() if comm is None else comm
        self.device_pass = None   # a GPU pass (hetclass.gpu) replacing the CPU batches
        self.pad = int(pad)
        b = data.plan.crop_box_px
        self.side = grid_side(b, self.pad)
        self.n_voxels = self.side ** 3
        self.n_shells = data.plan.data_shell + 1
        self.like_shells = data.plan.target_shell + 1
        self.grid_shell = grid_shells(self.side, self.pad)
        m = data.coeffs.size
        if batch_size is None:
            # ~64 MB of (batch, M, K) complex work arrays
            batch_size = int(np.clip(8e6 / max(m * max(k, 1), 1), 64, 4096))
        self.batch_size = int(batch_size)
        self.batches: List[Tuple[np.ndarray, int]] = []
        for half in (1, 2):
            rows = np.flatnonzero(data.subset == half)
            for start in range(0, rows.size, self.batch_size):
                self.batches.append((rows[start:start + self.batch_size], half - 1))
        nnz_bytes = 8 * 8 * len(data) * m
        limit = DEFAULT_CACHE_BYTES if cache_bytes is None else cache_bytes
        self.cache_operators = nnz_bytes <= limit
        self._ops = {}
        self._lock = threading.Lock()

    def batch_arrays(self, index: int):
        """(data (n, M) complex64, ctf (n, M) float32, group (n,)) of batch ``index``."""
        rows = self.batches[index][0]
        return self.data.data[rows], self.data.ctf[rows], self.data.group[rows]

    def operator(self, index: int):
        """Sparse slice operator of batch ``index`` (cached when the budget allows)."""
        op = self._ops.get(index)
        if op is not None:
            return op
        rows = self.batches[index][0]
        op = slice_operator(self.data.rotations[rows], self.data.coeffs, self.pad)
        if self.cache_operators:
            with self._lock:
                self._ops[index] = op
        return op
