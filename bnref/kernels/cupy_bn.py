"""Batch Normalization kernels in CuPy: the CUDA sources in ``cuda/`` behind the kernel API.

The kernel interface of :mod:`bnref.kernels`; inputs are CuPy arrays in the
canonical contiguous views (``x3`` (A, C, B) for BatchNorm and GroupNorm, ``x2`` (M, K) for
LayerNorm). ``README.md`` in ``cuda/`` explains the kernels; in short, BatchNorm is

    bn_stats (partial Welford statistics on a channel x split grid; the last block of each
              channel merges them (Chan): mean, var, inv_std, running statistics)
      -> bn_normalize                                                          (forward)
    bn_grad (partial sums of dy, dy * (x - mean); the last block of each channel adds them:
             dgamma, dbeta, the dx coefficients) -> bn_dx                       (backward)

Every tensor pass walks the data in one of two layouts: "rows" when B is large (NCHW: each
channel is A runs of B contiguous values) and "cols" when B is small ((N, C), channels-last:
consecutive values belong to consecutive channels), with vector loads of up to 16 bytes (the
widest that the run length and the pointers' alignment allow).

CuPy is imported on first use, never at import time. Kernels are compiled once per process
(``cupy.RawModule``, also cached on disk by CuPy) for float16, bfloat16 (ml_dtypes), float32
and float64; statistics and parameter gradients are float32 for the 16-bit types, else the
input's dtype. No function here synchronises with the device: kernels are queued on the
current stream, and the results are ready when that stream reaches them.

Host cost: the BatchNorm entry points look up a cached plan per (shape, dtype, alignment,
device) holding the grids (sized from each kernel's occupancy), kernel handles and dimension
arguments, and scratch buffers (partials, last-block counters) per CUDA stream, so a call does
little more than allocate its results and launch twice (see "BatchNorm: plans" below;
benchmarks/bench_gpu_host.py measures it with the launches stubbed). LayerNorm and GroupNorm
keep a plan per (kind, rows, dtype, device) too (:class:`_RowsPlan`: kernel handles, grids,
dimension arguments; no scratch). Their host cost is not in that benchmark.

Devices: every entry point runs on its x's GPU (:func:`device_scope`), whatever device is
current, and refuses any other array argument that lives on another GPU (a ValueError naming
it). Results are on x's device.

Subnormals are flushed to zero. CuPy appends ``-ftz=true`` to every RawModule's options, after
ours (NVRTC honours the last, so ``-ftz=false`` here would be overridden), which makes all
float32 arithmetic flush subnormal inputs and results: bfloat16 and float32 values with
magnitude below ``2**-126`` (about 1.18e-38) are read and written as (signed) zero. float16 is
not affected (its subnormals are normal floats), nor float64. PyTorch's kernels and the CPU
kernel sets keep subnormals, so such values differ there; tests/test_gpu_kernels.py pins both
the compile flag and the GPU's behaviour.
"""
from __future__ import annotations

import contextlib
import functools
import re
import threading
from pathlib import Path

import numpy as np

from . import stat_dtype

__all__ = ["bn_stats", "bn_forward_train", "bn_backward", "bn_inference",
           "ln_forward", "ln_backward", "gn_forward", "gn_backward"]

CUDA_DIR = Path(__file__).with_name("cuda")

# numpy dtype name -> (C++ storage type, values per 16-byte vector)
_TYPES = {"float16": ("bnref_half", 8), "bfloat16": ("bnref_bfloat16", 8),
          "float32": ("float", 4), "float64": ("double", 2)}
_ACC_CTYPE = {"float32": "float", "float64": "double"}

ROWS_MIN_B = 16          # B >= this: "rows" layout; else "cols"
THREADS = 256            # threads per block for the tensor passes
WAVES = 1                # split grids: this many full waves of resident blocks (see _grid_plan)
MIN_ITEMS = 4            # at least this many vectors (rows) per thread before splitting more


def _per_type(kernels, vec=True):
    """Name expressions of ``kernels`` for every storage type (and vector width)."""
    out = []
    for k in kernels:
        for ctype, v in _TYPES.values():
            # every power-of-two width up to 16 bytes: the widest that divides the run is used
            widths = [1 << i for i in range(v.bit_length())]
            out += [f"{k}<{ctype}, {w}>" for w in widths] if vec else [f"{k}<{ctype}>"]
    return out


def _per_acc(kernels):
    return [f"{k}<{a}>" for k in kernels for a in ("float", "double")]


