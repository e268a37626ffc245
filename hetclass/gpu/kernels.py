"""CUDA kernels of the E-step and back-projection, and the :class:`KernelSet` that launches them.

The kernel source is plain C (float arithmetic, explicit indices, ``extern "C" __global__``)
so that the same text compiles with NVRTC (CuPy ``RawModule``) on a GPU and with g++ for the
CPU emulation used by the tests (``tests/cuda_emulation.py``). Compile-time switch:
``-DHETCLASS_HALF`` stores data and CTF as IEEE binary16 (``numpy.float16`` bits).

Geometry is exactly :func:`hetclass.projector.slice_operator`: coefficient ``m`` of particle
``i`` samples the centred padded grid (side ``N``, flat index ``(z * N + y) * N + x``) at
``q = A_i.T @ (kx_m * pad, ky_m * pad, 0) + N // 2`` (computed in double, rounded to float),
trilinearly, corners in the order z, y, x (the operator's column order).

Array layouts (row-major, device memory of the array module):

* ``grids``    (N**3, K) complex64 -- :func:`hetclass.projector.stack_grids`
* ``data``     (n, M) complex64 stored as (n, 2M) float32 or float16 (re, im), scaled by
  ``1 / data_scale`` (a power of two, so that float16 neither overflows nor underflows)
* ``ctf``      (n, M) float32 or float16
* ``rot``      (n, 6) float64: the first two rows of each rotation matrix ``A_i``
* ``kx, ky``   (M,) int32 frequencies; ``shell`` (M,) int32, already clipped to ``S - 1``
* ``per_shell`` (n_batch, K, S) float32: residual power ``|X - CTF * slice_k|^2`` per shell
* ``acc``      (N**3, 3K) float32 back-projection accumulator of one half set: per voxel
  ``[re_0, im_0, ..., re_{K-1}, im_{K-1}, den_0, ..., den_{K-1}]`` (as ``em_step.process_batch``)

Both kernels run one block per particle, its threads striding over the coefficients (the data
reads are coalesced; each voxel's K classes are contiguous).
"""

from __future__ import annotations

import numpy as np

