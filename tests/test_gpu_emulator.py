"""A CPU emulation of the CUDA kernels, so their logic is tested where no GPU is.

The very sources CuPy compiles (``cupy_bn.module_source``) are compiled with g++ after a small
shim that maps CUDA onto C++ threads: one ``std::thread`` per CUDA thread, blocks run one
after another in a shuffled order (so the "last block done" reductions meet a last block that
is not always the highest-numbered), ``__syncthreads`` and warp shuffles are barriers,
``__shared__`` is ``static``, ``atomicAdd`` is a real atomic and ``__threadfence`` a fence.
A fake ``cupy`` module (NumPy arrays, ``RawModule`` backed by the g++ build) is then handed to
``bnref.kernels.cupy_bn``, so the wrappers' grid sizing, argument packing and partial-result
layouts run unchanged. ``tests/test_gpu_kernels.py`` runs its test bodies on this backend
("emulated") for float32 and float64.

The two PTX half <-> float conversions are swapped for the host compiler's IEEE ``_Float16``
(the same rounding); bfloat16 conversion is plain C++ already, so every dtype runs.
What this does NOT check: NVRTC itself (tests/test_cuda_compile.py does), CuPy's argument
passing, the PTX conversions themselves, the GPU memory model, speed. Those need a real GPU
(the "cupy" cases).
"""
import ctypes
import functools
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import pytest

from bnref.kernels import cupy_bn

GXX = shutil.which("g++")
EMULATED_SMS = 2          # a small "GPU": few blocks, but reductions still split over blocks
EMULATED_THREADS_PER_SM = 2048   # as an H100's: 8 resident blocks of 256 threads

SHIM = r"""
// ---- CUDA on C++ threads (test emulation only) ----
#include <algorithm>
#include <array>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <memory>
#include <random>
#include <thread>
#include <utility>
#include <vector>
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__
#define __shared__ static
struct dim3 { unsigned x = 1, y = 1, z = 1; };
dim3 blockIdx, blockDim, gridDim;
thread_local dim3 threadIdx;
namespace emu {
using Barrier = std::barrier<>;
Barrier* block_barrier;
std::vector<std::unique_ptr<Barrier>> warp_barriers;
std::vector<std::array<double, 32>> warp_slots;
thread_local int warp, lane;
}
inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }
// Blocks run one after another (in a shuffled order, see launch), so a fence only has to order
// this block's threads; the atomic is a real one (several threads of a block may count).
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
template <class T> T emu_exchange(T v, int src) {
  emu::warp_slots[emu::warp][emu::lane] = static_cast<double>(v);
  emu::warp_barriers[emu::warp]->arrive_and_wait();
  const T r = static_cast<T>(emu::warp_slots[emu::warp][src]);
  emu::warp_barriers[emu::warp]->arrive_and_wait();
  return r;
}
template <class T> T __shfl_down_sync(unsigned, T v, int off) {
  return emu_exchange(v, emu::lane + off < 32 ? emu::lane + off : emu::lane);
}
template <class T> T __shfl_sync(unsigned, T v, int src) { return emu_exchange(v, src); }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
// The two PTX conversions of common.cuh, by the host compiler's IEEE half (round to nearest even).
inline float emu_half_to_float(unsigned short b) { _Float16 h; std::memcpy(&h, &b, 2); return h; }
inline unsigned short emu_float_to_half(float f) {
  const _Float16 h = static_cast<_Float16>(f);
  unsigned short b;
  std::memcpy(&b, &h, 2);
  return b;
}
// ---- end of shim ----
"""

LAUNCHER = r"""
namespace emu {
template <class... P, std::size_t... I>
void call(void (*k)(P...), void** args, std::index_sequence<I...>) {
  k(*static_cast<std::remove_reference_t<P>*>(args[I])...);
}
template <class... P>
void launch(void (*k)(P...), unsigned gx, unsigned gy, unsigned bx, unsigned by, void** args) {
  gridDim = dim3{gx, gy, 1};
  blockDim = dim3{bx, by, 1};
  const int n = static_cast<int>(bx * by), warps = (n + 31) / 32;
  // Blocks in a shuffled order (fixed per grid): CUDA promises no order, and the kernels'
  // "last block done" logic must not depend on one (the last block is then not always the
  // highest-numbered one).
  std::vector<dim3> order;
  for (unsigned y = 0; y < gy; ++y)
    for (unsigned x = 0; x < gx; ++x) order.push_back(dim3{x, y, 1});
  std::shuffle(order.begin(), order.end(), std::mt19937(gx * 7919u + gy));
  for (const dim3& b : order) {
    blockIdx = b;
    Barrier block(n);
    block_barrier = &block;
    warp_barriers.clear();
    for (int w = 0; w < warps; ++w)
      warp_barriers.push_back(std::make_unique<Barrier>(w + 1 < warps ? 32 : n - 32 * w));
    warp_slots.assign(warps, {});
    std::vector<std::thread> threads;
    for (int t = 0; t < n; ++t)
      threads.emplace_back([=] {
        threadIdx = dim3{static_cast<unsigned>(t) % bx, static_cast<unsigned>(t) / bx, 1};
        warp = t / 32;
        lane = t % 32;
        call(k, args, std::index_sequence_for<P...>{});
        block_barrier->arrive_and_drop();   // exited threads leave the barriers
        warp_barriers[warp]->arrive_and_drop();
      });
    for (auto& th : threads) th.join();
  }
}
template <class... P> int arg_sizes(void (*)(P...), std::size_t* out) {
  std::size_t sizes[] = {sizeof(P)...};
  for (std::size_t i = 0; i < sizeof...(P); ++i) out[i] = sizes[i];
  return static_cast<int>(sizeof...(P));
}
}  // namespace emu
"""

