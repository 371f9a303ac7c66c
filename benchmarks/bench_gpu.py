"""GPU benchmark: bnref's CuPy BatchNorm against PyTorch on the same device, measured honestly.

For every shape, layout (NCHW and channels-last for 4-D shapes; (N, C) for 2-D) and dtype
(float32, float16, bfloat16), forward (training mode) and backward, it measures:

* **GPU time** per call: ``--calls`` calls queued back to back between one pair of CUDA
  events, divided by the number of calls. A spin kernel runs first, so the host has queued
  every call before the GPU reaches the first one: the figure is device time (kernels and
  the gaps between them), not host latency. Batches where the host did not finish queuing
  before the spin ended are counted ("host-limited") and reported. Where stream capture
  works, a CUDA graph of ``--graph-calls`` calls is also replayed (a cross-check without
  launch gaps); where it does not, the table says so and why.
* **API latency** per call: host wall time of ``--calls`` calls, with the device
  synchronised only after the batch: how long a call takes to return to the caller.
* **L2**: the inputs are rotated through enough copies that between two uses of one copy the
  calls read at least ``--l2-factor`` times the L2 cache (``L2CacheSize`` of the device) of
  other data, so every call reads its inputs from DRAM, like the copy it is compared with.
  Before each graph replay a buffer of twice the L2 size is read, so the replayed calls start
  cold too. Outputs are allocated by each library as in real use (its pool hands back the
  same block call after call).
* **Copy bandwidth** at each tensor's own size (a device-to-device copy of x, rotated the same
  way, read + write counted), and bnref's minimal traffic (forward 2|x|: read x, write y;
  backward 3|x|: read dy and x, write dx) per GPU time as a fraction of it.
* **PyTorch** twice: through autograd (``F.batch_norm`` recording the graph, backward by
  ``torch.autograd.grad``), and directly through the operator PyTorch's dispatcher picks for
  this input (``torch.ops.aten.cudnn_batch_norm`` / ``cudnn_batch_norm_backward`` where cuDNN
  is selected, else ``native_batch_norm`` / ``native_batch_norm_backward``), which is what
  bnref's direct call compares with. The backend is recorded per case: cuDNN enabled and its
  version, ``_select_batch_norm_backend``'s answer, the implementation index of
  ``_batch_norm_impl_index``, and the batch-norm operators a short torch.profiler trace of
  the autograd path saw.
* **Spread**: min, median and max over ``--repeat`` batches for every timing.
* **Accuracy**: max |result - float64 reference| / max |reference| (backward: worst of dx,
  dgamma, dbeta) for bnref and PyTorch (reference: PyTorch in float64 on the GPU, or bnref's
  NumPy kernels on the host without PyTorch).

The issue's goals (issue 13) are checked per row and printed as a verdict: GPU time <= 1.0x
PyTorch's direct operator on every shape, >= 70% of copy bandwidth on tensors of >= 25 MB
(10**6 bytes), API latency <= 1.2x PyTorch's direct operator. Medians are compared.

Usage::

    python benchmarks/bench_gpu.py                           # all shapes, 3 dtypes: print only
    python benchmarks/bench_gpu.py --quick --dtype float32
    python benchmarks/bench_gpu.py --out benchmarks/results/gpu.md --json /tmp/gpu.json

Prints the tables; writes a file only where ``--out`` (Markdown) or ``--json`` is given.
Exits with a message (status 0, or 1 with ``--require-gpu``) when CuPy cannot see a GPU.
"""
import argparse
import datetime
import gc
import itertools
import json
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

SHAPES = [(4096, 1024), (32, 64, 56, 56), (8, 256, 28, 28), (64, 128),
          (256, 64, 112, 112), (65536, 256)]
QUICK = [(4096, 1024), (32, 64, 56, 56), (8, 256, 28, 28), (64, 128)]
DTYPES = ("float32", "float16", "bfloat16")
EPS = 1e-5

GOAL_GPU_RATIO = 1.0          # bnref GPU time / PyTorch GPU time, every shape
GOAL_COPY_FRACTION = 0.70     # of copy bandwidth, tensors of at least GOAL_BIG_BYTES
GOAL_BIG_BYTES = 25 * 10**6   # "25 MB": decimal megabytes of x
GOAL_API_RATIO = 1.2          # bnref API latency / PyTorch API latency

L2_FACTOR = 3.0               # other data read between two uses of one input copy, in L2 sizes
MAX_COPIES = 16384            # rotation copies at most (tiny tensors)
SLOT_ALIGN = 256              # bytes: every copy starts 256-byte aligned (16-byte vector loads)
PASSES = ("fwd", "bwd")


# ---- pure logic (tested without a GPU: tests/test_bench_gpu.py) --------------------------------

def summarize(samples):
    """``{"min", "median", "max", "n"}`` of a list of timings.

    Examples
    --------
    >>> summarize([3.0, 1.0, 2.0, 10.0])
    {'min': 1.0, 'median': 2.5, 'max': 10.0, 'n': 4}
    """
    values = [float(s) for s in samples]
    if not values:
        raise ValueError("samples: empty; expected at least one timing")
    bad = [v for v in values if not math.isfinite(v) or v < 0]
    if bad:
        raise ValueError(f"samples: {bad[:3]} are not finite non-negative times")
    return {"min": min(values), "median": statistics.median(values), "max": max(values),
            "n": len(values)}