KERNEL_SOURCE = r"""
#ifdef HETCLASS_HALF
typedef unsigned short store_t;
#else
typedef float store_t;
#endif

/* IEEE binary16 bits -> float (exact). */
__device__ __forceinline__ float half_bits_to_float(unsigned short h)
{
#ifdef __CUDA_ARCH__
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#else
    unsigned int sign = (unsigned int)(h & 0x8000u) << 16;
    unsigned int expo = (h >> 10) & 0x1fu;
    unsigned int mant = h & 0x3ffu;
    unsigned int bits;
    if (expo == 0) {
        if (mant == 0) {
            bits = sign;
        } else {                       /* subnormal: normalise */
            expo = 113;
            while ((mant & 0x400u) == 0) { mant <<= 1; expo -= 1; }
            bits = sign | (expo << 23) | ((mant & 0x3ffu) << 13);
        }
    } else if (expo == 31) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((expo + 112) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof(f));
    return f;
#endif
}

__device__ __forceinline__ float load_store(const store_t* p, long long i)
{
#ifdef HETCLASS_HALF
    return half_bits_to_float(p[i]);
#else
    return p[i];
#endif
}

/* The 8 trilinear corners of coefficient m of a particle with rotation rows r (6 doubles). */
__device__ __forceinline__ void trilinear_corners(const double* r, int kx, int ky, int side,
                                                  int pad, int* idx, float* w)
{
    double kxp = (double)(kx * pad), kyp = (double)(ky * pad);
    double half_side = (double)(side / 2);
    float qx = (float)(r[0] * kxp + r[3] * kyp + half_side);
    float qy = (float)(r[1] * kxp + r[4] * kyp + half_side);
    float qz = (float)(r[2] * kxp + r[5] * kyp + half_side);
    float bx = floorf(qx), by = floorf(qy), bz = floorf(qz);
    float fx = qx - bx, fy = qy - by, fz = qz - bz;
    int x0 = (int)bx, y0 = (int)by, z0 = (int)bz;
    int s2 = side * side;
    int c = 0;
    for (int dz = 0; dz < 2; ++dz) {
        float wz = dz ? fz : 1.0f - fz;
        int iz = (z0 + dz) * s2;
        for (int dy = 0; dy < 2; ++dy) {
            float wy = dy ? fy : 1.0f - fy;
            int izy = iz + (y0 + dy) * side;
            float wzy = wz * wy;
            for (int dx = 0; dx < 2; ++dx) {
                float wx = dx ? fx : 1.0f - fx;
                idx[c] = izy + x0 + dx;
                w[c] = wzy * wx;
                ++c;
            }
        }
    }
}

/* Coefficient m of particle i (rotation rows r): its 8 trilinear corners (idx, w), its data
   value times data_scale (xr, xi) and its CTF c. */
__device__ __forceinline__ void load_coefficient(
    const double* r, const int* kx, const int* ky, const store_t* data, const store_t* ctf,
    float data_scale, long long i, int m, int n_coef, int side, int pad, int* idx, float* w,
    float* xr, float* xi, float* c)
{
    trilinear_corners(r, kx[m], ky[m], side, pad, idx, w);
    long long j = i * n_coef + m;
    *xr = load_store(data, 2 * j) * data_scale;
    *xi = load_store(data, 2 * j + 1) * data_scale;
    *c = load_store(ctf, j);
}

/* Residual power per (particle, class, shell) for classes [k_first, k_first + k_count).
   One block per particle of the batch (particle first + blockIdx.x); dynamic shared memory:
   k_count * n_shells floats. */
extern "C" __global__ void slice_power(
    const float2* __restrict__ grids, const store_t* __restrict__ data,
    const store_t* __restrict__ ctf, const double* __restrict__ rot,
    const int* __restrict__ kx, const int* __restrict__ ky, const int* __restrict__ shell,
    float data_scale, int first, int n_batch, int n_coef, int n_use, int n_classes,
    int k_first, int k_count, int n_shells, int side, int pad, float* __restrict__ per_shell)
{
    extern __shared__ float acc[];
    int b = blockIdx.x;
    if (b >= n_batch) return;
    int n_acc = k_count * n_shells;
    for (int t = threadIdx.x; t < n_acc; t += blockDim.x) acc[t] = 0.0f;
    __syncthreads();
    long long i = (long long)first + b;
    const double* r = rot + 6 * i;
    for (int m = threadIdx.x; m < n_use; m += blockDim.x) {
        int idx[8];
        float w[8], xr, xi, c;
        load_coefficient(r, kx, ky, data, ctf, data_scale, i, m, n_coef, side, pad, idx, w,
                         &xr, &xi, &c);
        float* out = acc + shell[m];
        for (int k = 0; k < k_count; ++k) {
            float sr = 0.0f, si = 0.0f;
            for (int q = 0; q < 8; ++q) {
                float2 v = grids[(long long)idx[q] * n_classes + k_first + k];
                sr += w[q] * v.x;
                si += w[q] * v.y;
            }
            float rr = xr - c * sr, ri = xi - c * si;
            atomicAdd(out + k * n_shells, rr * rr + ri * ri);
        }
    }
    __syncthreads();
    float* dst = per_shell + ((long long)b * n_classes + k_first) * n_shells;
    for (int t = threadIdx.x; t < n_acc; t += blockDim.x) dst[t] = acc[t];
}

/* Posterior-weighted back-projection of ctf * x / sigma2 (complex) and ctf^2 / sigma2 into
   acc (N**3, 3K). One block per particle; classes with weight 0 are skipped (exact). */
extern "C" __global__ void backproject(
    float* __restrict__ acc, const store_t* __restrict__ data,
    const store_t* __restrict__ ctf, const double* __restrict__ rot,
    const int* __restrict__ kx, const int* __restrict__ ky, const int* __restrict__ shell,
    const int* __restrict__ group, const float* __restrict__ sigma2,
    const float* __restrict__ weights, float data_scale, int first, int n_batch,
    int n_coef, int n_use, int n_classes, int n_shells, int side, int pad)
{
    int b = blockIdx.x;
    if (b >= n_batch) return;
    long long i = (long long)first + b;
    const double* r = rot + 6 * i;
    const float* wk = weights + (long long)b * n_classes;
    const float* sig_row = sigma2 + (long long)group[i] * n_shells;
    int stride = 3 * n_classes;
    for (int m = threadIdx.x; m < n_use; m += blockDim.x) {
        int idx[8];
        float w[8], xr, xi, c;
        load_coefficient(r, kx, ky, data, ctf, data_scale, i, m, n_coef, side, pad, idx, w,
                         &xr, &xi, &c);
        float sig = sig_row[shell[m]];
        float inv = 1.0f / sig;            /* complex / real in NumPy: times the reciprocal */
        float ar = (c * xr) * inv, ai = (c * xi) * inv;
        float d = (c * c) / sig;
        for (int k = 0; k < n_classes; ++k) {
            float p = wk[k];
            if (p == 0.0f) continue;
            float vr = ar * p, vi = ai * p, vd = d * p;
            for (int q = 0; q < 8; ++q) {
                float* g = acc + (long long)idx[q] * stride;
                atomicAdd(g + 2 * k, w[q] * vr);
                atomicAdd(g + 2 * k + 1, w[q] * vi);
                atomicAdd(g + 2 * n_classes + k, w[q] * vd);
            }
        }
    }
}
"""

