"""Per-dataset working set for EM: batches, the cached slice operators, grid bookkeeping, and
the host-memory plan (``--max-memory``).

Built once per preprocessed dataset and shared by every replicate (the operators depend only
on the poses). Batches never straddle half sets, so each batch's back-projection goes to one
half-set accumulator; within a half set they are consecutive runs of the input order, which
is also the order of a cache on disk (:mod:`hetclass.fourier_store`), so a batch is one
contiguous read. Inside a batch the particles are ordered by viewing direction
(:func:`hetclass.projector.view_order`): the order of the batch's rows, data and operator.
"""

from __future__ import annotations

import os
import threading
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .comm import SerialComm
from .errors import InputError
from .fourier_store import BYTES_PER_COEFFICIENT
from .preprocess import FourierData
from .projector import coefficient_prefix, grid_side, particle_rows, slice_operator, view_order
from .reconstruct import grid_shells

DEFAULT_CACHE_BYTES = 3 * 2 ** 30
MIN_BATCH = 64
MAX_BATCH = 2048     # several batches per half set keep --threads busy (same sums any count)
PREPROCESS_BATCH = 512
MB = 2 ** 20

# Host memory model of one EM, fitted to peak-RSS measurements of fits on simulated data
# (box 64; M = 307 and 1061; K = 2, 4, 8; batches of 512 to 4096) with some headroom;
# benchmarks/bench_memory.py checks the bound end to end. Per particle-coefficient of one
# batch: the slice operator and its construction temporaries, data/CTF read buffers, the
# E-step and back-projection work arrays (measured ~112 + ~32 K bytes).
BATCH_BYTES_PER_COEF = 128
BATCH_BYTES_PER_COEF_CLASS = 40
OPERATOR_BYTES_PER_COEF = 64          # a cached operator: 8 (float32 weight, int32 index) pairs
VOLUME_BYTES_PER_VOXEL_CLASS = 112    # accumulators, stacked grids, M-step work (measured ~104)
PARTICLE_BYTES = 96                   # per particle: poses, labels, log-likelihoods, ...
PARTICLE_BYTES_PER_CLASS = 24         # posteriors (local and gathered)
# per original pixel of an image in flight during preprocessing: the float32 image, the raw
# read buffer and the cropping's temporaries (fft path: the rfft2; ~10 measured)
PREPROCESS_BYTES_PER_PIXEL = 16
# writing run_data.star & co. after the EM (text of every particle's row): measured ~1.1 kB
OUTPUT_BYTES_PER_PARTICLE = 1280
MARGIN_BYTES = 96 * MB                # modules imported later, allocator slack, outputs


def default_batch_size(m: int, k: int) -> int:
    """~64 MB of (batch, M, K) complex work arrays, between 64 and 2048 particles."""
    return int(np.clip(8e6 / max(m * max(k, 1), 1), MIN_BATCH, MAX_BATCH))