_BUILD_DIR = Path(tempfile.gettempdir()) / "bnref-cuda-emulator"


# common.cuh's only inline PTX: the half <-> float conversions. The emulation swaps them for
# the host compiler's _Float16 and insists on finding exactly these (an edit fails loudly).
_PTX_SWAPS = [
    (r'asm\("cvt\.f32\.f16 %0, %1;" : "=f"\((\w+)\) : "h"\(([\w.]+)\)\);',
     r"\1 = emu_half_to_float(\2);"),
    (r'asm\("cvt\.rn\.f16\.f32 %0, %1;" : "=h"\(([\w.]+)\) : "f"\((\w+)\)\);',
     r"\1 = emu_float_to_half(\2);"),
]


def _host_source(code):
    for pattern, repl in _PTX_SWAPS:
        code, n = re.subn(pattern, repl, code)
        assert n == 1, f"expected one PTX conversion matching {pattern!r}, found {n}"
    assert "asm(" not in code, "inline PTX the emulation does not know"
    return code


class _RawModule:
    """Compiles a module's source with the shim; kernels are called like CuPy's."""

    def __init__(self, code, options=(), name_expressions=()):
        names = list(name_expressions)
        glue = [LAUNCHER]
        for i, e in enumerate(names):
            glue.append(f'extern "C" void launch_{i}(unsigned gx, unsigned gy, unsigned bx, '
                        f'unsigned by, void** a) {{ emu::launch(&{e}, gx, gy, bx, by, a); }}\n'
                        f'extern "C" int sizes_{i}(std::size_t* out) {{ '
                        f'return emu::arg_sizes(&{e}, out); }}')
        source = SHIM + _host_source(code) + "\n".join(glue)
        digest = hashlib.sha256(source.encode()).hexdigest()[:16]
        _BUILD_DIR.mkdir(exist_ok=True)
        lib = _BUILD_DIR / f"{digest}.so"
        if not lib.exists():
            src = _BUILD_DIR / f"{digest}.cpp"
            src.write_text(source)
            tmp = lib.with_suffix(".tmp.so")
            proc = subprocess.run([GXX, "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread",
                                   "-w", "-x", "c++", str(src), "-o", str(tmp)],
                                  capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr[-4000:]
            tmp.rename(lib)
        self._lib = ctypes.CDLL(str(lib))
        self._index = {e: i for i, e in enumerate(names)}

    def get_function(self, expression):
        return _Kernel(self._lib, self._index[expression], expression)


class _Kernel:
    def __init__(self, lib, i, name):
        self.launch, self.name = getattr(lib, f"launch_{i}"), name
        self.kernel = types.SimpleNamespace(ptr=id(self))     # RawKernel.kernel: the CUfunction
        sizes = (ctypes.c_size_t * 32)()
        n = getattr(lib, f"sizes_{i}")(sizes)
        self.sizes = list(sizes[:n])

    def __call__(self, grid, block, args):
        grid, block = tuple(grid) + (1,) * (2 - len(grid)), tuple(block) + (1,) * (2 - len(block))
        assert len(args) == len(self.sizes), f"{self.name}: {len(args)} args, kernel takes {len(self.sizes)}"
        assert block[0] * block[1] <= 1024 and grid[1] <= 65535, (grid, block)
        keep = []
        for i, (a, size) in enumerate(zip(args, self.sizes)):
            if isinstance(a, FakeArray):
                assert a.device_id == FakeDevice.current, (
                    f"{self.name}: argument {i} is on device {a.device_id}, the launch on device "
                    f"{FakeDevice.current} (an illegal address on a GPU)")
            if isinstance(a, np.ndarray):
                c = ctypes.c_void_p(a.ctypes.data)
                assert size == 8, f"{self.name}: argument {i} is an array, kernel expects {size} bytes"
            elif isinstance(a, np.generic):
                assert a.nbytes == size, (f"{self.name}: argument {i} is {a.dtype} ({a.nbytes} "
                                          f"bytes), kernel expects {size} bytes")
                c = ctypes.create_string_buffer(a.tobytes(), size)
            else:
                raise TypeError(f"{self.name}: argument {i} is {type(a).__name__}; pass a NumPy "
                                "scalar of the exact C type (CuPy would guess)")
            keep.append(c)
        ptrs = (ctypes.c_void_p * len(keep))(*[ctypes.addressof(c) for c in keep])
        self.launch(*[ctypes.c_uint(v) for v in (*grid, *block)], ptrs)


class FakeDevice:
    """``cupy.cuda.Device``: an id, its attributes, and a context manager that makes it current.

    The emulated GPUs are identical; which one is current matters because every kernel launch
    checks that its array arguments live there (on a real GPU another device's pointer is an
    illegal address).
    """

    current = 0

    def __init__(self, i=0):
        self.id = int(i)
        self.attributes = {"MultiProcessorCount": EMULATED_SMS}

    def __enter__(self):
        self._outer, FakeDevice.current = FakeDevice.current, self.id
        return self

    def __exit__(self, *exc):
        FakeDevice.current = self._outer


class _Pointer:
    """``cupy.cuda.MemoryPointer``'s ``ptr`` and ``device_id``, read nearly as cheaply as CuPy
    reads its fields (benchmarks/bench_gpu_host.py counts what the stand-in costs too): made
    once per array, ``device_id`` a plain attribute (an array never changes device), ``ptr``
    computed on first use, through ``ctypes.c_char.from_buffer`` (0.3 us) where NumPy's
    ``ctypes.data`` (1 us) is not needed (a non-contiguous or empty array)."""

    __slots__ = ("_array", "device_id", "_ptr")

    def __init__(self, array):
        self._array, self.device_id, self._ptr = array, array.device_id, None

    @property
    def ptr(self):
        if self._ptr is None:
            a = self._array
            try:
                self._ptr = ctypes.addressof(ctypes.c_char.from_buffer(a))
            except (TypeError, ValueError, BufferError):    # not contiguous, empty, read-only
                self._ptr = a.ctypes.data
        return self._ptr


class FakeArray(np.ndarray):
    """A NumPy array with the CuPy attributes the wrappers use: ``data.ptr``, ``data.device_id``
    and ``device``.

    An array lives on the device that was current when it was made; views keep their base's.
    """

    def __array_finalize__(self, obj):
        self.device_id = getattr(obj, "device_id", FakeDevice.current)

    @property
    def data(self):
        """CuPy's MemoryPointer: the address and the device it is on (made once per array)."""
        d = self.__dict__
        pointer = d.get("_pointer")
        if pointer is None:
            pointer = d["_pointer"] = _Pointer(self)
        return pointer

    @property
    def device(self):
        return FakeDevice(self.device_id)

    def get(self):
        return np.asarray(self)


def _fake(a):
    return a.view(FakeArray)


def _wrap(obj):
    if isinstance(obj, np.ndarray) and not isinstance(obj, FakeArray):
        return obj.view(FakeArray)
    if isinstance(obj, tuple):
        return tuple(_wrap(o) for o in obj)
    return obj


def emulated_occupancy(func, threads, dynamic_shared_bytes):
    """The occupancy calculator's answer for the emulated GPU: every kernel fits as many
    blocks as EMULATED_THREADS_PER_SM threads allow (no register or shared-memory limit)."""
    return max(1, EMULATED_THREADS_PER_SM // threads)


def fake_cupy():
    """A module that quacks like the parts of CuPy that cupy_bn, bnref and the tests use.

    Anything not defined here falls through to NumPy, with arrays returned as FakeArray.
    """
    m = types.ModuleType("fake_cupy")

    def __getattr__(name):
        f = getattr(np, name)
        return (lambda *a, **k: _wrap(f(*a, **k))) if callable(f) and not isinstance(f, type) else f

    m.__getattr__ = __getattr__
    m.ndarray = FakeArray
    m.float16, m.float32, m.float64 = np.float16, np.float32, np.float64
    m.asarray = lambda a, dtype=None: _fake(np.array(a, dtype=dtype, copy=True))
    m.ascontiguousarray = lambda a, dtype=None: _fake(np.ascontiguousarray(a, dtype=dtype))
    m.empty = lambda shape, dtype=np.float64: _fake(np.empty(shape, dtype))
    m.empty_like = lambda a: _fake(np.empty_like(a))
    m.asnumpy = lambda a: np.asarray(a)
    m.RawModule = _RawModule
    stream = types.SimpleNamespace(ptr=0)      # one stream, the default (cupy_bn keys scratch on it)
    m.cuda = types.SimpleNamespace(Device=FakeDevice,
                                   runtime=types.SimpleNamespace(getDevice=lambda: FakeDevice.current),
                                   get_current_stream=lambda: stream,
                                   driver=types.SimpleNamespace(
                                       occupancyMaxActiveBlocksPerMultiprocessor=emulated_occupancy))
    return m


FAKE_CUPY = fake_cupy()
NO_EMULATOR_REASON = None if GXX else "g++ not found: the CUDA emulation needs a C++20 compiler"


def use_emulator(monkeypatch, as_cupy=False):
    """Point cupy_bn at the fake CuPy for one test (compiled modules are cached on disk).

    With ``as_cupy``, the fake also stands in for ``import cupy``, so bnref's public API
    dispatches FakeArray inputs to the CuPy kernels as it would real CuPy arrays.
    """
    if GXX is None:
        pytest.skip(NO_EMULATOR_REASON)
    if as_cupy:
        monkeypatch.setitem(sys.modules, "cupy", FAKE_CUPY)
    monkeypatch.setattr(cupy_bn, "_cupy", lambda: FAKE_CUPY)
    # Fresh caches for the emulation, restored afterwards: emulated kernels must never be
    # handed to real CuPy arrays in a later test (on a machine with a GPU).
    for name in cupy_bn.CACHES:
        monkeypatch.setattr(cupy_bn, name,
                            functools.lru_cache(maxsize=None)(getattr(cupy_bn, name).__wrapped__))
    return FAKE_CUPY


# ---- tests of the emulator itself --------------------------------------------------------

@pytest.mark.skipif(GXX is None, reason=str(NO_EMULATOR_REASON))
def test_emulated_warp_shuffles_and_block_barrier_sum_correctly(monkeypatch):
    """The shim's reductions are what the kernels rely on: check them on a known sum."""
    xp = use_emulator(monkeypatch)
    x = np.arange(3 * 2 * 40, dtype=np.float64).reshape(3, 2, 40)   # rows layout, 2 channels
    _, mean, var, _ = cupy_bn.bn_forward_train(xp.asarray(x), np.ones(2), np.zeros(2), 0.0)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2)), rtol=1e-14)
    np.testing.assert_allclose(var, x.var(axis=(0, 2)), rtol=1e-12)