KERNEL_NAMES = ("slice_power", "backproject")
PRECISIONS = ("float32", "float16")
# Shared memory that a block may use without opting in (bytes), on every CUDA GPU.
SHARED_LIMIT_BYTES = 48 * 1024


def defines_for(precision: str) -> tuple:
    """Compile-time defines of the kernel variant storing data/CTF in ``precision``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    return ("HETCLASS_HALF",) if precision == "float16" else ()


class CupyBackend:
    """Launches the kernels with CuPy (``cupy.RawModule``, compiled once per variant)."""

    def __init__(self):
        self._modules = {}

    def function(self, defines: tuple, name: str):
        import cupy
        module = self._modules.get(defines)
        if module is None:
            module = cupy.RawModule(code=KERNEL_SOURCE, options=tuple(f"-D{d}" for d in defines))
            self._modules[defines] = module
        kernel = module.get_function(name)

        def launch(grid, block, args, shared_mem=0):
            kernel(grid, block, tuple(args), shared_mem=int(shared_mem))
        return launch


class KernelSet:
    """The E-step kernels for one array module ``xp`` and launch ``backend``.

    ``backend.function(defines, name)`` returns ``launch(grid, block, args, shared_mem)``:
    :class:`CupyBackend` on a GPU, the g++ emulation in the tests (with ``xp = numpy``).
    ``precision`` is the storage type of data and CTF ("float32" or "float16");
    ``block`` the threads per block.
    """

    def __init__(self, xp, backend, precision: str = "float32", block: int = 128):
        self.xp = xp
        self.backend = backend
        self.precision = precision
        self.defines = defines_for(precision)
        self.block = int(block)
        self.store_dtype = np.float16 if precision == "float16" else np.float32

    def _fn(self, name: str):
        return self.backend.function(self.defines, name)

    def class_chunk(self, k: int, n_shells: int) -> int:
        """Classes per ``slice_power`` launch so that its shared memory fits."""
        return max(1, min(k, SHARED_LIMIT_BYTES // (4 * max(n_shells, 1))))

    def slice_power(self, grids, data, ctf, rot, kx, ky, shell, data_scale: float, first: int,
                    n_batch: int, n_shells: int, side: int, pad: int, n_use=None):
        """(n_batch, K, S) float32 residual power per shell of particles first..first+n_batch.

        ``grids`` (N**3, K) complex64; the other arrays as in the module docstring (``data``
        and ``ctf`` hold every particle; rows ``first:first + n_batch`` are used). Only the
        first ``n_use`` coefficients (default all; they are ordered by shell) are used.
        """
        xp = self.xp
        k = grids.shape[1]
        m = kx.shape[0]
        n_use = m if n_use is None else int(n_use)
        out = xp.empty((n_batch, k, n_shells), dtype=np.float32)
        if n_batch == 0:
            return out
        fn = self._fn("slice_power")
        chunk = self.class_chunk(k, n_shells)
        for k0 in range(0, k, chunk):
            kc = min(chunk, k - k0)
            fn((n_batch,), (self.block,),
               (grids, data, ctf, rot, kx, ky, shell, np.float32(data_scale), np.int32(first),
                np.int32(n_batch), np.int32(m), np.int32(n_use), np.int32(k), np.int32(k0),
                np.int32(kc),
                np.int32(n_shells), np.int32(side), np.int32(pad), out),
               shared_mem=4 * kc * n_shells)
        return out

    def backproject(self, acc, data, ctf, rot, kx, ky, shell, group, sigma2, weights,
                    data_scale: float, first: int, n_batch: int, side: int, pad: int,
                    n_use=None) -> None:
        """Add the batch's posterior-weighted back-projection to ``acc`` (N**3, 3K), in place.

        ``sigma2`` (G, S) float32, ``weights`` (n_batch, K) float32 (0 = skipped); only the
        first ``n_use`` coefficients (default all) are back-projected.
        """
        if n_batch == 0:
            return
        n_use = kx.shape[0] if n_use is None else int(n_use)
        k = weights.shape[1]
        fn = self._fn("backproject")
        fn((n_batch,), (self.block,),
           (acc, data, ctf, rot, kx, ky, shell, group, sigma2, weights, np.float32(data_scale),
            np.int32(first), np.int32(n_batch), np.int32(kx.shape[0]), np.int32(n_use),
            np.int32(k),
            np.int32(sigma2.shape[1]), np.int32(side), np.int32(pad)))