# Every template instantiation the wrappers launch, per .cu file (tests/test_cuda_compile.py
# compiles exactly these with nvcc).
NAME_EXPRESSIONS = {
    "bn_stats": _per_type(["bn_stats_rows", "bn_stats_cols"]),
    "bn_finalize": _per_acc(["bn_inference_params"]),
    "bn_normalize": _per_type(["bn_normalize_rows", "bn_normalize_cols"]),
    "bn_backward": _per_type(["bn_grad_rows", "bn_grad_cols", "bn_dx_rows", "bn_dx_cols"]),
    "layernorm": _per_type(["rownorm_forward", "rownorm_backward_dx", "ln_param_grads"],
                           vec=False),
    "groupnorm": _per_type(["gn_channel_sums"], vec=False),
}
COMPILE_OPTIONS = ("-std=c++17",)

_INCLUDE = re.compile(r'^#include "([^"]+)"\s*$', re.MULTILINE)


def module_source(name):
    """CUDA source of ``cuda/<name>.cu`` with its local ``#include "..."`` files inlined.

    Inlining (rather than ``-I``) makes the source self-contained, so CuPy's on-disk cache,
    which keys on the source text, notices edits to ``common.cuh`` too.
    """
    seen = set()

    def expand(path):
        def include(match):
            inc = path.parent / match.group(1)
            if inc in seen:
                return ""
            seen.add(inc)
            return f"// ---- {inc.name} ----\n{expand(inc)}\n// ---- end {inc.name} ----"
        return _INCLUDE.sub(include, path.read_text())

    return expand(CUDA_DIR / f"{name}.cu")


# ---- CuPy plumbing -----------------------------------------------------------------------------

def _cupy():
    import cupy  # lazily: CPU-only machines never import it
    return cupy


_SAME_DEVICE = contextlib.nullcontext()    # reusable: entering and leaving it does nothing


def device_scope(x, others=None, x_name="x"):
    """``with device_scope(x, {"gamma": gamma, ...}):`` runs the block on x's GPU.

    Kernels, scratch buffers and results go to the *current* device, so an array on device 1
    while device 0 is current would be read through an illegal address (which breaks the CUDA
    context for the rest of the process). Every CuPy array in ``others`` (name -> array or
    None; NumPy arrays and None are skipped) must live on x's device: one elsewhere is a
    ValueError naming it, its device and x's. When x's device is already current (the usual
    case) nothing is switched: ``cupy.cuda.Device`` would call ``cudaSetDevice`` on every exit.
    """
    cp = _cupy()
    dev = x.data.device_id
    if others:
        ndarray = cp.ndarray
        for name, a in others.items():
            if isinstance(a, ndarray) and a.data.device_id != dev:
                raise ValueError(
                    f"{name} on GPU {a.data.device_id}, but {x_name} on GPU {dev}; expected every "
                    f"array on {x_name}'s device (copy it over with cupy.asarray inside "
                    f"`with cupy.cuda.Device({dev}):`)")
    if dev == cp.cuda.runtime.getDevice():
        return _SAME_DEVICE
    return cp.cuda.Device(dev)


@functools.lru_cache(maxsize=None)
def _module(name):
    """Compile ``cuda/<name>.cu`` once per process (CuPy also caches the binary on disk)."""
    cp = _cupy()
    return cp.RawModule(code=module_source(name), options=COMPILE_OPTIONS,
                        name_expressions=NAME_EXPRESSIONS[name])


@functools.lru_cache(maxsize=None)
def _kernel(name, expression):
    return _module(name).get_function(expression)


@functools.lru_cache(maxsize=None)
def _sm_count(device_id):
    return _cupy().cuda.Device(device_id).attributes["MultiProcessorCount"]


@functools.lru_cache(maxsize=None)
def _blocks_per_sm(name, expression, threads, device_id):
    """How many blocks of ``threads`` threads of this kernel one multiprocessor of the device
    holds at once: CUDA's occupancy calculator, from the compiled kernel's registers and static
    shared memory (none is dynamic here). Queried once per kernel, block size and device."""
    func = _kernel(name, expression).kernel.ptr               # the CUfunction on this device
    n = _cupy().cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(func, threads, 0)
    return max(1, int(n))


def _resident_blocks(name, expression, threads=THREADS):
    """Blocks of this kernel that the current GPU runs at once (one full wave)."""
    dev = _cupy().cuda.runtime.getDevice()
    return _sm_count(dev) * _blocks_per_sm(name, expression, threads, dev)


@functools.lru_cache(maxsize=None)
def _acc_ctype(acc):
    """The C++ name of a statistics dtype (float or double)."""
    return _ACC_CTYPE[np.dtype(acc).name]


@functools.lru_cache(maxsize=None)
def _ctype(dtype):
    """(C++ type, vector width) of a dtype (or dtype name); cached: numpy computes names in Python."""
    try:
        return _TYPES[np.dtype(dtype).name]
    except KeyError:
        raise TypeError(f"x: dtype {np.dtype(dtype)} is not supported by the CuPy kernels; "
                        "expected float16, bfloat16, float32 or float64") from None