@pytest.mark.skipif(GXX is None, reason=str(NO_EMULATOR_REASON))
def test_wrappers_pass_arguments_of_the_exact_kernel_types(monkeypatch):
    """A Python int where the kernel takes `long long` would be a silent bug on the GPU."""
    xp = use_emulator(monkeypatch)
    x = xp.asarray(np.random.default_rng(0).standard_normal((5, 3, 2)).astype(np.float32))
    g = xp.asarray(np.ones(3, np.float32))
    y, mean, var, inv_std = cupy_bn.bn_forward_train(x, g, 0 * g, 1e-5)    # asserts inside
    cupy_bn.bn_backward(x, x, mean, inv_std, g)
    cupy_bn.bn_inference(x, g, 0 * g, mean, var, 1e-5)


@pytest.mark.skipif(GXX is None, reason=str(NO_EMULATOR_REASON))
@pytest.mark.parametrize("shape", [(300, 4, 1), (6, 3, 50)], ids=str)
def test_finalize_updates_running_statistics_like_pytorch(monkeypatch, shape):
    """The statistics kernel's optional update (its last block of each channel, in place):
    new = (1 - momentum) * old + momentum * unbiased batch var."""
    xp = use_emulator(monkeypatch)
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape) * 3 + 1
    C, m = shape[1], shape[0] * shape[2]
    rm, rv = rng.standard_normal(C), rng.uniform(0.5, 2, C)
    rm_gpu, rv_gpu = xp.asarray(rm), xp.asarray(rv)
    cupy_bn._bn_statistics(xp.asarray(x), np.ones(C), np.zeros(C), 1e-5,
                           running=(rm_gpu, rv_gpu, 0.1))
    np.testing.assert_allclose(rm_gpu, 0.9 * rm + 0.1 * x.mean(axis=(0, 2)), rtol=1e-12)
    np.testing.assert_allclose(rv_gpu, 0.9 * rv + 0.1 * x.var(axis=(0, 2)) * m / (m - 1),
                               rtol=1e-12)


