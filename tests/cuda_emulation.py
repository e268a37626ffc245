"""Run CUDA C kernels on the CPU: compile the kernel source with g++ and launch it via ctypes.

The test-only twin of :class:`hetclass.gpu.kernels.CupyBackend`. A small shim header defines
``__global__``/``__device__``, the ``threadIdx/blockIdx/blockDim/gridDim`` variables,
``float2``, ``atomicAdd`` (a plain add: one thread runs at a time) and ``__syncthreads``.
Blocks run one after another; the threads of a block run one at a time as cooperative
coroutines (``ucontext``), switching at every ``__syncthreads()``, so shared memory and
barriers behave as on a GPU. Kernels without a barrier run their threads as a plain loop.
``extern __shared__ T name[];`` (dynamic shared memory) becomes a pointer into a per-launch
buffer, filled with NaN bytes so that reads of uninitialised shared memory show up.

Arguments are checked like a GPU launch would need them: C-contiguous NumPy arrays for
pointers, NumPy scalars of exactly the parameter's width for values.

>>> backend = EmulatedBackend()                                   # doctest: +SKIP
>>> KernelSet(numpy, backend).slice_power(...)                    # doctest: +SKIP
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import weakref

import numpy as np

SHIM = r"""
#include <math.h>
#include <string.h>
#include <ucontext.h>
#include <functional>
#include <vector>

struct __emu_dim3 { unsigned int x, y, z; };
/* not static: the scheduler changes them between coroutine switches */
__emu_dim3 threadIdx, blockIdx, blockDim, gridDim;
struct float2 { float x, y; };

#define __global__
#define __device__ static
#define __forceinline__ inline
#define __shared__ static
#define __restrict__ __restrict

static inline float atomicAdd(float* a, float v) { float old = *a; *a = old + v; return old; }
static inline double atomicAdd(double* a, double v) { double old = *a; *a = old + v; return old; }
static inline int atomicAdd(int* a, int v) { int old = *a; *a = old + v; return old; }

void* __emu_shared = 0;
int __emu_coroutines = 0;
int __emu_current = 0;
ucontext_t __emu_scheduler;
std::vector<ucontext_t> __emu_context;
std::vector<int> __emu_state;           /* 0 runnable, 1 at a barrier, 2 finished */
std::vector<char> __emu_stack;
std::vector<unsigned char> __emu_shared_buffer;
std::function<void()> __emu_body;
static const size_t __EMU_STACK = 256 * 1024;

void __syncthreads(void)
{
    if (!__emu_coroutines) return;
    __emu_state[__emu_current] = 1;
    swapcontext(&__emu_context[__emu_current], &__emu_scheduler);
}

static void __emu_entry(void)
{
    __emu_body();
    __emu_state[__emu_current] = 2;   /* uc_link returns to the scheduler */
}

static void __emu_set_thread(unsigned int t)
{
    threadIdx.x = t % blockDim.x;
    threadIdx.y = (t / blockDim.x) % blockDim.y;
    threadIdx.z = t / (blockDim.x * blockDim.y);
}