def _vector(v, acc):
    """A (C,) parameter as a contiguous array of the accumulation type (``v`` itself when it
    is one already, as the public functions hand it over)."""
    if v.dtype == acc and v.flags.c_contiguous:
        return v
    return _cupy().ascontiguousarray(v, dtype=acc)


def _plan(x3, *others):
    """Layout, C++ type, vector width, grid, block and partials per channel for a pass over x3.

    ``others`` are the other tensors the pass reads or writes (same shape): a vector of
    ``vec`` values needs every pointer aligned to its size.
    """
    A, C, B = x3.shape
    _check_size(A, B)
    align = min(_alignment(a.data.ptr) for a in (x3, *others))
    layout, ctype, vec = _layout(C, B, x3.dtype, align)
    target = _resident_blocks("bn_stats", f"bn_stats_{layout}<{ctype}, {vec}>")
    return _grid_plan(A, C, B, x3.dtype, align, target)


def _alignment(ptr):
    """The largest power of two <= 16 that divides the address ``ptr`` (16 for 0)."""
    return min(16, ptr & -ptr) if ptr else 16


def _check_size(A, B):
    if A * B >= 2**31:
        raise ValueError(f"x: {A * B} values per channel; the CuPy kernels support < 2**31")


@functools.lru_cache(maxsize=1024)
def _layout(C, B, dtype, align):
    """("rows" or "cols", C++ type, vector width) of a pass over (A, C, B) values of dtype
    whose pointers are all ``align``-byte aligned.

    The width is the widest power of two, up to 16 bytes, that divides the run a vector must
    not cross (B for rows, C * B for cols) and fits the alignment: B = 50 floats get 8-byte
    vectors of 2 instead of none.
    """
    ctype, vec = _ctype(dtype)
    run = B if B >= ROWS_MIN_B else C * B
    itemsize = np.dtype(dtype).itemsize
    while vec > 1 and (run % vec or vec * itemsize > align):
        vec //= 2
    return ("rows" if B >= ROWS_MIN_B else "cols"), ctype, vec