@pytest.mark.skipif(GXX is None, reason=str(NO_EMULATOR_REASON))
@pytest.mark.parametrize("shape,dtype,layout,vec", [
    ((64, 8, 1), np.float32, "cols", 4),      # (N, C): 4 floats per load
    ((7, 5, 1), np.float32, "cols", 1),       # W = 5 is not a multiple of 4
    ((16, 4, 3), np.float64, "cols", 2),      # small B: still cols, vectors span channels
    ((8, 3, 64), np.float32, "rows", 4),      # NCHW
    ((4, 6, 49), np.float32, "rows", 1),      # B = 49 is not a multiple of 4
    ((4, 6, 64), np.float16, "rows", 8),      # 8 halves per load
    ((4, 6, 50), np.float32, "rows", 2),      # the widest that divides the run: 2 floats
    ((4, 6, 52), np.float16, "rows", 4),      # 4 halves
    ((9, 3, 2), np.float32, "cols", 2),       # W = 6
])
def test_plan_picks_layout_and_vector_width(monkeypatch, shape, dtype, layout, vec):
    xp = use_emulator(monkeypatch)
    got = cupy_bn._plan(xp.asarray(np.zeros(shape, dtype)))
    assert (got[0], got[2]) == (layout, vec)


@pytest.mark.skipif(GXX is None, reason=str(NO_EMULATOR_REASON))
@pytest.mark.parametrize("offset,vec", [(0, 4), (1, 1), (2, 2), (4, 4)], ids=lambda v: str(v))
def test_vector_width_fits_the_alignment_of_every_pointer(monkeypatch, offset, vec):
    """A view that starts `offset` floats into its buffer gets vectors no wider than its
    address allows (4 bytes in: 1 float, 8 bytes: 2), in the plan and in the kernels' results."""
    xp = use_emulator(monkeypatch)
    rng = np.random.default_rng(9)

    def at_offset():
        buf = np.empty(4 * 6 * 64 + 8, np.float32)
        assert buf.ctypes.data % 16 == 0
        a = buf[offset:offset + 4 * 6 * 64].reshape(4, 6, 64)
        a[...] = rng.standard_normal(a.shape)
        return a.view(FakeArray)

    x, dy = at_offset(), at_offset()
    assert cupy_bn._plan(xp.asarray(np.zeros(x.shape, np.float32)))[2] == 4
    assert cupy_bn._plan(x)[2] == cupy_bn._plan(dy)[2] == vec
    ones = np.ones(6, np.float32)
    y, mean, var, inv_std = cupy_bn.bn_forward_train(x, ones, 0 * ones, 1e-5)
    np.testing.assert_allclose(var, np.asarray(x).var(axis=(0, 2)), rtol=2e-5)
    dx, dgamma, dbeta = cupy_bn.bn_backward(dy, x, mean, inv_std, ones)
    np.testing.assert_allclose(dbeta, np.asarray(dy).sum(axis=(0, 2)), rtol=2e-5, atol=1e-4)