def rotation_count(copy_bytes, l2_bytes, factor=L2_FACTOR, max_copies=MAX_COPIES):
    """How many copies of the inputs to rotate through so that none is still in L2 when reused.

    Between two uses of one copy the other ``n - 1`` copies are read, so ``n - 1 >= factor *
    l2_bytes / copy_bytes``. A copy of at least ``factor * l2_bytes`` needs no rotation (it
    evicts itself). At most ``max_copies`` (then :func:`rotation_covers_l2` is False).

    Examples
    --------
    >>> rotation_count(1 << 20, 50 << 20)        # 1 MiB inputs, 50 MiB L2: 150 others + itself
    151
    >>> rotation_count(200 << 20, 50 << 20)
    1
    """
    for name, v in (("copy_bytes", copy_bytes), ("l2_bytes", l2_bytes)):
        if not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"{name}: {v!r}; expected a positive number of bytes")
    if not factor > 0:
        raise ValueError(f"factor: {factor!r}; expected > 0")
    need = factor * l2_bytes
    if copy_bytes >= need:
        return 1
    return int(min(max_copies, 1 + math.ceil(need / copy_bytes)))


def rotation_covers_l2(n, copy_bytes, l2_bytes, factor=L2_FACTOR):
    """Whether ``n`` copies keep ``factor * l2_bytes`` of other data between two uses of one."""
    others = copy_bytes if n == 1 else (n - 1) * copy_bytes
    return others >= factor * l2_bytes


