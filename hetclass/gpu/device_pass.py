"""One EM pass with the data resident on a device: the GPU twin of :func:`hetclass.em.run_pass`.

The particles' data, CTFs, rotations and the coefficient frequencies are uploaded once (rows
ordered half set 1 then half set 2, so every batch is a contiguous row range of one half set);
per pass only the reference maps (K small maps) go up, and the posteriors, log evidences and
the small accumulators come back once at the end. Class grids, the likelihoods, the
posteriors (log-sum-exp), the noise sums and the (2, N**3, 3K) back-projection accumulator
stay on the device; ``acc.grid`` is returned as a device array for
:func:`hetclass.mstep.m_step`.

The arithmetic is :func:`hetclass.em_step.process_batch`'s: the kernels
(:mod:`hetclass.gpu.kernels`) give each particle's residual power per class and shell; the
log-likelihood is ``-sum over shells < like_shells of power / sigma2[group, shell]`` (sigma2
is constant within a shell, so this is the per-coefficient sum of the CPU path).

Works with ``xp = cupy`` (CuPy kernels) and with ``xp = numpy`` plus the g++ emulation of the
kernels (``tests/cuda_emulation.py``), which is how it is tested without a GPU.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..em_step import Accumulators, likelihood_shell_range
from ..errors import InputError
from ..projector import stack_grids
from ..reconstruct import volume_to_grid
from .kernels import KernelSet
from .xp import to_host

# fraction of the free device memory the per-batch work arrays may use
BATCH_MEMORY_FRACTION = 0.5
# "auto" precision keeps float32 data/CTF when they take at most this fraction of free memory
FLOAT32_DATA_FRACTION = 0.6
MIN_BATCH, MAX_BATCH = 64, 65536
# float16 data are stored divided by a power of two that brings the largest |value| to 2**14
HALF_TARGET_MAX = 2.0 ** 14
UPLOAD_ROWS = 8192


def storage_bytes(n: int, m: int, precision: str) -> int:
    """Device bytes of the data (complex) and CTF of ``n`` particles x ``m`` coefficients."""
    item = 2 if precision == "float16" else 4
    return int(n) * int(m) * 3 * item


def reserved_bytes(n_voxels: int, k: int) -> int:
    """Device bytes kept free for one pass's grids and the M-step (estimate): accumulator
    (2, V, 3K) float32, two stacked class grids (+ a transposed copy) and the M-step's
    per-class complex/float64 grids."""
    return int(n_voxels) * int(k) * (2 * 3 * 4 + 2 * 8 * 2 + 2 * 16 * 2)


def batch_size_from_free_bytes(free_bytes: float, k: int, n_shells: int, n_groups: int = 1,
                               fraction: float = BATCH_MEMORY_FRACTION,
                               min_batch: int = MIN_BATCH, max_batch: int = MAX_BATCH) -> int:
    """Particles per batch so that the E-step's work arrays use ``fraction`` of ``free_bytes``.

    Per particle: the (K, S) float32 residual powers, their float32 ratio to sigma2 and a
    float64 copy (weighted noise sums), ~10 (K,) float64 vectors, (S,) and (G,) float64.
    """
    per_particle = k * n_shells * (4 + 4 + 8) + 10 * 8 * k + 8 * n_shells + 8 * n_groups + 64
    size = int(fraction * float(free_bytes) // per_particle)
    return int(min(max(size, min_batch), max_batch))


def choose_precision(precision: str, n: int, m: int, free_bytes: Optional[float]) -> str:
    """"float32" or "float16" storage; "auto" keeps float32 when it fits comfortably."""
    if precision not in ("auto", "float32", "float16"):
        raise InputError("must be auto, float32 or float16", field="precision", value=precision)
    if precision != "auto":
        return precision
    if free_bytes is None or storage_bytes(n, m, "float32") <= FLOAT32_DATA_FRACTION * free_bytes:
        return "float32"
    return "float16"


def half_data_scale(max_abs: float) -> float:
    """Power of two dividing the data for float16 storage (largest |value| -> ~2**14)."""
    if not max_abs > 0 or not np.isfinite(max_abs):
        return 1.0
    return float(2.0 ** np.ceil(np.log2(max_abs / HALF_TARGET_MAX)))


def device_free_bytes(xp) -> Optional[int]:
    """Free device memory (CuPy: the driver's free bytes plus the pool's cached free blocks);
    None for NumPy."""
    if xp is np:
        return None
    free, _total = xp.cuda.Device().mem_info
    return int(free + xp.get_default_memory_pool().free_bytes())


class DevicePass:
    """EM passes over ``ws.data`` with the data resident in ``xp``'s memory.

    Parameters
    ----------
    ws : the :class:`hetclass.workspace.Workspace` (geometry, shells, half sets).
    xp : ``cupy`` (default) or ``numpy`` (with an emulated ``backend``, for tests).
    backend : kernel launcher (:class:`hetclass.gpu.kernels.CupyBackend` by default).
    precision : storage of data and CTF: "float32", "float16" or "auto" (float32 when the
        data take at most 60 % of the free device memory).
    classes : the number of classes to budget device memory for (default 10).
    batch_size : particles per kernel launch (default: from the free device memory).
    device_data : ``(data, ctf, data_scale)`` already on the device in the stored layout
        (rows in half-set order, see :attr:`order`): skips the upload (benchmarks).
    min_weight : posteriors below this are not back-projected (0, the default, is exact:
        only classes with weight exactly 0 are skipped). An approximation that saves
        atomic adds once posteriors are peaked; class weights and noise are unaffected.
    """

    def __init__(self, ws, xp=None, backend=None, precision: str = "auto", block: int = 128,
                 classes: Optional[int] = None, batch_size: Optional[int] = None,
                 device_data=None, min_weight: float = 0.0):
        if xp is None:
            import cupy as xp  # type: ignore[no-redef]
        if backend is None:
            from .kernels import CupyBackend
            backend = CupyBackend()
        self.ws = ws
        self.xp = xp
        self.min_weight = float(min_weight)
        data = ws.data
        self.n = len(data)
        self.m = int(data.coeffs.size)
        self.n_shells = int(ws.n_shells)
        self.n_groups = int(data.n_groups)
        k_budget = int(classes or 10)
        free = device_free_bytes(xp)
        usable = None if free is None else max(free - reserved_bytes(ws.n_voxels, k_budget), 0)
        self.precision = choose_precision(precision, self.n, self.m, usable)
        need = storage_bytes(self.n, self.m, self.precision)
        if device_data is None and usable is not None and need > usable:
            raise InputError(f"the data need {need / 2**30:.1f} GiB of device memory and "
                             f"{usable / 2**30:.1f} GiB are free (use more GPUs/MPI ranks or a "
                             "coarser --target-res)", field="--device", value="gpu")
        self.kernels = KernelSet(xp, backend, self.precision, block)
        # rows in half-set order: batches are contiguous ranges of one half set
        first = np.flatnonzero(data.subset == 1)
        second = np.flatnonzero(data.subset == 2)
        self.order = np.concatenate([first, second]).astype(np.int64)
        self.half_ranges = [(0, first.size), (first.size, self.n)]
        shell = np.minimum(data.coeffs.shell, self.n_shells - 1)
        self.kx = xp.asarray(data.coeffs.kx.astype(np.int32))
        self.ky = xp.asarray(data.coeffs.ky.astype(np.int32))
        self.shell = xp.asarray(shell.astype(np.int32))
        self.shell_counts = np.bincount(shell, minlength=self.n_shells).astype(np.float64)
        rot = np.asarray(data.rotations, dtype=np.float64)[self.order][:, :2, :]
        self.rot = xp.asarray(np.ascontiguousarray(rot.reshape(self.n, 6)))
        self.group_host = np.asarray(data.group, dtype=np.int64)[self.order]
        self.group = xp.asarray(self.group_host.astype(np.int32))
        self.grid_shell = xp.asarray(ws.grid_shell)     # used by m_step on the device
        if device_data is not None:
            self.data, self.ctf, self.data_scale = device_data
        else:
            self.data, self.ctf, self.data_scale = self._upload(data)
        if batch_size is None:
            free_now = device_free_bytes(xp)
            batch_size = (ws.batch_size if free_now is None else batch_size_from_free_bytes(
                max(free_now - reserved_bytes(ws.n_voxels, k_budget), 0), k_budget,
                self.n_shells, self.n_groups))
        self.batch_size = int(batch_size)

    # ----- upload -----------------------------------------------------------------------
    def _upload(self, data):
        """Data (n, 2M) and CTF (n, M) in the storage dtype, rows in half-set order."""
        xp, n, m = self.xp, self.n, self.m
        dtype = self.kernels.store_dtype
        store = getattr(data, "store", None)

        def read(rows):   # host (data, ctf) of local rows (streamed when the store is on disk)
            if store is not None:
                return store.read(rows)
            return data.data[rows], data.ctf[rows]
        scale = 1.0
        if dtype == np.float16:
            max_abs = 0.0
            for lo in range(0, n, UPLOAD_ROWS):
                x = read(self.order[lo:lo + UPLOAD_ROWS])[0].view(np.float32)
                max_abs = max(max_abs, float(np.abs(x).max()) if x.size else 0.0)
            scale = half_data_scale(max_abs)
        out_x = xp.empty((n, 2 * m), dtype=dtype)
        out_c = xp.empty((n, m), dtype=dtype)
        for lo in range(0, n, UPLOAD_ROWS):
            rows = self.order[lo:lo + UPLOAD_ROWS]
            hx, hc = read(rows)
            x = xp.asarray(np.ascontiguousarray(hx).view(np.float32))
            c = xp.asarray(np.ascontiguousarray(hc, dtype=np.float32))
            if scale != 1.0:
                x = x * np.float32(1.0 / scale)      # a power of two: exact
            out_x[lo:lo + rows.size] = x.astype(dtype)
            out_c[lo:lo + rows.size] = c.astype(dtype)
        return out_x, out_c, scale

    # ----- one pass ---------------------------------------------------------------------
    def _batches(self, active_ordered: np.ndarray):
        """(lo, hi, half) row ranges in the stored order, skipping ranges with no active row."""
        out = []
        for half, (start, stop) in enumerate(self.half_ranges):
            for lo in range(start, stop, self.batch_size):
                hi = min(lo + self.batch_size, stop)
                if active_ordered[lo:hi].any():
                    out.append((lo, hi, half))
        return out

    def _grids(self, refs):
        """Per half set the (N**3, K) complex64 class grids of ``refs`` (2, K, b, b, b)."""
        xp, pad = self.xp, self.ws.pad

        def build(maps):
            return stack_grids(xp.stack([volume_to_grid(xp.asarray(v), pad) for v in maps]))
        first = build(refs[0])
        same = refs[1] is refs[0] or np.array_equal(refs[0], refs[1])
        return [first, first if same else build(refs[1])]

    def run_pass(self, refs, sigma2, log_prior, active, hard, fixed_weights=None,
                 abort_check=None, progress=None, stage="em", like_shells=None):
        """As :func:`hetclass.em.run_pass` (without the MPI reduction): returns
        (Accumulators with ``grid`` on the device, posteriors (n, K) float32, log evidence (n,))
        for this rank's particles. Inactive particles get zero posteriors and log evidence.
        """
        xp, ks, ws = self.xp, self.kernels, self.ws
        k = int(np.asarray(log_prior).size)
        n, n_shells, n_groups = self.n, self.n_shells, self.n_groups
        like = min(int(like_shells or ws.like_shells), n_shells)
        side, pad = ws.side, ws.pad
        estep = fixed_weights is None
        # as the CPU pass: E-steps use (and back-project) the coefficients of the shells in the
        # likelihood only, a prefix of the shell-ordered coefficients
        m_use = ws.data.coeffs.count_below(like) if estep else ws.data.coeffs.size
        active_o = np.asarray(active, dtype=bool)[self.order]
        act_all = xp.asarray(active_o.astype(np.float64))
        sig32 = xp.asarray(np.asarray(sigma2, dtype=np.float32))
        grid = xp.zeros((2, ws.n_voxels, 3 * k), dtype=np.float32)
        post_all = xp.zeros((n, k), dtype=np.float32)
        loglik_all = xp.zeros(n, dtype=np.float64)
        noise = xp.zeros((n_groups, n_shells))
        class_weight = xp.zeros(k)
        evidence_sum = xp.zeros(())
        noise_count = np.zeros((n_groups, n_shells))
        if estep:
            grids = self._grids(refs)
            prior = xp.asarray(np.asarray(log_prior, dtype=np.float64))
            group_ids = xp.arange(n_groups)
            counts = np.bincount(self.group_host[active_o], minlength=n_groups)
            in_like = np.arange(n_shells) < like
            noise_count = (counts[:, None].astype(np.float64)
                           * (self.shell_counts * in_like)[None, :])
        else:
            fixed = np.asarray(fixed_weights, dtype=np.float64)[self.order] * active_o[:, None]
        batches = self._batches(active_o)
        for bi, (lo, hi, half) in enumerate(batches):
            if abort_check is not None:
                abort_check()
            nb = hi - lo
            act = act_all[lo:hi]
            if estep:
                power = ks.slice_power(grids[half], self.data, self.ctf, self.rot, self.kx,
                                       self.ky, self.shell, self.data_scale, lo, nb, n_shells,
                                       side, pad, n_use=m_use)
                g = self.group[lo:hi]
                weights, evidence = _batch_weights(xp, power, sig32[g], prior, like, act, hard)
                contrib = xp.einsum("nk,nks->ns", weights, power.astype(np.float64))
                in_group = (g[:, None] == group_ids[None, :]) * act[:, None]
                noise += in_group.T @ contrib
                evidence_sum += evidence.sum()
                loglik_all[lo:hi] = evidence
            else:
                weights = xp.asarray(fixed[lo:hi])
            class_weight += weights.sum(axis=0)
            post_all[lo:hi] = weights.astype(np.float32)
            if self.min_weight > 0:
                weights = xp.where(weights >= self.min_weight, weights, 0.0)
            ks.backproject(grid[half], self.data, self.ctf, self.rot, self.kx, self.ky,
                           self.shell, self.group, sig32, weights.astype(np.float32),
                           self.data_scale, lo, nb, side, pad, n_use=m_use)
            if progress is not None:
                progress("batch", stage=stage, done=bi + 1, total=len(batches))
        post = np.zeros((n, k), dtype=np.float32)
        post[self.order] = to_host(post_all)
        loglik = np.zeros(n)
        loglik[self.order] = to_host(loglik_all)
        acc = Accumulators(grid, to_host(noise), noise_count, to_host(class_weight),
                           float(to_host(evidence_sum)))
        self._sample_memory()
        return acc, post, loglik

    # ----- reporting --------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The device's name (e.g. "NVIDIA H100 80GB HBM3"), or "emulated" without CuPy."""
        if self.xp is np:
            return "emulated"
        dev = self.xp.cuda.Device()
        props = self.xp.cuda.runtime.getDeviceProperties(dev.id)
        raw = props.get("name", b"gpu")
        return f"{raw.decode() if isinstance(raw, bytes) else raw} (device {dev.id})"

    def _sample_memory(self) -> None:
        if self.xp is not np:
            pool = self.xp.get_default_memory_pool()
            self._peak_bytes = max(getattr(self, "_peak_bytes", 0), int(pool.total_bytes()))

    def peak_bytes(self) -> int:
        """Largest device memory held by CuPy's pool at the end of a pass (bytes)."""
        return int(getattr(self, "_peak_bytes", 0))


def _batch_weights(xp, power, sigma2_batch, log_prior, like: int, act, hard: bool):
    """E-step of one batch on the device: the class weights (nb, K) (posteriors, or one-hot
    with ``hard``) and log evidence (nb,) float64 of the particles, both zero where ``act``
    (nb,) is 0. ``power`` (nb, K, S) float32 squared residuals per shell, ``sigma2_batch``
    (nb, S) float32 noise of each particle's optics group; shells
    ``FIRST_LIKELIHOOD_SHELL <= s < like`` count (as on the CPU)."""
    used = likelihood_shell_range(like)
    ratio = power[:, :, used] / sigma2_batch[:, None, used]
    z = log_prior[None, :] - ratio.sum(axis=2, dtype=np.float64)
    zmax = z.max(axis=1, keepdims=True)
    e = xp.exp(z - zmax)
    total = e.sum(axis=1, keepdims=True)
    post = e / total
    evidence = (zmax + xp.log(total))[:, 0] * act
    if hard:
        weights = xp.zeros_like(post)
        weights[xp.arange(post.shape[0]), post.argmax(axis=1)] = 1.0
        weights *= act[:, None]
    else:
        weights = post * act[:, None]
    return weights, evidence