@functools.lru_cache(maxsize=1024)
def _grid_plan(A, C, B, dtype, align, target):
    """See _plan. Splits the reduction dimension so that the grid is WAVES full waves of
    ``target`` resident blocks (the kernel's occupancy times the SMs) even when C is small,
    but never below ``MIN_ITEMS`` vectors (rows) per thread.

    The split count is rounded *down*: C * ceil(target / C) blocks overshoot one wave (C = 64
    of 1056 resident blocks: 1088, 1.03 waves), and the second wave, nearly empty, takes as
    long as the first. With equal blocks, one wave of floor(target / C) splits per channel
    takes W / f for a channel's work W, the ceil grid 2 W / (f + 1): never less. (The wave
    model's reasoning, not measured on a GPU.) With C > target there is one block per channel.
    """
    layout, ctype, vec = _layout(C, B, dtype, align)
    blocks = WAVES * target
    if layout == "rows":
        per_channel = A * B // vec
        splits = max(1, min(blocks // C, -(-per_channel // (THREADS * MIN_ITEMS)), 65535))
        return "rows", ctype, vec, (C, splits), (THREADS,), splits
    grid, block = _cols_grid(A, -(-C * B // vec), blocks)
    return "cols", ctype, vec, grid, block, grid[1] * B


def _cols_grid(A, columns, blocks):
    """(grid, block) of a cols walk: ``columns`` threads across (one per column of vectors),
    the A rows split over grid y into at most ``blocks // grid x`` slices (rounded down, see
    _grid_plan), never below MIN_ITEMS rows per thread. Blocks are (bx, THREADS // bx)."""
    bx = min(32, 1 << (columns - 1).bit_length())      # a power of two <= 32
    by = THREADS // bx
    gx = -(-columns // bx)
    splits = max(1, min(blocks // gx, -(-A // (by * MIN_ITEMS)), 65535))
    return (gx, splits), (bx, by)


def _dims(layout, A, C, B):
    """The (A, C, B) kernel arguments: int32 A for rows, int64 A for cols."""
    return (np.int32(A) if layout == "rows" else np.int64(A)), np.int32(C), np.int32(B)


# ---- BatchNorm: plans ----------------------------------------------------------------------------
#
# On the GPU a small or medium BatchNorm call is bound by the host, not by the device: what
# Python does per call (benchmarks/bench_gpu_host.py measures it with the launches stubbed).
# Everything that depends only on (shape, dtype, alignment, device) -- layout, vector width,
# grids, block, kernel handles, the int32/int64 dimension arguments -- is therefore worked
# out once and kept in a plan (an LRU cache of PLAN_CACHE_SIZE per kind). A call then looks
# up its plan, allocates its results and launches.
#
# Each plan also keeps its scratch buffers (partials, column totals, the last-block counters,
# the per-channel params/coef arrays that only the next launch reads), one set per CUDA
# stream: kernels on one stream run in order, so the next call on that stream cannot
# overwrite them before the last one has read them, while two streams must not share them.
# Results (y, mean, var, ...) are always new arrays.

PLAN_CACHE_SIZE = 256
STREAMS_PER_PLAN = 8         # scratch sets kept per plan (the oldest is dropped beyond that)
PER_THREAD_STREAM = 2        # cudaStreamPerThread's handle (CuPy's Stream.ptds)


class _Plan:
    """One BatchNorm call kind on one (shape, dtype, alignment, device); see the notes above."""

    __slots__ = ("C", "P", "acc", "scalar", "grid", "grid2", "block", "dims", "C32", "m",
                 "fin_grid", "fin_block", "pass1", "finalize", "pass2", "scratch_shapes",
                 "scratch", "ones", "zeros", "no_update", "flag_update", "W", "counters")

    #: (module, kernel) of the reduction pass (None: there is none) and of the elementwise pass
    PASSES = ((None, None), (None, None))

    def __init__(self, shape, dtype, align):
        A, C, B = shape
        _check_size(A, B)
        self.C, self.scratch = C, {}
        if C == 0:
            return
        acc = stat_dtype(dtype)
        layout, ctype, vec = _layout(C, B, dtype, align)
        targs = f"{ctype}, {vec}"
        # each pass's grid from its own kernel's occupancy (the elementwise passes use fewer
        # registers than the reductions, so more of their blocks may fit); the partials'
        # layout P follows the reduction's grid
        (mod1, k1), (mod2, k2) = self.PASSES
        self.pass2 = _kernel(mod2, f"{k2}_{layout}<{targs}>")
        _, _, _, self.grid2, block, P = _grid_plan(
            A, C, B, dtype, align, _resident_blocks(mod2, f"{k2}_{layout}<{targs}>"))
        grid = self.grid2
        if k1 is not None:
            self.pass1 = _kernel(mod1, f"{k1}_{layout}<{targs}>")
            _, _, _, grid, block, P = _grid_plan(
                A, C, B, dtype, align, _resident_blocks(mod1, f"{k1}_{layout}<{targs}>"))
        self.P, self.acc, self.scalar = P, acc, (np.float32 if acc == np.float32 else np.float64)
        self.grid, self.block, self.dims = grid, block, _dims(layout, A, C, B)
        self.m = self.scalar(A * B)
        self.no_update, self.flag_update = (np.int32(0), self.scalar(0)), np.int32(1)
        # last-block counters: one per channel (rows), one per column block and per channel (cols)
        self.W = C * B if layout == "cols" else 1
        self.counters = C + (grid[0] if layout == "cols" else 0)
        self._more(_acc_ctype(acc))

    def _more(self, acc_ctype):
        """What a kind of plan needs besides its passes."""

    def buffers(self):
        """This stream's scratch buffers (made on the first call on the stream)."""
        cp = _cupy()
        stream = cp.cuda.get_current_stream().ptr
        if stream == PER_THREAD_STREAM:     # one handle, but a different stream in each thread
            stream = (stream, threading.get_ident())
        buf = self.scratch.get(stream)
        if buf is None:
            if len(self.scratch) >= STREAMS_PER_PLAN:
                self.scratch.pop(next(iter(self.scratch)))
            # acc-dtype buffers, then the counters: zero once, and zero again after every launch
            # (the last block to count itself resets each)
            buf = self.scratch[stream] = (*(cp.empty(s, dtype=self.acc) for s in self.scratch_shapes),
                                          cp.zeros(self.counters, dtype=np.uint32))
        return buf


class _ForwardPlan(_Plan):
    """bn_stats (finalize included) -> bn_normalize; scratch: partials (3, C, P), column totals
    (3, W), params (3, C), counters."""

    PASSES = (("bn_stats", "bn_stats"), ("bn_normalize", "bn_normalize"))

    def _more(self, acc_ctype):
        self.scratch_shapes = ((3, self.C, self.P), (3, self.W), (3, self.C))
        self.ones = self.zeros = None      # bn_stats' gamma and beta, made on first use


class _BackwardPlan(_Plan):
    """bn_grad (finalize included) -> bn_dx; scratch: partials (2, C, P), column totals (2, W),
    coef (4, C), counters."""

    PASSES = (("bn_backward", "bn_grad"), ("bn_backward", "bn_dx"))

    def _more(self, acc_ctype):
        self.scratch_shapes = ((2, self.C, self.P), (2, self.W), (4, self.C))


class _InferencePlan(_Plan):
    """bn_inference_params -> bn_normalize; scratch: params (3, C)."""

    PASSES = ((None, None), ("bn_normalize", "bn_normalize"))

    def _more(self, acc_ctype):
        self.finalize = _kernel("bn_finalize", f"bn_inference_params<{acc_ctype}>")
        self.fin_grid, self.fin_block = (-(-self.C // 128),), (128,)
        self.C32 = np.int32(self.C)                # bn_inference_params' int C argument
        self.scratch_shapes = ((3, self.C),)
        self.counters = 0


@functools.lru_cache(maxsize=PLAN_CACHE_SIZE)
def _forward_plan(shape, dtype, align, device):
    return _ForwardPlan(shape, dtype, align)


@functools.lru_cache(maxsize=PLAN_CACHE_SIZE)
def _backward_plan(shape, dtype, align, device):
    return _BackwardPlan(shape, dtype, align)


@functools.lru_cache(maxsize=PLAN_CACHE_SIZE)
def _inference_plan(shape, dtype, align, device):
    return _InferencePlan(shape, dtype, align)


def _where(x3):
    """(alignment of its address in bytes, up to 16; device id) of x3: the rest of a plan's key."""
    d = x3.data
    return _alignment(d.ptr), d.device_id


def _contiguous(a, dtype=None):
    """``a`` as a C-contiguous array (of ``dtype``): ``a`` itself when it is one already."""
    if a.flags.c_contiguous and (dtype is None or a.dtype == dtype):
        return a
    return _cupy().ascontiguousarray(a, dtype=dtype)


# ---- BatchNorm ---------------------------------------------------------------------------------

def _bn_statistics(x3, gamma, beta, eps, running=None):
    """Per-channel statistics of x3: ``(mean, var, inv_std, params)`` (acc dtype).

    ``params`` (3, C) = (mean, gamma * inv_std, beta) feeds bn_normalize; it is the plan's
    scratch (valid until the next call on this stream). ``running``, if given, is
    ``(running_mean, running_var, momentum)`` (contiguous acc-dtype CuPy arrays, updated in
    place by the statistics kernel's last block of each channel, with the unbiased batch
    variance), or ``(running_mean, running_var, momentum, new_mean, new_var)`` to leave the
    first two alone and write the updated statistics to the last two. x3 must be C-contiguous
    with C > 0. Does not synchronise.
    """
    p = _forward_plan(x3.shape, x3.dtype, *_where(x3))
    return _statistics(p, x3, gamma, beta, eps, running)


def _statistics(p, x3, gamma, beta, eps, running):
    empty, acc = _cupy().empty, p.acc
    part, colpart, params, counter = p.buffers()
    # three allocations rather than three row views of one (3, C) array: the same cost on the
    # stand-in of bench_gpu_host.py, fewer array objects made; on CuPy not measured
    mean, var, inv_std = empty(p.C, dtype=acc), empty(p.C, dtype=acc), empty(p.C, dtype=acc)
    if running is None:
        update = p.no_update + (mean, var, mean, var)              # (unused placeholders)
    else:
        rm, rv, momentum, *out = running                           # out: (rm_out, rv_out) or []
        update = (p.flag_update, p.scalar(momentum), rm, rv, *(out or (rm, rv)))
    p.pass1(p.grid, p.block,
            (x3, part, colpart, counter, _vector(gamma, acc), _vector(beta, acc), p.scalar(eps),
             mean, var, inv_std, params) + update + p.dims)
    return mean, var, inv_std, params


def _no_channels(x3, n_stats):
    """For C = 0: the CPU kernels' results (an empty x-shaped array, empty statistics), with
    no launch (a grid of 0 blocks is an error, and the planner would divide by C)."""
    cp = _cupy()
    empty = [cp.empty(0, dtype=stat_dtype(x3.dtype)) for _ in range(n_stats)]
    return cp.empty_like(x3), *empty


def bn_stats(x3):
    """Biased per-channel ``(mean, var)`` of ``x3`` (A, C, B): the statistics pass alone.

    Used by ``bnref.batch_statistics``. Does not synchronise.
    """
    with device_scope(x3):
        x3 = _contiguous(x3)
        p = _forward_plan(x3.shape, x3.dtype, *_where(x3))
        if p.C == 0:
            return _no_channels(x3, 2)[1:]
        if p.ones is None:                  # gamma = 1, beta = 0: made once, on x's device
            cp = _cupy()
            p.ones, p.zeros = cp.ones(p.C, p.acc), cp.zeros(p.C, p.acc)
        mean, var, _, _ = _statistics(p, x3, p.ones, p.zeros, 1.0, None)
        return mean, var


def _bn_apply(p, x3, params):
    """y3 = (x3 - mean) * scale + beta per channel, params (3, C). Does not synchronise.

    y3 is a new allocation, so 16-byte aligned (CuPy's pool hands out 512-byte blocks): the
    plan's vector width, chosen for x3, is valid for it too.
    """
    y3 = _cupy().empty(x3.shape, dtype=x3.dtype)
    p.pass2(p.grid2, p.block, (x3, params, y3) + p.dims)
    return y3


def bn_forward_train(x3, gamma, beta, eps):
    """Training-mode forward on the GPU. Returns ``(y3, mean, var, inv_std)``.

    ``var`` is biased; statistics are float32 for 16-bit inputs. Two passes over x3
    (statistics, then normalise). Subnormal bfloat16 / float32 values are flushed to zero
    (CuPy compiles with ``-ftz=true``; see the module docstring). Does not synchronise.
    """
    with device_scope(x3, {"gamma": gamma, "beta": beta}):
        x3 = _contiguous(x3)
        p = _forward_plan(x3.shape, x3.dtype, *_where(x3))
        if p.C == 0:
            return _no_channels(x3, 3)
        mean, var, inv_std, params = _statistics(p, x3, gamma, beta, eps, None)
        return _bn_apply(p, x3, params), mean, var, inv_std


def bn_forward_train_update(x3, gamma, beta, eps, running_mean, running_var, momentum):
    """:func:`bn_forward_train` that also updates the running statistics, in the same launches.

    Returns ``(y3, mean, var, inv_std, new_running_mean, new_running_var)``. PyTorch's rule,
    ``new = (1 - momentum) * old + momentum * batch`` with the *unbiased* batch variance
    (``var * m / (m - 1)``, m = A * B > 1), computed by the last block of each channel of the
    statistics kernel; ``running_mean`` and ``running_var`` (statistics dtype) are left alone,
    the new values are new arrays (as :func:`bnref.functional.running_stats_update` returns).
    This replaces the handful of small elementwise kernels the update would otherwise cost.
    Not part of the kernel interface (the CPU sets have no such function): the layer calls it
    for CuPy arrays. Does not synchronise.
    """
    with device_scope(x3, {"gamma": gamma, "beta": beta, "running_mean": running_mean,
                           "running_var": running_var}):
        x3 = _contiguous(x3)
        p = _forward_plan(x3.shape, x3.dtype, *_where(x3))
        if p.C == 0:
            return (*_no_channels(x3, 3), running_mean.copy(), running_var.copy())
        empty, acc = _cupy().empty, p.acc
        new_mean, new_var = empty(p.C, dtype=acc), empty(p.C, dtype=acc)
        mean, var, inv_std, params = _statistics(
            p, x3, gamma, beta, eps, (_vector(running_mean, acc), _vector(running_var, acc),
                                      float(momentum), new_mean, new_var))
        return _bn_apply(p, x3, params), mean, var, inv_std, new_mean, new_var


def bn_inference(x3, gamma, beta, running_mean, running_var, eps):
    """Inference-mode forward: per-channel affine map with the running statistics.

    Subnormal bfloat16 / float32 outputs are flushed to zero (see the module docstring).
    Does not synchronise.
    """
    with device_scope(x3, {"gamma": gamma, "beta": beta, "running_mean": running_mean,
                           "running_var": running_var}):
        x3 = _contiguous(x3)
        if x3.size == 0:                                            # no channels, or no examples
            return _cupy().empty_like(x3)
        p = _inference_plan(x3.shape, x3.dtype, *_where(x3))
        acc = p.acc
        params, _ = p.buffers()
        p.finalize(p.fin_grid, p.fin_block,
                   (_vector(running_mean, acc), _vector(running_var, acc), _vector(gamma, acc),
                    _vector(beta, acc), p.scalar(eps), p.C32, params))
        return _bn_apply(p, x3, params)


def bn_backward(dy3, x3, mean, inv_std, gamma):
    """Backward of the training-mode forward. Returns ``(dx3, dgamma, dbeta)``.

    dgamma and dbeta are in the statistics dtype (float32 for 16-bit inputs). Two passes
    over (dy3, x3): per-channel sums, then dx. Does not synchronise.
    """
    with device_scope(x3, {"dy": dy3, "mean": mean, "inv_std": inv_std, "gamma": gamma}):
        x3 = _contiguous(x3)
        dy3 = _contiguous(dy3, x3.dtype)
        align, dev = _where(x3)
        p = _backward_plan(x3.shape, x3.dtype, min(align, _alignment(dy3.data.ptr)), dev)
        if p.C == 0:
            return _no_channels(x3, 2)
        cp, acc = _cupy(), p.acc
        mean, inv_std = _vector(mean, acc), _vector(inv_std, acc)
        part, colpart, coef, counter = p.buffers()
        dgamma, dbeta = cp.empty(p.C, dtype=acc), cp.empty(p.C, dtype=acc)   # see _statistics
        p.pass1(p.grid, p.block, (dy3, x3, mean, part, colpart, counter, inv_std,
                                  _vector(gamma, acc), p.m, dgamma, dbeta, coef) + p.dims)
        dx3 = cp.empty(x3.shape, dtype=x3.dtype)                    # aligned: see _bn_apply
        p.pass2(p.grid2, p.block, (dy3, x3, coef, dx3) + p.dims)
        return dx3, dgamma, dbeta


# ---- LayerNorm and GroupNorm (row-wise) --------------------------------------------------------

def _row_block(K):
    """(threads per row, rows per block): about 8 values per thread, 32..1024 threads a row."""
    tpr = min(1024, max(32, 1 << (max(1, -(-K // 8)) - 1).bit_length()))
    return tpr, max(1, THREADS // tpr)


class _RowsPlan:
    """One LayerNorm or GroupNorm shape on one device: kernel handles, grids, blocks and
    dimension arguments of its row passes and parameter sums, worked out once (like BatchNorm's
    plans, without scratch: the partial sums are allocated per call, and x needs no alignment,
    the row kernels reading one value at a time).

    ``rows`` is (M, K): LayerNorm's x2 with G = L = 1, or GroupNorm's (N * G, C / G * L) groups.
    """

    __slots__ = ("acc", "scalar", "launch", "row_grid", "row_block", "row_dims", "forward",
                 "dx", "sums", "sums_grid", "sums_block", "sums_dims", "S")

    def __init__(self, kind, M, K, G, L, dtype):
        ctype, _ = _ctype(dtype)
        self.acc = acc = stat_dtype(dtype)
        self.scalar = np.float32 if acc == np.float32 else np.float64
        self.launch = M > 0                 # no rows: nothing to launch (a grid of 0 is an error)
        tpr, rpb = _row_block(K)
        self.row_grid, self.row_block = (-(-M // rpb),), (tpr, rpb)
        self.row_dims = (np.int64(M), np.int32(K), np.int32(G), np.int32(L))
        self.forward = _kernel("layernorm", f"rownorm_forward<{ctype}>")
        self.dx = _kernel("layernorm", f"rownorm_backward_dx<{ctype}>")
        if kind == "ln":
            # column sums over the M rows, sized like BatchNorm's cols grids: one full wave
            # of this kernel's own resident blocks (the occupancy query), rounded down
            expression = f"ln_param_grads<{ctype}>"
            self.sums = _kernel("layernorm", expression)
            grid, self.sums_block = _cols_grid(M, K, WAVES * _resident_blocks("layernorm", expression))
            self.sums_grid, self.S = grid, grid[1]
            self.sums_dims = (np.int64(M), np.int32(K))
        else:
            # one warp per (n, c) run of L values, 8 per block
            N, C = M // G, K // L * G
            self.sums = _kernel("groupnorm", f"gn_channel_sums<{ctype}>")
            self.sums_grid, self.sums_block, self.S = (-(-(N * C) // 8),), (32, 8), N
            self.sums_dims = (np.int32(N), np.int32(C), np.int32(G), np.int32(L))


@functools.lru_cache(maxsize=PLAN_CACHE_SIZE)
def _rows_plan(kind, M, K, G, L, dtype, device):
    return _RowsPlan(kind, M, K, G, L, dtype)


def _rownorm_forward(p, rows, gamma, beta, eps):
    """Normalise each row of ``rows`` (M, K); value k of row r uses gamma[(r % G) * (K // L) + k // L]."""
    cp, acc = _cupy(), p.acc
    y = cp.empty_like(rows)
    mean, inv_std = cp.empty(rows.shape[0], dtype=acc), cp.empty(rows.shape[0], dtype=acc)
    if p.launch:
        p.forward(p.row_grid, p.row_block,
                  (rows, _vector(gamma, acc), _vector(beta, acc), y, mean, inv_std) + p.row_dims
                  + (p.scalar(eps),))
    return y, mean, inv_std


def _rownorm_dx(p, dy, rows, mean, inv_std, gamma):
    acc = p.acc
    dx = _cupy().empty_like(rows)
    if p.launch:
        p.dx(p.row_grid, p.row_block,
             (dy, rows, _vector(gamma, acc), _vector(mean.reshape(-1), acc),
              _vector(inv_std.reshape(-1), acc), dx) + p.row_dims)
    return dx


def _param_sums(p, dy, x, mean, inv_std, width):
    """dgamma, dbeta (width,) from the plan's sums kernel: partials (2, S, width), then their
    sum over S (the splits of M for LayerNorm, the N examples for GroupNorm)."""
    acc = p.acc
    cp = _cupy()
    part = (cp.empty if p.launch else cp.zeros)((2, p.S, width), dtype=acc)   # no rows: sums of 0
    if p.launch:
        p.sums(p.sums_grid, p.sums_block,
               (dy, x, _vector(mean.reshape(-1), acc), _vector(inv_std.reshape(-1), acc), part)
               + p.sums_dims)
    dgamma, dbeta = part.sum(axis=1)                               # (2, width): over S
    return dgamma, dbeta


def ln_forward(x2, gamma, beta, eps):
    """LayerNorm forward over the last axis of ``x2`` (M, K). Returns ``(y2, mean, inv_std)``.

    One block row per row of x2 (Welford, then normalise). Does not synchronise.
    """
    with device_scope(x2, {"gamma": gamma, "beta": beta}):
        x2 = _contiguous(x2)
        M, K = x2.shape
        p = _rows_plan("ln", M, K, 1, 1, x2.dtype, x2.data.device_id)
        return _rownorm_forward(p, x2, gamma, beta, eps)


def ln_backward(dy2, x2, mean, inv_std, gamma):
    """LayerNorm backward. Returns ``(dx2, dgamma, dbeta)``; dgamma/dbeta shape (K,).

    dx: one pass per row. dgamma/dbeta: column sums over the rows, split over M like the
    BatchNorm cols layout (one full wave of the kernel's resident blocks, from CUDA's occupancy
    query), then summed over the splits. Does not synchronise.
    """
    with device_scope(x2, {"dy": dy2, "mean": mean, "inv_std": inv_std, "gamma": gamma}):
        x2 = _contiguous(x2)
        dy2 = _contiguous(dy2, x2.dtype)
        M, K = x2.shape
        p = _rows_plan("ln", M, K, 1, 1, x2.dtype, x2.data.device_id)
        dx2 = _rownorm_dx(p, dy2, x2, mean, inv_std, gamma)
        return (dx2, *_param_sums(p, dy2, x2, mean, inv_std, K))


def gn_forward(x3, gamma, beta, num_groups, eps):
    """GroupNorm forward on ``x3`` (N, C, L). Returns ``(y3, mean, inv_std)``, stats (N, G).

    Each group of C / G channels is one contiguous row of (C / G) * L values, normalised by
    the LayerNorm row kernel with a per-channel affine map. Does not synchronise.
    """
    with device_scope(x3, {"gamma": gamma, "beta": beta}):
        x3 = _contiguous(x3)
        N, C, L = x3.shape
        G = int(num_groups)
        rows = x3.reshape(N * G, (C // G) * L)                      # (N*G, C/G*L)
        p = _rows_plan("gn", N * G, (C // G) * L, G, L, x3.dtype, x3.data.device_id)
        y, mean, inv_std = _rownorm_forward(p, rows, gamma, beta, eps)
        return y.reshape(N, C, L), mean.reshape(N, G), inv_std.reshape(N, G)


def gn_backward(dy3, x3, mean, inv_std, gamma, num_groups):
    """GroupNorm backward. Returns ``(dx3, dgamma, dbeta)``; dgamma/dbeta shape (C,).

    dx: the row kernel over the N * G groups. dgamma/dbeta: one warp per (n, c) run of L
    values, then a sum over N. Does not synchronise.
    """
    with device_scope(x3, {"dy": dy3, "mean": mean, "inv_std": inv_std, "gamma": gamma}):
        x3 = _contiguous(x3)
        dy3 = _contiguous(dy3, x3.dtype)
        N, C, L = x3.shape
        G = int(num_groups)
        K = (C // G) * L
        p = _rows_plan("gn", N * G, K, G, L, x3.dtype, x3.data.device_id)
        rows, dy_rows = x3.reshape(N * G, K), dy3.reshape(N * G, K)       # (N*G, C/G*L); N may be 0
        dx = _rownorm_dx(p, dy_rows, rows, mean, inv_std, gamma).reshape(N, C, L)
        return (dx, *_param_sums(p, dy3, x3, mean, inv_std, C))


#: The per-process caches (compiled modules, kernel handles, device properties, plans with
#: their scratch): tests that swap CuPy or the kernels for stand-ins give each a fresh one.
CACHES = ("_module", "_kernel", "_sm_count", "_blocks_per_sm", "_forward_plan", "_backward_plan",
          "_inference_plan", "_rows_plan")


def clear_cache():
    """Forget compiled modules, kernel handles and plans (e.g. after editing a .cu file in a
    live session)."""
    for name in CACHES:
        globals()[name].cache_clear()