def slot_elements(numel, itemsize, align=SLOT_ALIGN):
    """Elements per rotation slot: ``numel`` rounded up so each slot starts ``align``-aligned."""
    per = align // math.gcd(align, itemsize) if itemsize < align else 1
    return -(-numel // per) * per


def min_traffic(pass_, nbytes):
    """Bytes a pass must move at least: forward reads x, writes y; backward reads dy, x, writes dx."""
    try:
        return {"fwd": 2, "bwd": 3}[pass_] * nbytes
    except KeyError:
        raise ValueError(f"pass_: {pass_!r}; expected 'fwd' or 'bwd'") from None


def bandwidth_gbps(nbytes, ms):
    """GB/s (10**9 bytes per second) for ``nbytes`` moved in ``ms`` milliseconds."""
    if not ms > 0:
        raise ValueError(f"ms: {ms!r}; expected a positive time")
    return nbytes / (ms * 1e-3) / 1e9


def copy_fraction(pass_, nbytes, ms, copy_ms):
    """bnref's minimal-traffic bandwidth over the bandwidth of copying x (read + write)."""
    return bandwidth_gbps(min_traffic(pass_, nbytes), ms) / bandwidth_gbps(2 * nbytes, copy_ms)


def ratio(a, b):
    """a / b, or None where either is missing."""
    return None if a is None or b is None or not b > 0 else a / b


def verdicts(nbytes, gpu_ratio, frac, api_ratio):
    """The issue's three goals for one row: True (met), False (missed), None (not measured).

    ``"bandwidth"`` is ``"n/a"`` for tensors under 25 MB: there it is no goal.

    Examples
    --------
    >>> verdicts(30 * 10**6, 0.9, 0.75, 1.3)
    {'gpu': True, 'bandwidth': True, 'api': False}
    """
    big = nbytes >= GOAL_BIG_BYTES
    return {"gpu": None if gpu_ratio is None else gpu_ratio <= GOAL_GPU_RATIO,
            "bandwidth": ("n/a" if not big else None if frac is None
                          else frac >= GOAL_COPY_FRACTION),
            "api": None if api_ratio is None else api_ratio <= GOAL_API_RATIO}


def verdict_text(v):
    """A short pass/fail cell: 'PASS' when every measured goal is met, else what failed."""
    words = {True: "ok", False: "FAIL", None: "not measured", "n/a": "n/a"}
    if all(v[k] in (True, "n/a") for k in v):
        return "PASS"
    return "; ".join(f"{k} {words[v[k]]}" for k in v if v[k] not in (True, "n/a"))


def overall(rows):
    """(goal -> (met, missed, not measured)) over rows that have verdicts."""
    out = {}
    for goal in ("gpu", "bandwidth", "api"):
        vals = [r["verdicts"][goal] for r in rows if "verdicts" in r]
        out[goal] = (sum(v is True for v in vals), sum(v is False for v in vals),
                     sum(v is None for v in vals))
    return out


def fmt_stat(s, scale=1e3, digits=1):
    """'median [min-max]' of a summarize() dict given in ms, shown in us (scale 1e3)."""
    if not s:
        return "n/a"
    return (f"{s['median'] * scale:.{digits}f} [{s['min'] * scale:.{digits}f}-"
            f"{s['max'] * scale:.{digits}f}]")


def fmt(v, spec, missing="n/a"):
    return missing if v is None else format(v, spec)


# ---- timing (a GPU timeline behind a small interface, so the loops can be tested with fakes) ----

class CupyTimeline:
    """CUDA events and synchronisation on one CuPy stream (None: the legacy default stream,
    which PyTorch's default stream is too, so one timeline times both libraries)."""

    def __init__(self, cp, stream=None):
        self.cp, self.stream = cp, stream
        self._spin = None

    def event(self):
        return self.cp.cuda.Event()

    def record(self, event):
        event.record(self.stream)

    def elapsed_ms(self, a, b):
        b.synchronize()
        return self.cp.cuda.get_elapsed_time(a, b)

    def sync(self):
        self.cp.cuda.Device().synchronize()

    def spin(self, ms):
        """Keep the GPU busy for about ``ms`` ms (clock64 loop, no memory traffic)."""
        cp = self.cp
        if self._spin is None:
            self._spin = cp.RawKernel(
                r'extern "C" __global__ void bench_spin(long long cycles) {'
                r' long long t0 = clock64(); while (clock64() - t0 < cycles) { } }', "bench_spin")
            # kHz = cycles per ms; 2 GHz where it is not reported (a longer spin is still right)
            self._khz = cp.cuda.Device().attributes.get("ClockRate") or 2_000_000
        args = ((1,), (1,), (np.int64(ms * self._khz),))
        if self.stream is None:
            self._spin(*args)                                  # the current (default) stream
        else:
            with self.stream:
                self._spin(*args)


def gpu_time_queued(tl, fn, calls, repeat, warmup, spin_ms, clock=time.perf_counter):
    """Device time per call: ``calls`` calls between one event pair, after a spin of ``spin_ms``.

    Returns (per-call ms for each of ``repeat`` batches, number of host-limited batches: the
    host took longer to queue the batch than the spin lasted, so host gaps may be included).
    """
    for _ in range(warmup):
        fn()
    tl.sync()
    times, limited = [], 0
    for _ in range(repeat):
        a, b = tl.event(), tl.event()
        tl.spin(spin_ms)
        t0 = clock()
        tl.record(a)
        for _ in range(calls):
            fn()
        tl.record(b)
        if (clock() - t0) * 1e3 > spin_ms:
            limited += 1
        times.append(tl.elapsed_ms(a, b) / calls)
    return times, limited


def api_latency(tl, fn, calls, repeat, warmup, clock=time.perf_counter):
    """Host ms per call for ``calls`` calls; the device is synchronised after each batch only."""
    for _ in range(warmup):
        fn()
    tl.sync()
    times = []
    for _ in range(repeat):
        t0 = clock()
        for _ in range(calls):
            fn()
        t1 = clock()
        tl.sync()
        times.append((t1 - t0) * 1e3 / calls)
    return times


def spin_for(api_ms, calls):
    """Spin long enough for the host to queue ``calls`` calls of ``api_ms`` each, twice over."""
    return max(0.5, 2.0 * calls * api_ms)


def rotating(fns):
    """One callable that calls ``fns`` in turn (continuing across batches)."""
    it = itertools.cycle(fns)
    return lambda: next(it)()


def graph_time_cupy(cp, tl_cls, fns, calls, repeat, flush, replays=1):
    """CuPy stream capture of ``calls`` rotated calls; per-call ms of ``repeat`` cold replays.

    Each timing is ``replays`` launches of the graph back to back after one ``flush()``."""
    s = cp.cuda.Stream(non_blocking=True)
    tl = tl_cls(cp, s)
    fn = rotating(fns)
    cp.cuda.Device().synchronize()
    with s:
        for _ in range(2 * calls):
            fn()               # the pool now holds blocks for this stream: no cudaMalloc in capture
        s.synchronize()
        s.begin_capture()
        try:
            for _ in range(calls):
                fn()
        finally:
            graph = s.end_capture()
        graph.launch(s)
        s.synchronize()
        times = []
        for _ in range(repeat):
            flush()
            a, b = tl.event(), tl.event()
            tl.record(a)
            for _ in range(replays):
                graph.launch(s)
            tl.record(b)
            times.append(tl.elapsed_ms(a, b) / (calls * replays))
    del graph
    return times


def graph_time_torch(torch, tl, fns, calls, repeat, flush, replays=1):
    """torch.cuda.graph capture of ``calls`` rotated calls; per-call ms of ``repeat`` replays.

    Each timing is ``replays`` replays of the graph back to back after one ``flush()``."""
    fn = rotating(fns)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        flush()
        a, b = tl.event(), tl.event()
        tl.record(a)
        for _ in range(replays):
            graph.replay()
        tl.record(b)
        times.append(tl.elapsed_ms(a, b) / (calls * replays))
    del graph
    return times


# ---- the measurements ---------------------------------------------------------------------------

def _gpu_or_exit(require):
    try:
        import cupy as cp
        if cp.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("CuPy sees 0 CUDA devices")
        return cp
    except Exception as exc:  # ImportError, missing driver, no device
        print(f"bench_gpu: no GPU benchmark: CuPy cannot use a CUDA device ({type(exc).__name__}: {exc}).\n"
              "Run this on a machine with an NVIDIA GPU, CuPy and PyTorch installed. Nothing was written.",
              file=sys.stderr)
        sys.exit(1 if require else 0)


def _torch():
    try:
        import torch
        import torch.nn.functional as F  # noqa: N812
    except ImportError:
        return None, None, "PyTorch not installed"
    if not torch.cuda.is_available():
        return None, None, f"PyTorch {torch.__version__} without CUDA"
    return torch, F, None


def _np_dtype(name):
    if name == "bfloat16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


_INT_OF_SIZE = {2: np.int16, 4: np.int32, 8: np.int64}


def _host64(cp, a, dtype):
    """float64 NumPy copy (logical shape) of a CuPy array of ``dtype`` (moved as integers, so
    that dtypes CuPy cannot compute with, bfloat16, come back too)."""
    raw = cp.asnumpy(cp.ascontiguousarray(a.view(_INT_OF_SIZE[dtype.itemsize])))
    return raw.view(dtype).astype(np.float64)


def _device_copy(dst, src, nbytes):
    """cudaMemcpyAsync of ``nbytes`` from src to dst on the current stream."""
    dst.data.copy_from_device_async(src.data, nbytes)


def _rel_err(got, ref):
    return float(np.max(np.abs(got - ref)) / max(float(np.max(np.abs(ref))), 1e-30))


class Case:
    """One shape, layout and dtype: the rotated inputs for bnref, PyTorch and the copy."""

    def __init__(self, cp, torch, shape, channels_last, dtype_name, l2_bytes, factor):
        import bnref
        self.cp, self.torch = cp, torch
        self.shape, self.channels_last, self.dtype_name = shape, channels_last, dtype_name
        self.dtype = _np_dtype(dtype_name)
        self.layout = "(N, C)" if len(shape) == 2 else ("NHWC" if channels_last else "NCHW")
        C = shape[1]
        # memory order: channels-last stores (N, H, W, C); both libraries get the logical
        # (N, C, H, W) view of it (NHWC strides), as a PyTorch channels_last tensor is.
        self.mem_shape = (shape[0], *shape[2:], C) if channels_last else shape
        self.numel = numel = math.prod(shape)
        self.nbytes = numel * self.dtype.itemsize
        self.copies = rotation_count(self.nbytes, l2_bytes, factor)
        self.covers_l2 = rotation_covers_l2(self.copies, self.nbytes, l2_bytes, factor)
        slot = slot_elements(numel, self.dtype.itemsize)

        rng = np.random.default_rng(0)
        x_host = (rng.standard_normal(self.mem_shape, dtype=np.float32) * 2 + 0.5).astype(self.dtype)
        dy_host = rng.standard_normal(self.mem_shape, dtype=np.float32).astype(self.dtype)
        self.gamma64 = rng.uniform(0.5, 1.5, C)
        self.beta64 = rng.standard_normal(C)
        self.x64_mem, self.dy64_mem = x_host.astype(np.float64), dy_host.astype(np.float64)
        itype = _INT_OF_SIZE[self.dtype.itemsize]
        # (copies, slot) integer buffers, every copy the same values (the statistics then hold
        # for every copy); typed views for CuPy, torch views of the same memory.
        self.raw = {}
        for name, host in (("x", x_host), ("dy", dy_host)):
            buf = cp.empty((self.copies, slot), dtype=itype)
            buf[0, :numel] = cp.asarray(host.reshape(-1).view(itype))
            if self.copies > 1:
                buf[1:] = buf[0]
            self.raw[name] = buf
        del x_host, dy_host
        self.stat = bnref.kernels.stat_dtype(self.dtype)
        self.gamma = cp.asarray(self.gamma64.astype(self.stat))
        self.beta = cp.asarray(self.beta64.astype(self.stat))
        self.x = [self._cupy_view("x", i) for i in range(self.copies)]
        self.dy = [self._cupy_view("dy", i) for i in range(self.copies)]

    def logical(self, a):
        """The (N, C, H, W) view of an array in memory order (NHWC strides when channels-last);
        NumPy, CuPy and torch tensors alike."""
        if not self.channels_last:
            return a
        perm = (0, a.ndim - 1, *range(1, a.ndim - 1))
        return a.permute(*perm) if hasattr(a, "permute") else a.transpose(perm)

    def _cupy_view(self, name, i):
        return self.logical(self.raw[name][i, :self.numel].view(self.dtype).reshape(self.mem_shape))

    def torch_views(self, name, tdtype):
        torch = self.torch
        t = torch.as_tensor(self.raw[name], device="cuda").view(tdtype)
        return [self.logical(t[i, :self.numel].view(self.mem_shape)) for i in range(self.copies)]


def _bnref_fns(case):
    import bnref
    x, dy, g, b = case.x, case.dy, case.gamma, case.beta
    fwd = [lambda xi=xi: bnref.batchnorm_forward(xi, g, b, EPS, axis=1) for xi in x]
    y0, cache0 = fwd[0]()
    caches = [cache0 if i == 0 else replace(cache0, x=xi) for i, xi in enumerate(x)]
    bwd = [lambda dyi=dyi, c=c: bnref.batchnorm_backward(dyi, c) for dyi, c in zip(dy, caches)]
    return {"fwd": fwd, "bwd": bwd}, (y0, cache0)


def torch_backend(torch, x, w, b):
    """What PyTorch runs for training-mode batch norm of x: a dict of what could be learnt."""
    info = {"cudnn_enabled": bool(torch.backends.cudnn.enabled),
            "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    select = getattr(torch._C, "_select_batch_norm_backend", None)
    if select is None:
        info["selected"] = "? (torch._C._select_batch_norm_backend missing)"
    else:
        try:
            info["selected"] = str(select(x, w, b, torch.Tensor(), torch.Tensor(), True, EPS)).split(".")[-1]
        except Exception as exc:                                              # noqa: BLE001
            info["selected"] = f"? ({type(exc).__name__}: {str(exc)[:80]})"
    try:
        idx = torch.ops.aten._batch_norm_impl_index(x, w, b, None, None, True, 0.0, EPS,
                                                    torch.backends.cudnn.enabled)[4]
        info["impl_index"] = int(idx)
    except Exception as exc:                                                  # noqa: BLE001
        info["impl_index"] = None
        info["impl_index_error"] = f"{type(exc).__name__}: {str(exc)[:80]}"
    return info


def _profiled_ops(torch, fns):
    """Batch-norm operator and kernel names a short torch.profiler trace of ``fns`` saw."""
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for fn in fns:
            fn()
        torch.cuda.synchronize()
    names = [e.key for e in prof.key_averages()]
    ops = sorted({n for n in names if n.startswith("aten::") and "batch_norm" in n})
    kernels = sorted({n.split("(")[0][:60] for n in names
                      if not n.startswith("aten::") and ("norm" in n.lower() or "bn_" in n.lower())})
    return ops, kernels[:6]


def direct_fns(torch, xs, dys, w, b, use_cudnn):
    """Per input copy, PyTorch's batch-norm operators called directly (no autograd).

    Returns ({"fwd": [...], "bwd": [...]}, name, (y, (dx, dw, db)) of copy 0). The backward
    uses the saved statistics of copy 0's forward (every copy holds the same values).
    """
    if use_cudnn:
        fwd_op, bwd_op = torch.ops.aten.cudnn_batch_norm, torch.ops.aten.cudnn_batch_norm_backward
        fwd = [lambda x=x: fwd_op(x, w, b, None, None, True, 0.0, EPS) for x in xs]
        y0, mean, invstd, reserve = fwd[0]()
        bwd = [lambda x=x, dy=dy: bwd_op(x, dy, w, None, None, mean, invstd, EPS, reserve)
               for x, dy in zip(xs, dys)]
        name = "cudnn_batch_norm + cudnn_batch_norm_backward"
    else:
        fwd_op, bwd_op = torch.ops.aten.native_batch_norm, torch.ops.aten.native_batch_norm_backward
        fwd = [lambda x=x: fwd_op(x, w, b, None, None, True, 0.0, EPS) for x in xs]
        y0, mean, invstd = fwd[0]()
        bwd = [lambda x=x, dy=dy: bwd_op(dy, x, w, None, None, mean, invstd, True, EPS, [True, True, True])
               for x, dy in zip(xs, dys)]
        name = "native_batch_norm + native_batch_norm_backward"
    return {"fwd": fwd, "bwd": bwd}, name, (y0, tuple(bwd[0]()))


def autograd_fns(torch, F, xs, dys, w, b):
    """Per input copy, F.batch_norm recording the graph and torch.autograd.grad through it.

    Returns ({"fwd": [...], "bwd": [...]}, (y, (dx, dw, db)) of copy 0)."""
    xg = [x.detach().requires_grad_(True) for x in xs]
    wg, bg = w.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)
    fwd = [lambda x=x: F.batch_norm(x, None, None, wg, bg, training=True, eps=EPS) for x in xg]
    ys = [f() for f in fwd]                               # one graph per copy, kept for backward
    bwd = [lambda y=y, x=x, dy=dy: torch.autograd.grad(y, (x, wg, bg), dy, retain_graph=True)
           for y, x, dy in zip(ys, xg, dys)]
    return {"fwd": fwd, "bwd": bwd}, (ys[0], tuple(bwd[0]()))


def _torch_fns(case, torch, F):
    tdt = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[case.dtype_name]
    xs, dys = case.torch_views("x", tdt), case.torch_views("dy", tdt)
    w = torch.as_tensor(case.gamma64, device="cuda", dtype=torch.float32)
    b = torch.as_tensor(case.beta64, device="cuda", dtype=torch.float32)
    info = torch_backend(torch, xs[0], w, b)
    direct, info["direct_ops"], direct_out = direct_fns(torch, xs, dys, w, b, info.get("impl_index") == 1)
    auto, auto_out = autograd_fns(torch, F, xs, dys, w, b)
    try:
        info["profiled_ops"], info["profiled_kernels"] = _profiled_ops(
            torch, [auto["fwd"][0], auto["bwd"][0], direct["fwd"][0], direct["bwd"][0]])
    except Exception as exc:                                                  # noqa: BLE001
        info["profiled_ops"] = [f"profile failed: {type(exc).__name__}: {str(exc)[:80]}"]
    return direct, auto, info, {"direct": direct_out, "autograd": auto_out}


def _errors(case, bn_out, torch_results):
    """Relative max errors against a float64 reference, per implementation and pass."""
    cp, torch = case.cp, case.torch
    (y, cache), (dx, dg, db) = bn_out
    x64, dy64 = case.logical(case.x64_mem), case.logical(case.dy64_mem)
    if torch is not None:
        xt = torch.as_tensor(np.ascontiguousarray(x64), device="cuda").requires_grad_(True)
        wt = torch.as_tensor(case.gamma64, device="cuda").requires_grad_(True)
        bt = torch.as_tensor(case.beta64, device="cuda").requires_grad_(True)
        yt = torch.nn.functional.batch_norm(xt, None, None, wt, bt, training=True, eps=EPS)
        refs = torch.autograd.grad(yt, (xt, wt, bt), torch.as_tensor(np.ascontiguousarray(dy64), device="cuda"))
        y_ref = yt.detach().cpu().numpy()
        dx_ref, dg_ref, db_ref = (r.cpu().numpy() for r in refs)
        del xt, yt, refs
    else:
        from bnref.kernels import numpy_bn
        C = case.shape[1]
        x3 = np.moveaxis(x64, 1, -1).reshape(-1, C, 1)          # (N*H*W, C, 1): any layout
        dy3 = np.moveaxis(dy64, 1, -1).reshape(-1, C, 1)
        y3, mean, _, inv_std = numpy_bn.bn_forward_train(x3, case.gamma64, case.beta64, EPS)
        dx3, dg_ref, db_ref = numpy_bn.bn_backward(dy3, x3, mean, inv_std, case.gamma64)
        back = lambda a3: np.moveaxis(a3.reshape(np.moveaxis(x64, 1, -1).shape), -1, 1)  # noqa: E731
        y_ref, dx_ref = back(y3), back(dx3)
    h = lambda a, dt=case.dtype: _host64(cp, a, dt)                      # noqa: E731
    errs = {"bnref": {"fwd": _rel_err(h(y), y_ref),
                      "bwd": max(_rel_err(h(dx), dx_ref), _rel_err(h(dg, case.stat), dg_ref),
                                 _rel_err(h(db, case.stat), db_ref))}}
    for name, (yt_, (dxt, dgt, dbt)) in (torch_results or {}).items():
        t64 = lambda t: t.detach().double().cpu().numpy()               # noqa: E731
        errs[name] = {"fwd": _rel_err(t64(yt_), y_ref),
                      "bwd": max(_rel_err(t64(dxt), dx_ref), _rel_err(t64(dgt), dg_ref),
                                 _rel_err(t64(dbt), db_ref))}
    return errs


def measure_case(cp, torch, F, shape, channels_last, dtype_name, opts, l2_bytes, log=print):
    """Every timing of one case: a list of two rows (forward, backward)."""
    case = Case(cp, torch, shape, channels_last, dtype_name, l2_bytes, opts.l2_factor)
    tl = CupyTimeline(cp)
    flush_buf = cp.ones(max(1, 2 * l2_bytes // 4), dtype=cp.int32)
    flush_out = cp.empty((), dtype=cp.int64)
    flush = lambda: cp.sum(flush_buf, dtype=cp.int64, out=flush_out)      # noqa: E731  (reads 2 x L2)
    impls = {}
    impls["bnref"], bn_first = _bnref_fns(case)
    bn_out = (bn_first, impls["bnref"]["bwd"][0]())
    backend, torch_results, notes = None, None, []
    if not case.covers_l2:
        notes.append(f"{shape} {case.layout} {dtype_name}: {case.copies} copies (the most) read "
                     f"{case.copies * case.nbytes / 1e6:.0f} MB between uses, under "
                     f"{opts.l2_factor:g} x L2: inputs may partly come from L2")
    if torch is not None:
        impls["torch direct"], impls["torch autograd"], backend, torch_results = _torch_fns(case, torch, F)
    nb = case.nbytes
    copy_dst = cp.empty(case.numel, dtype=_INT_OF_SIZE[case.dtype.itemsize])
    xraw = case.raw["x"]
    copy_fns = [lambda i=i: _device_copy(copy_dst, xraw[i], nb) for i in range(case.copies)]
    errs = _errors(case, bn_out, torch_results)
    del bn_out, torch_results
    cp.cuda.Device().synchronize()

    def timings(fns, graph_kind):
        fn = rotating(fns)
        t = {}
        lat = api_latency(tl, fn, opts.calls, opts.repeat, opts.warmup)
        t["api"] = summarize(lat)
        gc.disable()
        try:
            q, limited = gpu_time_queued(tl, fn, opts.calls, opts.repeat, opts.warmup,
                                         spin_for(t["api"]["median"], opts.calls))
        finally:
            gc.enable()
        t["gpu"], t["host_limited"] = summarize(q), limited
        if graph_kind and not opts.no_graph:
            try:
                if graph_kind == "cupy":
                    g = graph_time_cupy(cp, CupyTimeline, fns, opts.graph_calls, opts.repeat, flush)
                else:
                    g = graph_time_torch(torch, tl, fns, opts.graph_calls, opts.repeat, flush)
                t["graph"] = summarize(g)
            except Exception as exc:                                          # noqa: BLE001
                t["graph_error"] = f"{type(exc).__name__}: {str(exc)[:120]}"
                cp.cuda.Device().synchronize()
        return t

    copy_t = timings(copy_fns, "cupy")
    copy_t.pop("api")
    rows = []
    for pas in PASSES:
        r = {"shape": list(shape), "layout": case.layout, "dtype": dtype_name, "pass": pas,
             "bytes": nb, "copies": case.copies, "working_set_bytes": case.copies * nb,
             "covers_l2": case.covers_l2, "backend": backend, "copy": copy_t,
             "errors": {k: v[pas] for k, v in errs.items()}, "t": {}}
        for label, fns in impls.items():
            kind = None if label == "torch autograd" else ("cupy" if label == "bnref" else "torch")
            r["t"][label] = timings(fns[pas], kind)
        finish_row(r)
        rows.append(r)
        log(table_row(r), flush=True)
    del impls, case, flush_buf, copy_fns
    cp.get_default_memory_pool().free_all_blocks()
    if torch is not None:
        torch.cuda.empty_cache()
    return rows, notes


def finish_row(r):
    """Ratios, bandwidth fraction and verdicts of a row (from medians)."""
    med = lambda label, key="gpu": (r["t"].get(label, {}).get(key) or {}).get("median")   # noqa: E731
    b_gpu, t_gpu = med("bnref"), med("torch direct")
    copy_ms = (r["copy"].get("gpu") or {}).get("median")
    r["gpu_ratio"] = ratio(b_gpu, t_gpu)
    r["gpu_ratio_autograd"] = ratio(b_gpu, med("torch autograd"))
    r["api_ratio"] = ratio(med("bnref", "api"), med("torch direct", "api"))
    r["api_ratio_autograd"] = ratio(med("bnref", "api"), med("torch autograd", "api"))
    r["copy_gbps"] = bandwidth_gbps(2 * r["bytes"], copy_ms) if copy_ms else None
    r["bnref_gbps"] = bandwidth_gbps(min_traffic(r["pass"], r["bytes"]), b_gpu) if b_gpu else None
    r["copy_fraction"] = (copy_fraction(r["pass"], r["bytes"], b_gpu, copy_ms)
                          if b_gpu and copy_ms else None)
    r["verdicts"] = verdicts(r["bytes"], r["gpu_ratio"], r["copy_fraction"], r["api_ratio"])
    return r


HEADER = ("| shape | layout | dtype | pass | MB | PyTorch direct op | bnref GPU us | PyTorch GPU us | "
          "GPU bnref/PyTorch | bnref API us | PyTorch API us | API bnref/PyTorch | copy GB/s | "
          "bnref % of copy | goals |")


def table_row(r):
    t = r["t"]
    tb = t.get("torch direct", {})
    op = "n/a"
    if r.get("backend"):
        op = r["backend"].get("direct_ops", "?").split(" + ")[0]
    return (f"| {tuple(r['shape'])} | {r['layout']} | {r['dtype']} | {r['pass']} | "
            f"{r['bytes'] / 1e6:.3g} | {op} | {fmt_stat(t['bnref'].get('gpu'))} | "
            f"{fmt_stat(tb.get('gpu'))} | {fmt(r['gpu_ratio'], '.2f')} | "
            f"{fmt_stat(t['bnref'].get('api'))} | {fmt_stat(tb.get('api'))} | "
            f"{fmt(r['api_ratio'], '.2f')} | {fmt(r['copy_gbps'], '.0f')} | "
            f"{fmt(None if r['copy_fraction'] is None else 100 * r['copy_fraction'], '.0f')}% | "
            f"{verdict_text(r['verdicts'])} |")


DETAIL_HEADER = ("| shape | layout | dtype | pass | copies (working set MB) | impl | GPU us queued | "
                 "host-limited batches | graph us | API us | max rel err |")


def detail_rows(r):
    out = []
    ws = f"{r['copies']} ({r['working_set_bytes'] / 1e6:.1f}{'' if r['covers_l2'] else ', < L2 target'})"
    for label, t in [*r["t"].items(), ("copy", r["copy"])]:
        graph = fmt_stat(t.get("graph")) if "graph" in t else (
            f"no graph: {t['graph_error']}" if "graph_error" in t else "not captured")
        err = r["errors"].get(label.replace("torch ", ""), r["errors"].get(label))
        out.append(f"| {tuple(r['shape'])} | {r['layout']} | {r['dtype']} | {r['pass']} | {ws} | {label} | "
                   f"{fmt_stat(t.get('gpu'))} | {t.get('host_limited', 'n/a')} | {graph} | "
                   f"{fmt_stat(t.get('api'))} | {fmt(err, '.2e')} |")
    return out


def render(rows, meta):
    """The Markdown report: how it was measured, the verdict table, the details."""
    o = overall(rows)
    backends = sorted({(r["layout"], r["dtype"], r["backend"].get("selected"), r["backend"].get("impl_index"),
                        ", ".join(r["backend"].get("profiled_ops", [])))
                       for r in rows if r.get("backend")}, key=str)
    lines = [
        f"# GPU benchmark: bnref (CuPy) vs PyTorch, {', '.join(meta['dtypes'])}", "",
        f"- date: {meta['date']}", f"- device: {meta['device']}, L2 {meta['l2_bytes'] / 2**20:.0f} MiB",
        f"- {meta['versions']}",
        f"- GPU time: {meta['calls']} calls queued back to back behind a spin kernel, between one "
        "CUDA event pair, divided by the calls; graph: CUDA-graph replay of "
        f"{meta['graph_calls']} calls (L2 read-flushed before each replay); "
        f"median [min-max] over {meta['repeat']} batches, in us",
        f"- API latency: host wall time of {meta['calls']} calls, device synchronised after the "
        "batch only; us per call",
        f"- inputs rotated through copies so that >= {meta['l2_factor']:g} x L2 of other data is read "
        "between two uses of one copy; copy bandwidth: device-to-device copy of x at its own size, "
        "rotated the same way (read + write)",
        "- PyTorch columns: the direct operator PyTorch dispatches to (no autograd); autograd in "
        "the details table",
        "- bnref % of copy: minimal traffic (fwd 2|x|, bwd 3|x|) / bnref GPU time, over copy GB/s",
        f"- goals (issue 13; medians; against PyTorch's direct operator, no autograd engine in its time): "
        f"GPU <= {GOAL_GPU_RATIO}x PyTorch on every shape: "
        f"{o['gpu'][0]} met, {o['gpu'][1]} missed, {o['gpu'][2]} not measured; "
        f">= {GOAL_COPY_FRACTION:.0%} of copy bandwidth at >= 25 MB: {o['bandwidth'][0]} met, "
        f"{o['bandwidth'][1]} missed, {o['bandwidth'][2]} not measured; API <= {GOAL_API_RATIO}x "
        f"PyTorch: {o['api'][0]} met, {o['api'][1]} missed, {o['api'][2]} not measured",
    ]
    for layout, dt, sel, idx, ops in backends:
        lines.append(f"- PyTorch backend, {layout} {dt}: selected {sel}, impl index {idx}; profiled: {ops}")
    lines += [f"- {n}" for n in meta.get("notes", [])]
    lines += ["", HEADER, "|" + " --- |" * (HEADER.count("|") - 1)]
    lines += [table_row(r) for r in rows]
    lines += ["", DETAIL_HEADER, "|" + " --- |" * (DETAIL_HEADER.count("|") - 1)]
    for r in rows:
        lines += detail_rows(r)
    return "\n".join(lines) + "\n"


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dtype", nargs="+", default=list(DTYPES), choices=list(DTYPES),
                   help="one or more dtypes (default: all three)")
    p.add_argument("--calls", type=int, default=20, help="calls per timed batch (default %(default)s)")
    p.add_argument("--repeat", type=int, default=15, help="timed batches: min/median/max over them (default %(default)s)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls before each timing (default %(default)s)")
    p.add_argument("--graph-calls", type=int, default=20, help="calls captured in one CUDA graph (default %(default)s)")
    p.add_argument("--no-graph", action="store_true", help="skip the CUDA-graph replay timings")
    p.add_argument("--l2-factor", type=float, default=L2_FACTOR,
                   help="other data read between two uses of one input copy, in L2 sizes (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="skip the two largest shapes")
    p.add_argument("--layout", choices=["all", "NCHW", "NHWC"], default="all",
                   help="4-D layouts to run (2-D shapes always run as (N, C))")
    p.add_argument("--out", default=None, help="write the Markdown report here (default: print only)")
    p.add_argument("--json", default=None, help="write every measurement as JSON here")
    p.add_argument("--require-gpu", action="store_true", help="exit 1 (not 0) without a GPU")
    return p


def _check_args(p, args):
    for name in ("calls", "repeat", "graph_calls"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: {getattr(args, name)}; expected >= 1")
    if args.warmup < 0:
        p.error(f"--warmup: {args.warmup}; expected >= 0")
    if not args.l2_factor > 0:
        p.error(f"--l2-factor: {args.l2_factor}; expected > 0")


def cases(args):
    for dt in args.dtype:
        for shape in (QUICK if args.quick else SHAPES):
            layouts = (False,) if len(shape) == 2 else (
                (False, True) if args.layout == "all" else (args.layout == "NHWC",))
            for cl in layouts:
                yield shape, cl, dt


def measure_all(cp, args):
    """Run every case; returns (rows, meta)."""
    torch, F, why = _torch()
    dev = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    l2 = int(dev.attributes["L2CacheSize"])
    versions = f"CuPy {cp.__version__}, " + (
        f"PyTorch {torch.__version__}, cuDNN {torch.backends.cudnn.version()} "
        f"(enabled: {torch.backends.cudnn.enabled})" if torch is not None else f"{why}: PyTorch columns n/a")
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "device": name, "l2_bytes": l2, "versions": versions, "dtypes": args.dtype,
            "calls": args.calls, "repeat": args.repeat, "graph_calls": args.graph_calls,
            "l2_factor": args.l2_factor, "notes": []}
    print(f"bench_gpu: {name}, L2 {l2 / 2**20:.0f} MiB; {versions}", flush=True)
    print(HEADER)
    print("|" + " --- |" * (HEADER.count("|") - 1), flush=True)
    rows = []
    for shape, cl, dt in cases(args):
        try:
            _np_dtype(dt)
            got, notes = measure_case(cp, torch, F, shape, cl, dt, args, l2)
            rows += got
            meta["notes"] += notes
        except Exception as exc:                                              # noqa: BLE001
            msg = f"{shape} {'NHWC' if cl else 'NCHW/NC'} {dt}: not measured ({type(exc).__name__}: {str(exc)[:160]})"
            print(f"bench_gpu: {msg}", flush=True)
            meta["notes"].append(msg)
            cp.get_default_memory_pool().free_all_blocks()
    return rows, meta


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    _check_args(p, args)
    cp = _gpu_or_exit(args.require_gpu)
    rows, meta = measure_all(cp, args)
    text = render(rows, meta)
    print("\n" + text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
        print(f"wrote {args.json}")
    if not rows:
        print("bench_gpu: no case was measured", file=sys.stderr)
        return 1 if args.require_gpu else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