def current_rss_bytes() -> int:
    """Resident memory of this process now (Linux), else its peak so far (0 if unknown)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    try:
        import resource
        import sys
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)
    except Exception:
        return 0


@dataclass
class MemoryPlan:
    """How one rank uses host memory (all sizes in bytes).

    ``data_in_memory`` False: the particle data stream from a cache on disk, batch by batch.
    ``operator_cache_bytes`` 0: slice operators are rebuilt for every batch; otherwise the
    operators of the first batches are kept up to that many bytes.
    """

    budget_bytes: Optional[int]
    batch_size: Optional[int]           # None: :func:`default_batch_size`
    preprocess_batch: int
    data_in_memory: bool
    operator_cache_bytes: Optional[int]  # None: DEFAULT_CACHE_BYTES
    base_bytes: int = 0                 # resident before preprocessing (libraries, metadata)
    fixed_bytes: int = 0                # base + maps/accumulators + per-particle arrays
    data_bytes: int = 0                 # this rank's cropped data + CTF
    batch_bytes: int = 0                # one batch's working set (times concurrent fits)
    preprocess_threads: int = 1         # cropping threads (threads + 1 batches in flight)

    def summary(self) -> dict:
        out = asdict(self)
        return {k: (round(v / MB, 1) if k.endswith("_bytes") and v is not None else v)
                for k, v in out.items()}


def plan_memory(max_memory_GB: Optional[float], n_local: int, n_total: int, m: int, k: int,
                crop_box_px: int, box_px: int, pad: int = 2, batch_size: Optional[int] = None,
                concurrent: int = 1, base_bytes: Optional[int] = None,
                preprocess_threads: int = 1) -> MemoryPlan:
    """Batch sizes, data placement and operator caching for a host-memory budget.

    Without a budget: today's defaults (data in RAM, operators cached up to 3 GB). With
    ``max_memory_GB`` (per process): after the fixed costs (``base_bytes``, default this
    process's resident memory now; maps; per-particle arrays) and twice ``concurrent`` batch
    working sets (the allocator keeps freed ones for reuse), the data stay in RAM only if
    they fit, and the operators are cached in what is left after the data (all of them, or
    those of the first batches). Preprocessing holds ``preprocess_threads + 1`` batches of
    images at once (one with a single thread).
    InputError (field ``--max-memory``) below the minimum.
    """
    k = max(int(k), 2)
    threads = max(int(preprocess_threads), 1)
    in_flight = threads + 1 if threads > 1 else 1
    if max_memory_GB is None:
        return MemoryPlan(None, batch_size, max(MIN_BATCH, PREPROCESS_BATCH // in_flight), True,
                          None, preprocess_threads=threads)
    if not max_memory_GB > 0:
        raise InputError("must be > 0 (GB)", field="--max-memory", value=max_memory_GB)
    budget = int(float(max_memory_GB) * 2 ** 30)
    base = current_rss_bytes() if base_bytes is None else int(base_bytes)
    concurrent = max(int(concurrent), 1)
    voxels = grid_side(crop_box_px, pad) ** 3
    common = (base + MARGIN_BYTES + n_local * (PARTICLE_BYTES + PARTICLE_BYTES_PER_CLASS * k)
              + n_total * PARTICLE_BYTES_PER_CLASS * k)
    # two phases that do not overlap: the EM (maps + one batch per concurrent fit), then
    # writing the outputs (data kept in RAM, if any, stay through both)
    em_fixed = common + concurrent * VOLUME_BYTES_PER_VOXEL_CLASS * voxels * k
    out_fixed = common + n_total * OUTPUT_BYTES_PER_PARTICLE
    per_row = concurrent * m * (BATCH_BYTES_PER_COEF + BATCH_BYTES_PER_COEF_CLASS * k)
    need = max(em_fixed + MIN_BATCH * per_row, out_fixed)
    if budget < need:
        raise InputError(f"below the {need / 2 ** 30:.2f} GB this run needs at least "
                         f"({base / MB:.0f} MB already in use, "
                         f"{(em_fixed - base) / MB:.0f} MB for maps and per-particle arrays "
                         f"and {MIN_BATCH * per_row / MB:.0f} MB for the smallest batch, or "
                         f"{(out_fixed - base) / MB:.0f} MB to write the outputs)",
                         field="--max-memory", value=max_memory_GB)
    free = budget - em_fixed
    if batch_size is None:
        # at most half of what the EM has left goes to the batch working set
        batch_size = int(min(default_batch_size(m, k), max(MIN_BATCH, free // 2 // per_row)))
    batch_bytes = int(batch_size) * per_row
    # twice the batch working set: the allocator keeps freed work arrays for reuse
    # (hetclass.allocator), so the heap holds the last batches' arrays beside the current
    left = min(free - 2 * batch_bytes, budget - out_fixed)
    data_bytes = n_local * m * BYTES_PER_COEFFICIENT
    in_memory = data_bytes <= left
    if in_memory:
        left -= data_bytes
    ops = n_local * m * OPERATOR_BYTES_PER_COEF
    op_cache = int(max(0, min(ops, left)))     # the budget's remainder: all, or the first batches
    pre = int(np.clip((budget - common - (data_bytes if in_memory else 0))
                      // (PREPROCESS_BYTES_PER_PIXEL * box_px ** 2 * in_flight), 8,
                      max(MIN_BATCH, PREPROCESS_BATCH // in_flight)))
    fixed = max(em_fixed, out_fixed)
    return MemoryPlan(budget, int(batch_size), pre, bool(in_memory), op_cache, int(base),
                      int(fixed), int(data_bytes), int(batch_bytes), threads)


class Workspace:
    """Batches and operators for ``data``; ``pad`` is the Fourier oversampling of the maps."""

    def __init__(self, data: FourierData, k: int, pad: int = 2, batch_size: Optional[int] = None,
                 cache_bytes: Optional[int] = None, comm=None,
                 threads: int = 1):
        self.data = data
        # batches processed at once by the CPU E-step (see hetclass.em.run_pass)
        self.threads = max(1, int(threads or 1))
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
            batch_size = default_batch_size(m, k)
        self.batch_size = int(batch_size)
        self.batches: List[Tuple[np.ndarray, int]] = []
        for half in (1, 2):
            rows = np.flatnonzero(data.subset == half)
            for start in range(0, rows.size, self.batch_size):
                batch = rows[start:start + self.batch_size]
                self.batches.append((batch[view_order(data.rotations[batch])], half - 1))
        self.cache_limit_bytes = int(DEFAULT_CACHE_BYTES if cache_bytes is None else cache_bytes)
        self.cached_bytes = 0
        self._ops: Dict[int, Dict[int, Any]] = {}   # batch -> {m_use: (operator, bytes)}
        self._lock = threading.Lock()

    def batch_arrays(self, index: int, keep: Optional[np.ndarray] = None):
        """(data (n, M) complex64, ctf (n, M) float32, group (n,)) of batch ``index``, or of
        its particles at positions ``keep`` only (read from disk when the data stream from
        a cache: a subset pass reads its particles alone)."""
        rows = self.batches[index][0]
        if keep is not None:
            rows = rows[keep]
        x, c = self.data.store.read(rows)
        return x, c, self.data.group[rows]

    def operator(self, index: int, m_use: Optional[int] = None,
                 keep: Optional[np.ndarray] = None):
        """Sparse slice operator of batch ``index`` for its first ``m_use`` coefficients
        (default all; the coefficients are ordered by shell, so this is the data up to a
        resolution). Kept while the cache has room (``cache_limit_bytes``; the first batches
        when not all fit): per batch the operator of all coefficients and the latest prefix.
        A prefix is cut out of a kept full operator (:func:`coefficient_prefix`) instead of
        rebuilt: exploration switches between reconstructions (all coefficients) and
        E-steps (the likelihood's prefix) many times. Kept, cut and rebuilt operators are
        the same numbers, so results do not depend on the cache; the cache is shared by
        every iteration and every replicate of the data set.

        ``keep`` (sorted positions in the batch): the operator of these particles only (an
        exploration subset, one class's particles). Cut from a kept operator, or from the
        whole batch's built now when the cache has room to keep it (later passes cut again),
        else built for them alone and not kept (a budget too small for the operators: each
        pass builds only what it uses). The same numbers in every case: a particle's rows
        come from its own rotation."""
        m_full = self.data.coeffs.size
        m_use = m_full if m_use is None else int(m_use)
        kept = self._ops.get(index, {})
        if m_use in kept:
            op = kept[m_use][0]
        elif m_full in kept:
            op = coefficient_prefix(kept[m_full][0], m_full, m_use)
            self._keep(index, m_use, op)
        else:
            rows = self.batches[index][0]
            whole_bytes = rows.size * m_use * OPERATOR_BYTES_PER_COEF
            if keep is not None and self._placement(index, m_use, whole_bytes) is None:
                return slice_operator(self.data.rotations[rows[keep]],
                                      self.data.coeffs.prefix(m_use), self.pad)
            op = slice_operator(self.data.rotations[rows], self.data.coeffs.prefix(m_use),
                                self.pad)
            self._keep(index, m_use, op)
        return op if keep is None else particle_rows(op, keep, m_use)

    def _keep(self, index: int, m_use: int, op) -> None:
        """Cache ``op`` as batch ``index``'s operator of ``m_use`` coefficients: beside the
        batch's full operator if there is room (replacing its previous prefix), else in
        place of everything the batch had (the latest use wins, as with one operator per
        batch), else not at all."""
        size = op.data.nbytes + op.indices.nbytes + op.indptr.nbytes
        with self._lock:
            placed = self._placement(index, m_use, size)
            if placed is not None:
                stay, freed = placed
                self._ops[index] = {**stay, m_use: (op, size)}
                self.cached_bytes += size - freed

    def _placement(self, index: int, m_use: int, size: int):
        """Where :meth:`_keep` would put an operator of ``size`` bytes: ``(the batch's
        entries that stay, bytes freed)``, or None when it would not be kept."""
        m_full = self.data.coeffs.size
        kept = self._ops.get(index, {})
        for keep in ((m_full,), ()):
            stay = {m: v for m, v in kept.items() if m in keep and m != m_use}
            freed = sum(v[1] for m, v in kept.items() if m not in stay)
            if self.cached_bytes - freed + size <= self.cache_limit_bytes:
                return stay, freed
        return None