@pytest.mark.skipif(GXX is None, reason=str(NO_EMULATOR_REASON))
def test_plan_splits_channels_to_fill_the_gpu_when_c_is_small(monkeypatch):
    xp = use_emulator(monkeypatch)
    layout, _, _, grid, block, parts = cupy_bn._plan(xp.asarray(np.zeros((64, 2, 4096), np.float32)))
    assert layout == "rows" and grid == (2, EMULATED_SMS * (EMULATED_THREADS_PER_SM // 256) // 2)
    assert parts == grid[1]


@pytest.mark.skipif(GXX is None, reason=str(NO_EMULATOR_REASON))
@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
def test_16bit_outputs_are_rounded_to_nearest_even(monkeypatch, dtype_name):
    """y = x * scale must round exactly like NumPy / ml_dtypes (a truncating conversion would
    still pass the 1e-2 tolerance of the other tests). Includes inf, nan and overflow."""
    if dtype_name == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes")
        dtype = np.dtype(ml_dtypes.bfloat16)
    else:
        dtype = np.dtype(np.float16)
    xp = use_emulator(monkeypatch)
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((64, 4, 32)) * 100).astype(dtype)
    x[0, 0, :4] = [np.inf, -np.inf, np.nan, float(np.finfo(np.float16).max)]
    f32 = np.float32
    gamma = np.array([1 / 3, 3.0, 1e4, 0.7], f32)
    rv = np.array([1.0, 0.3, 2.0, 5.0], f32)
    zero = np.zeros(4, f32)
    y = cupy_bn.bn_inference(xp.asarray(x), gamma, zero, zero, rv, 1e-5)
    scale = gamma * (f32(1) / np.sqrt(rv + f32(1e-5)))          # float32, as the kernels do
    with np.errstate(over="ignore", invalid="ignore"):
        want = (x.astype(f32) * scale[:, None]).astype(dtype)
    got, want = np.asarray(y).view(np.uint16), want.view(np.uint16)
    nan = np.isnan(want.view(dtype).astype(f32))
    assert np.array_equal(np.isnan(np.asarray(y).astype(f32)), nan)
    assert np.array_equal(got[~nan], want[~nan])


@pytest.mark.skipif(GXX is None, reason=str(NO_EMULATOR_REASON))
def test_a_plan_is_made_once_per_shape_and_its_scratch_once_per_stream(monkeypatch):
    """Calls of one shape share a plan and, on one stream, its scratch buffers; the results of
    a second call are right (nothing of the first is left in the reused partials), and another
    stream gets scratch of its own (two streams must not share partials)."""
    xp = use_emulator(monkeypatch)
    rng = np.random.default_rng(11)
    g, b = xp.asarray(np.ones(3)), xp.asarray(np.zeros(3))
    for x in (rng.standard_normal((6, 3, 40)), rng.standard_normal((6, 3, 40)) * 5 + 2):
        _, mean, var, _ = cupy_bn.bn_forward_train(xp.asarray(x), g, b, 1e-5)
        np.testing.assert_allclose(mean, x.mean(axis=(0, 2)), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(var, x.var(axis=(0, 2)), rtol=1e-12)
    assert cupy_bn._forward_plan.cache_info().misses == 1
    plan = cupy_bn._forward_plan((6, 3, 40), np.dtype(np.float64), 16, 0)
    assert list(plan.scratch) == [0]
    monkeypatch.setattr(xp.cuda, "get_current_stream", lambda: types.SimpleNamespace(ptr=1234))
    cupy_bn.bn_forward_train(xp.asarray(x), g, b, 1e-5)
    assert list(plan.scratch) == [0, 1234]
    assert cupy_bn._forward_plan.cache_info().misses == 1


# ---- "last block done": each reduction finished by its last block, in the same launch --------

# (shape, dtype, layout, grid): every case splits each channel over several blocks, so the
# last block of each channel (rows) or column block (cols) has partials of others to merge.
LAST_BLOCK_CASES = [
    ((32, 2, 512), np.float64, "rows", (2, 8)),
    ((4096, 5, 3), np.float64, "cols", (1, 16)),     # B = 3: a channel is 3 columns
    ((512, 40, 3), np.float64, "cols", (2, 8)),      # channel 21's columns 63..65 straddle 2 column blocks
    ((256, 300, 1), np.float32, "cols", (3, 5)),     # (N, C): a column is a channel
]


def _last_block_case(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    C = shape[1]
    g, b = rng.uniform(0.5, 1.5, C).astype(dtype), rng.standard_normal(C).astype(dtype)
    return x, dy, g, b


def _check_forward_backward(xp, x, dy, g, b, rtol):
    """bn_forward_train's statistics and bn_backward's sums against NumPy in float64."""
    y, mean, var, inv_std = cupy_bn.bn_forward_train(xp.asarray(x), xp.asarray(g), xp.asarray(b), 1e-5)
    dx, dgamma, dbeta = cupy_bn.bn_backward(xp.asarray(dy), xp.asarray(x), mean, inv_std, xp.asarray(g))
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    mu, v = x64.mean(axis=(0, 2)), x64.var(axis=(0, 2))                  # (C,)
    np.testing.assert_allclose(mean, mu, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(var, v, rtol=rtol)
    x_hat = (x64 - mu[:, None]) / np.sqrt(v[:, None] + 1e-5)
    size = x.shape[0] * x.shape[2]                       # terms per channel: the sums' scale
    np.testing.assert_allclose(dbeta, dy64.sum(axis=(0, 2)), rtol=rtol, atol=rtol * size)
    np.testing.assert_allclose(dgamma, (dy64 * x_hat).sum(axis=(0, 2)), rtol=rtol, atol=rtol * size)


@pytest.mark.skipif(GXX is None, reason=str(NO_EMULATOR_REASON))
@pytest.mark.parametrize("shape,dtype,layout,grid", LAST_BLOCK_CASES, ids=str)
def test_the_last_block_of_each_channel_merges_every_partial_and_resets_its_counter(
        monkeypatch, shape, dtype, layout, grid):
    """Statistics and gradient sums, finished inside the reduction launch, equal NumPy's; two
    calls in a row (the second reusing the cached scratch and its counters) are both right, and
    every counter is back at 0 afterwards, ready for the next launch."""
    xp = use_emulator(monkeypatch)
    got = cupy_bn._plan(xp.asarray(np.zeros(shape, dtype)))
    assert (got[0], got[3]) == (layout, grid)
    rtol = 1e-12 if dtype == np.float64 else 2e-5
    for seed in (0, 1):
        _check_forward_backward(xp, *_last_block_case(shape, dtype, seed), rtol)
    key = (shape, np.dtype(dtype), 16, 0)          # 16-byte aligned (NumPy allocations are), device 0
    for plan in (cupy_bn._forward_plan(*key), cupy_bn._backward_plan(*key)):
        (buffers,) = plan.scratch.values()
        counter = np.asarray(buffers[-1])
        assert counter.dtype == np.uint32 and counter.size == plan.counters
        assert not counter.any(), f"counters left at {counter[counter != 0]}"


@pytest.mark.skipif(GXX is None, reason=str(NO_EMULATOR_REASON))
@pytest.mark.parametrize("case", [LAST_BLOCK_CASES[0], LAST_BLOCK_CASES[2]], ids=["rows", "cols"])
def test_a_block_that_finishes_one_partial_early_gives_wrong_statistics(monkeypatch, case):
    """The test above can fail: when the next-to-last block to count itself finishes, one
    partial is not there yet (which block that is depends on the shuffled order), and the
    statistics come out wrong."""
    xp = use_emulator(monkeypatch)
    source = cupy_bn.module_source

    def one_early(name):
        code = source(name)
        if name == "bn_stats":
            code, n = re.subn(r"is_last = before == blocks - 1;", "is_last = before == blocks - 2;", code)
            assert n == 1
        return code

    monkeypatch.setattr(cupy_bn, "module_source", one_early)
    shape, dtype = case[:2]
    x, dy, g, b = _last_block_case(shape, dtype, 0)
    _, mean, var, _ = cupy_bn.bn_forward_train(xp.asarray(x), xp.asarray(g), xp.asarray(b), 1e-5)
    wrong = ~np.isclose(var, x.var(axis=(0, 2)), rtol=1e-12)
    assert wrong.any()


# ---- the layer's running statistics, updated by the statistics kernel ----------------------

@pytest.mark.skipif(GXX is None, reason=str(NO_EMULATOR_REASON))
@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum 0.1", "cumulative"])
@pytest.mark.parametrize("shape", [(16, 3, 20), (40, 5)], ids=["rows", "cols"])
def test_layer_running_statistics_come_from_the_statistics_kernel_like_numpys(monkeypatch, shape, momentum):
    """A training step of BatchNorm on CuPy arrays in the statistics dtype gets its running
    statistics from bn_stats' last blocks (no _ema, no extra launch): the same values as the
    NumPy layer, step after step, new arrays each step (the old ones are left alone)."""
    import bnref
    from bnref import layer
    cp = use_emulator(monkeypatch, as_cupy=True)
    launched = []
    call = _Kernel.__call__

    def recording(self, grid, block, args):
        launched.append(self.name.split("<")[0])
        return call(self, grid, block, args)

    monkeypatch.setattr(_Kernel, "__call__", recording)

    def no_ema(*args):
        raise AssertionError("the running statistics were updated on the host (_ema)")

    monkeypatch.setattr(layer, "_ema", no_ema)
    rng = np.random.default_rng(5)
    C = shape[1]
    gpu, host = bnref.BatchNorm(C, momentum=momentum), bnref.BatchNorm(C, momentum=momentum)
    gpu.gamma, gpu.beta = cp.asarray(np.linspace(0.5, 1.5, C)), cp.asarray(np.linspace(-1, 1, C))
    host.gamma, host.beta = np.linspace(0.5, 1.5, C), np.linspace(-1, 1, C)
    gpu.running_mean, gpu.running_var = cp.asarray(host.running_mean), cp.asarray(host.running_var)
    for step in range(3):
        x = rng.standard_normal(shape) * (step + 1) + step
        before = gpu.running_mean, gpu.running_var
        kept = np.array(before[0]), np.array(before[1])
        launched.clear()
        y = gpu(cp.asarray(x))
        with monkeypatch.context() as m:
            m.setattr(layer, "_ema", bnref.functional._ema)
            y_host = host(x)
        assert launched == ["bn_stats_" + ("rows" if len(shape) == 3 else "cols"),
                            "bn_normalize_" + ("rows" if len(shape) == 3 else "cols")]
        np.testing.assert_allclose(y, y_host, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(gpu.running_mean, host.running_mean, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(gpu.running_var, host.running_var, rtol=1e-12)
        assert gpu.running_mean is not before[0] and np.array_equal(before[0], kept[0])
        assert np.array_equal(before[1], kept[1])
        assert gpu.num_batches_tracked == host.num_batches_tracked == step + 1


@pytest.mark.skipif(GXX is None, reason=str(NO_EMULATOR_REASON))
def test_layer_running_statistics_in_another_dtype_are_updated_on_the_host(monkeypatch):
    """float32 inputs with the layer's default float64 statistics: the kernel's float32
    statistics are not the layer's dtype, so _ema updates them, as on the CPU."""
    import bnref
    from bnref import layer
    cp = use_emulator(monkeypatch, as_cupy=True)
    x = np.random.default_rng(6).standard_normal((32, 4)).astype(np.float32) * 2 + 1
    gpu, host = bnref.BatchNorm(4), bnref.BatchNorm(4)
    gpu.gamma, gpu.beta = cp.asarray(host.gamma), cp.asarray(host.beta)
    gpu.running_mean, gpu.running_var = cp.asarray(host.running_mean), cp.asarray(host.running_var)
    calls = []
    monkeypatch.setattr(layer, "_ema", lambda *a: calls.append(a) or bnref.functional._ema(*a))
    gpu(cp.asarray(x))
    assert len(calls) == 1
    host(x)
    assert gpu.running_mean.dtype == np.float64
    np.testing.assert_allclose(gpu.running_mean, host.running_mean, rtol=1e-5, atol=1e-6)   # float32 statistics
    np.testing.assert_allclose(gpu.running_var, host.running_var, rtol=1e-5, atol=1e-6)


# ---- grids from the kernels' occupancy -------------------------------------------------------

@pytest.mark.skipif(GXX is None, reason=str(NO_EMULATOR_REASON))
def test_grids_are_one_wave_of_the_blocks_the_occupancy_query_says_fit(monkeypatch):
    """Each pass's grid is sized from its own kernel's occupancy (asked once per kernel), and
    the split count is rounded down: one full wave, not a second one that is mostly empty."""
    xp = use_emulator(monkeypatch)
    asked = []

    def occupancy(func, threads, shared):
        asked.append(func)
        return {"bn_stats": 3, "bn_normalize": 5}[kernel_of[func]]

    kernel_of = {}
    real_kernel = cupy_bn._kernel

    def named(name, expression):
        k = real_kernel(name, expression)
        kernel_of[k.kernel.ptr] = name
        return k

    monkeypatch.setattr(cupy_bn, "_kernel", named)
    monkeypatch.setattr(xp.cuda.driver, "occupancyMaxActiveBlocksPerMultiprocessor", occupancy)
    x = np.random.default_rng(2).standard_normal((64, 3, 1024))
    for _ in range(2):
        y, mean, var, _ = cupy_bn.bn_forward_train(xp.asarray(x), np.ones(3), np.zeros(3), 1e-5)
        np.testing.assert_allclose(var, x.var(axis=(0, 2)), rtol=1e-12)
        np.testing.assert_allclose(y, (x - x.mean(axis=(0, 2))[:, None]) / np.sqrt(var[:, None] + 1e-5),
                                   rtol=1e-10, atol=1e-12)
    assert len(asked) == 2, "one occupancy query per kernel, then cached"
    plan = cupy_bn._forward_plan((64, 3, 1024), np.dtype(np.float64), 16, 0)
    assert plan.grid == (3, EMULATED_SMS * 3 // 3)     # 6 resident blocks: 2 per channel
    assert plan.grid2 == (3, EMULATED_SMS * 5 // 3)    # 10 resident: 3 per channel (9 blocks), not 4 (12)
    assert plan.P == plan.grid[1]


@pytest.mark.skipif(GXX is None, reason=str(NO_EMULATOR_REASON))
def test_layernorm_parameter_grid_is_one_wave_of_its_kernel_occupancy(monkeypatch):
    """LayerNorm's column sums (ln_param_grads) are split like BatchNorm's cols grids: one full
    wave of the blocks the occupancy query says fit (asked once), rounded down; dgamma and
    dbeta stay NumPy's."""
    xp = use_emulator(monkeypatch)
    asked, grids = [], []
    real_kernel = cupy_bn._kernel

    class Spy:
        """The emulated kernel, its launch grids recorded."""

        def __init__(self, k, expression):
            self.k, self.expression, self.kernel = k, expression, k.kernel

        def __call__(self, grid, block, args):
            grids.append((self.expression, tuple(grid), tuple(block)))
            return self.k(grid, block, args)

    def occupancy(func, threads, shared):
        asked.append(func)
        return 5                          # 5 blocks of 256 threads per SM: 10 resident

    monkeypatch.setattr(cupy_bn, "_kernel", lambda name, expression: Spy(real_kernel(name, expression), expression))
    monkeypatch.setattr(xp.cuda.driver, "occupancyMaxActiveBlocksPerMultiprocessor", occupancy)
    rng = np.random.default_rng(5)
    M, K = 512, 70                        # 70 columns: blocks of (32, 8), 3 across
    x, dy, gamma = rng.standard_normal((M, K)), rng.standard_normal((M, K)), rng.uniform(0.5, 1.5, K)
    mean, var = x.mean(axis=1), x.var(axis=1)
    inv_std = 1 / np.sqrt(var + 1e-5)
    x_hat = (x - mean[:, None]) * inv_std[:, None]
    for _ in range(2):
        _, dgamma, dbeta = cupy_bn.ln_backward(xp.asarray(dy), xp.asarray(x), xp.asarray(mean),
                                               xp.asarray(inv_std), xp.asarray(gamma))
        np.testing.assert_allclose(dgamma, (dy * x_hat).sum(axis=0), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dbeta, dy.sum(axis=0), rtol=1e-10, atol=1e-12)
    sums = [(grid, block) for expression, grid, block in grids if expression.startswith("ln_param_grads")]
    # 10 resident blocks over 3 column blocks: 3 slices of the rows (9 blocks), not 4 (12, a
    # second wave) and not the 6 an assumed 8 blocks per SM gave (16 resident)
    assert sums == [((3, 3), (32, 8))] * 2
    assert len(asked) == 1, "one occupancy query for the kernel, then cached"


def _norm_calls(xp, kernels, rng, shape, kind):
    """Forward and backward of LayerNorm (x2 = shape) or GroupNorm (x3 = shape, 2 groups)
    through ``kernels``; the arrays it returns, as NumPy arrays."""
    x, dy = rng.standard_normal(shape), rng.standard_normal(shape)
    C = shape[1]
    g, b = rng.uniform(0.5, 1.5, C), rng.standard_normal(C)
    a = [xp.asarray(v) for v in (x, dy, g, b)] if xp is not None else [x, dy, g, b]
    if kind == "ln":
        y, mean, inv_std = kernels.ln_forward(a[0], a[2], a[3], 1e-5)
        grads = kernels.ln_backward(a[1], a[0], mean, inv_std, a[2])
    else:
        y, mean, inv_std = kernels.gn_forward(a[0], a[2], a[3], 2, 1e-5)
        grads = kernels.gn_backward(a[1], a[0], mean, inv_std, a[2], 2)
    return [np.asarray(v) for v in (y, mean, inv_std, *grads)]


@pytest.mark.skipif(GXX is None, reason=str(NO_EMULATOR_REASON))
def test_layernorm_and_groupnorm_plans_are_made_once_per_shape(monkeypatch):
    """Repeated calls of one shape share a plan (forward and backward too); GroupNorm's rows
    of the same (M, K) as a LayerNorm's get their own (its sums kernel differs); the results
    are the NumPy kernels' every time."""
    from bnref.kernels import numpy_norms
    xp = use_emulator(monkeypatch)
    for _ in range(2):
        for kind, shape in (("ln", (6, 8)), ("gn", (3, 4, 4))):          # both: 6 rows of 8
            got = _norm_calls(xp, cupy_bn, np.random.default_rng(7), shape, kind)
            want = _norm_calls(None, numpy_norms, np.random.default_rng(7), shape, kind)
            for i, (a, w) in enumerate(zip(got, want)):
                np.testing.assert_allclose(a, w, rtol=1e-10, atol=1e-12, err_msg=f"{kind} output {i}")
    assert cupy_bn._rows_plan.cache_info().misses == 2
    assert cupy_bn._rows_plan.cache_info().hits == 6


@pytest.mark.skipif(GXX is None, reason=str(NO_EMULATOR_REASON))
@pytest.mark.parametrize("kind,shape", [("ln", (0, 5)), ("gn", (0, 4, 3))])
def test_layernorm_and_groupnorm_of_no_rows_launch_nothing(monkeypatch, kind, shape):
    """An empty batch gives empty outputs and zero parameter gradients without a launch (a
    grid of 0 blocks is an error on a GPU; the emulator would run it as nothing)."""
    xp = use_emulator(monkeypatch)
    launched = []
    real_kernel = cupy_bn._kernel

    class Recorded:
        """The kernel's handle (for the occupancy query); a launch is recorded, not run."""

        def __init__(self, name, expression):
            self.kernel, self.expression = real_kernel(name, expression).kernel, expression

        def __call__(self, grid, block, args):
            launched.append((self.expression, grid))

    monkeypatch.setattr(cupy_bn, "_kernel", Recorded)
    y, mean, inv_std, dx, dgamma, dbeta = _norm_calls(xp, cupy_bn, np.random.default_rng(8), shape, kind)
    assert launched == []
    assert y.shape == dx.shape == shape and mean.size == inv_std.size == 0
    assert dgamma.tolist() == dbeta.tolist() == [0.0] * shape[1]


@pytest.mark.skipif(GXX is None, reason=str(NO_EMULATOR_REASON))
@pytest.mark.parametrize("shape,dtype,vec", [((40, 2, 300), np.float32, 4), ((40, 2, 301), np.float64, 1),
                                             ((401, 3, 16), np.float64, 2)],
                         ids=["75 vectors a run", "301 values a run (> a block)", "8 vectors a run"])
def test_rows_walk_steps_run_and_position_exactly(monkeypatch, shape, dtype, vec):
    """The rows walk steps (run, position) incrementally instead of dividing per vector: with
    runs shorter and longer than a block, and slices that start inside a run, every value is
    visited once (statistics, y and dx as NumPy's)."""
    xp = use_emulator(monkeypatch)
    layout, _, got_vec, grid, _, _ = cupy_bn._plan(xp.asarray(np.zeros(shape, dtype)))
    assert (layout, got_vec) == ("rows", vec) and grid[1] > 1
    rtol = 1e-12 if dtype == np.float64 else 2e-5
    x, dy, g, b = _last_block_case(shape, dtype, 3)
    _check_forward_backward(xp, x, dy, g, b, rtol)
    y, *_ = cupy_bn.bn_forward_train(xp.asarray(x), xp.asarray(g), xp.asarray(b), 1e-5)
    x64 = x.astype(np.float64)
    want = ((x64 - x64.mean(axis=(0, 2))[:, None]) / np.sqrt(x64.var(axis=(0, 2))[:, None] + 1e-5)
            * g[:, None] + b[:, None])
    np.testing.assert_allclose(y, want, rtol=rtol, atol=rtol * 10)


@pytest.mark.skipif(GXX is None, reason=str(NO_EMULATOR_REASON))
def test_per_thread_default_streams_get_scratch_per_thread(monkeypatch):
    """cudaStreamPerThread is one handle (2) for what is a different stream in every thread:
    its scratch is kept per thread, or two threads' launches would share partials."""
    import threading
    xp = use_emulator(monkeypatch)
    monkeypatch.setattr(xp.cuda, "get_current_stream", lambda: types.SimpleNamespace(ptr=2))
    x = xp.asarray(np.random.default_rng(4).standard_normal((6, 3, 40)))
    cupy_bn.bn_stats(x)
    worker = threading.Thread(target=cupy_bn.bn_stats, args=(x,))
    worker.start()
    worker.join()
    plan = cupy_bn._forward_plan((6, 3, 40), np.dtype(np.float64), 16, 0)
    assert sorted(k[1] == threading.get_ident() for k in plan.scratch) == [False, True]