static void __emu_run_grid(unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                           unsigned int by, unsigned int bz, unsigned long long shared_bytes,
                           int barriers)
{
    gridDim.x = gx; gridDim.y = gy; gridDim.z = gz;
    blockDim.x = bx; blockDim.y = by; blockDim.z = bz;
    unsigned int n = bx * by * bz;
    __emu_shared_buffer.assign(shared_bytes + 16, 0xff);
    __emu_shared = __emu_shared_buffer.data();
    __emu_coroutines = barriers;
    if (barriers) {
        __emu_context.resize(n);
        __emu_state.resize(n);
        __emu_stack.resize((size_t)n * __EMU_STACK);
    }
    for (unsigned int z = 0; z < gz; ++z)
    for (unsigned int y = 0; y < gy; ++y)
    for (unsigned int x = 0; x < gx; ++x) {
        blockIdx.x = x; blockIdx.y = y; blockIdx.z = z;
        memset(__emu_shared, 0xff, shared_bytes);
        if (!barriers) {
            for (unsigned int t = 0; t < n; ++t) { __emu_set_thread(t); __emu_body(); }
            continue;
        }
        for (unsigned int t = 0; t < n; ++t) {
            getcontext(&__emu_context[t]);
            __emu_context[t].uc_stack.ss_sp = &__emu_stack[(size_t)t * __EMU_STACK];
            __emu_context[t].uc_stack.ss_size = __EMU_STACK;
            __emu_context[t].uc_link = &__emu_scheduler;
            makecontext(&__emu_context[t], __emu_entry, 0);
            __emu_state[t] = 0;
        }
        unsigned int live = n;
        while (live > 0) {             /* one round: every live thread to its next barrier */
            for (unsigned int t = 0; t < n; ++t) {
                if (__emu_state[t] == 2) continue;
                __emu_state[t] = 0;
                __emu_current = (int)t;
                __emu_set_thread(t);
                swapcontext(&__emu_scheduler, &__emu_context[t]);
                if (__emu_state[t] == 2) --live;
            }
        }
    }
    __emu_coroutines = 0;
}
"""

_SIGNATURE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)')
_DYNAMIC_SHARED = re.compile(r"extern\s+__shared__\s+(\w+)\s+(\w+)\s*\[\s*\]\s*;")
_SCALARS = {"int": (np.int32, ctypes.c_int32), "unsigned int": (np.uint32, ctypes.c_uint32),
            "long long": (np.int64, ctypes.c_int64), "float": (np.float32, ctypes.c_float),
            "double": (np.float64, ctypes.c_double)}


def gxx_available():
    """(True, "") when g++ can be run, else (False, reason)."""
    if shutil.which("g++") is None:
        return False, "g++ not found on PATH (needed to compile the CUDA kernels for the CPU)"
    return True, ""


def _kernel_body(source: str, start: int) -> str:
    """The text of the braces block that begins at or after ``start``."""
    i = source.index("{", start)
    depth = 0
    for j in range(i, len(source)):
        depth += {"{": 1, "}": -1}.get(source[j], 0)
        if depth == 0:
            return source[i:j + 1]
    raise ValueError("unbalanced braces in kernel source")


def parse_kernels(source: str):
    """{name: (params [(type, name)], uses_barrier)} of every ``extern "C" __global__`` kernel."""
    out = {}
    for match in _SIGNATURE.finditer(source):
        params = []
        for text in match.group(2).split(","):
            text = " ".join(text.replace("__restrict__", " ").split())
            name = re.search(r"(\w+)\s*$", text).group(1)
            params.append((text[: -len(name)].strip(), name))
        body = _kernel_body(source, match.end())
        out[match.group(1)] = (params, "__syncthreads" in body)
    return out


def _launcher(name: str, params, barriers: bool) -> str:
    lines = [f'extern "C" int __emu_launch_{name}(unsigned int gx, unsigned int gy, '
             "unsigned int gz, unsigned int bx, unsigned int by, unsigned int bz, "
             "unsigned long long shared_bytes, void** args) {"]
    names = []
    for i, (ptype, _) in enumerate(params):
        lines.append(f"    {ptype} a{i} = *({ptype}*)args[{i}];")
        names.append(f"a{i}")
    lines.append(f"    __emu_body = [&]() {{ {name}({', '.join(names)}); }};")
    lines.append(f"    __emu_run_grid(gx, gy, gz, bx, by, bz, shared_bytes, {int(barriers)});")
    lines.append("    return 0;\n}")
    return "\n".join(lines)


class EmulatedBackend:
    """``function(defines, name) -> launch(grid, block, args, shared_mem)`` over g++ builds.

    Each (source, defines) pair is compiled once into a temporary directory (removed when the
    backend is garbage-collected). Not thread-safe (one launch at a time).
    """

    def __init__(self, source: str = None):
        if source is None:
            from hetclass.gpu.kernels import KERNEL_SOURCE
            source = KERNEL_SOURCE
        self.source = source
        self.kernels = parse_kernels(source)
        self._libs = {}
        self._dir = tempfile.mkdtemp(prefix="hetclass_cuda_emu_")
        weakref.finalize(self, shutil.rmtree, self._dir, True)

    def _library(self, defines: tuple):
        lib = self._libs.get(defines)
        if lib is not None:
            return lib
        body = _DYNAMIC_SHARED.sub(r"\1* \2 = (\1*)__emu_shared;", self.source)
        code = "\n".join([SHIM, body] + [_launcher(n, p, b) for n, (p, b) in self.kernels.items()])
        tag = hashlib.sha1((code + repr(defines)).encode()).hexdigest()[:12]
        src = os.path.join(self._dir, f"k_{tag}.cpp")
        so = os.path.join(self._dir, f"k_{tag}.so")
        with open(src, "w") as fh:
            fh.write(code)
        cmd = (["g++", "-O2", "-shared", "-fPIC", "-std=c++14", "-w"]
               + [f"-D{d}" for d in defines] + ["-o", so, src])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"g++ failed ({' '.join(cmd)}):\n{proc.stderr}")
        lib = ctypes.CDLL(so)
        self._libs[defines] = lib
        return lib

    def function(self, defines: tuple, name: str):
        params, _ = self.kernels[name]
        entry = getattr(self._library(tuple(defines)), f"__emu_launch_{name}")
        entry.restype = ctypes.c_int
        entry.argtypes = [ctypes.c_uint] * 6 + [ctypes.c_ulonglong,
                                                 ctypes.POINTER(ctypes.c_void_p)]

        def launch(grid, block, args, shared_mem=0):
            grid = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))
            block = tuple(int(b) for b in block) + (1,) * (3 - len(block))
            args = tuple(args)
            if len(args) != len(params):
                raise TypeError(f"{name}: {len(params)} arguments expected, got {len(args)}")
            holders = []
            for (ptype, pname), value in zip(params, args):
                if "*" in ptype:
                    if not (isinstance(value, np.ndarray) and value.flags.c_contiguous):
                        raise TypeError(f"{name}: {pname} must be a C-contiguous array")
                    holders.append(ctypes.c_void_p(value.ctypes.data))
                else:
                    dtype, ctype = _SCALARS[ptype.replace("const", "").strip()]
                    if not (isinstance(value, np.generic) and value.dtype == dtype):
                        raise TypeError(f"{name}: {pname} must be a numpy {np.dtype(dtype)} "
                                        f"scalar, got {type(value).__name__}")
                    holders.append(ctype(value.item()))
            argv = (ctypes.c_void_p * len(holders))(
                *[ctypes.cast(ctypes.pointer(h), ctypes.c_void_p) for h in holders])
            entry(*grid, *block, int(shared_mem), argv)
        return launch
