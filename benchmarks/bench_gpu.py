"""GPU benchmark: bnref's CuPy BatchNorm against PyTorch (cuDNN) on the same device.

For every shape and layout, forward (training mode) and backward:

* bnref ms: median over ``--repeat`` calls of the public API (``bnref.batchnorm_forward`` /
  ``batchnorm_backward`` on CuPy arrays), timed with CUDA events;
* PyTorch ms: ``torch.nn.functional.batch_norm`` (training=True, cuDNN where PyTorch picks it)
  and its autograd backward (``torch.autograd.grad``), timed the same way;
* ratio: PyTorch ms / bnref ms (> 1: bnref is faster);
* GB/s: the minimal traffic (forward 2|x|: read x, write y; backward 3|x|: read dy and x,
  write dx) divided by bnref's time, and its fraction of a device-to-device copy measured
  in the same run (``cupy`` array copy: read + write);
* max error: max |result - reference| / max |reference| for y (forward) and dx, dgamma,
  dbeta (backward), against float64 computed in the same run (PyTorch in float64 on the
  GPU; bnref's NumPy kernels on the CPU when PyTorch is missing), for bnref and PyTorch.

Usage::

    python benchmarks/bench_gpu.py                      # float32, all shapes, both layouts
    python benchmarks/bench_gpu.py --dtype float16 --repeat 50
    python benchmarks/bench_gpu.py --quick              # small shapes only

Prints a Markdown table and writes ``benchmarks/results/gpu.md`` (``--out``) with the date
and the device. Exits with a message (status 0, or 1 with ``--require-gpu``) when CuPy cannot
see a GPU.
"""
import argparse
import datetime
import statistics
import sys
from pathlib import Path

import numpy as np

SHAPES = [(4096, 1024), (32, 64, 56, 56), (8, 256, 28, 28), (64, 128),
          (256, 64, 112, 112), (65536, 256)]
QUICK = [(4096, 1024), (32, 64, 56, 56), (8, 256, 28, 28), (64, 128)]
EPS = 1e-5


def _gpu_or_exit(require):
    try:
        import cupy as cp
        if cp.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("CuPy sees 0 CUDA devices")
        return cp
    except Exception as exc:  # ImportError, missing driver, no device
        print(f"bench_gpu: no GPU benchmark: CuPy cannot use a CUDA device ({type(exc).__name__}: {exc}).\n"
              "Run this on a machine with an NVIDIA GPU, CuPy and PyTorch installed.",
              file=sys.stderr)
        sys.exit(1 if require else 0)


def _median_ms(cp, fn, repeat, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end))
    return statistics.median(times)


def _copy_gbps(cp, nbytes=1 << 30, repeat=20):
    """Device-to-device copy bandwidth, counting the read and the write."""
    src = cp.ones(nbytes // 4, dtype=cp.float32)
    dst = cp.empty_like(src)
    ms = _median_ms(cp, lambda: dst.__setitem__(Ellipsis, src), repeat, 3)
    return 2 * src.nbytes / (ms * 1e-3) / 1e9


def _err(got, ref):
    got = np.asarray(got, dtype=np.float64)
    return float(np.max(np.abs(got - ref)) / max(np.max(np.abs(ref)), 1e-30))


def _torch():
    try:
        import torch
        import torch.nn.functional as F
        if not torch.cuda.is_available():
            return None, None
        torch.backends.cudnn.enabled = True
        return torch, F
    except ImportError:
        return None, None


def _host(cp, a):
    """float64 NumPy copy of a CuPy array (16-bit types via float32)."""
    if a.dtype.itemsize < 4:
        a = a.astype(cp.float32)
    return cp.asnumpy(a).astype(np.float64)


def bench_case(cp, torch, F, shape, channels_last, dtype, repeat, warmup):
    """One shape and layout: returns two table rows (forward, backward)."""
    import bnref

    rng = np.random.default_rng(0)
    C = shape[1]
    # Logical (N, C, ...) values; channels-last moves C to the end in memory.
    x_logical = rng.standard_normal(shape, dtype=np.float32) * 2 + 0.5
    dy_logical = rng.standard_normal(shape, dtype=np.float32)
    gamma64 = rng.uniform(0.5, 1.5, C)
    beta64 = rng.standard_normal(C)
    if channels_last:
        perm = (0,) + tuple(range(2, len(shape))) + (1,)
        x_mem, dy_mem, axis = x_logical.transpose(perm), dy_logical.transpose(perm), -1
    else:
        x_mem, dy_mem, axis = x_logical, dy_logical, 1
    x = cp.asarray(np.ascontiguousarray(x_mem)).astype(dtype)
    dy = cp.asarray(np.ascontiguousarray(dy_mem)).astype(dtype)
    stat = cp.float32 if np.dtype(dtype).itemsize < 4 else dtype
    gamma, beta = cp.asarray(gamma64, dtype=stat), cp.asarray(beta64, dtype=stat)
    del x_logical, dy_logical, x_mem, dy_mem

    out = {}
    fwd = lambda: bnref.batchnorm_forward(x, gamma, beta, EPS, axis=axis)   # noqa: E731
    out["b_fwd"] = _median_ms(cp, fwd, repeat, warmup)
    y, cache = fwd()
    bwd = lambda: bnref.batchnorm_backward(dy, cache)                        # noqa: E731
    out["b_bwd"] = _median_ms(cp, bwd, repeat, warmup)
    dx, dgamma, dbeta = bwd()

    # float64 reference from the same (rounded) inputs; results moved to the host in the
    # kernels' memory layout.
    if torch is not None:
        tdt = {"float16": torch.float16, "bfloat16": torch.bfloat16,
               "float32": torch.float32, "float64": torch.float64}[np.dtype(dtype).name]

        def to_torch(a, dt):  # CuPy (memory layout) -> torch logical (N, C, ...) view
            t = torch.as_tensor(a.astype(cp.float32) if a.dtype.itemsize < 4 else a,
                                device="cuda").to(dt)
            if channels_last:
                t = t.permute(0, len(shape) - 1, *range(1, len(shape) - 1))
            return t

        fmt = torch.channels_last if channels_last and len(shape) == 4 else torch.contiguous_format
        xt = to_torch(x, tdt).contiguous(memory_format=fmt).requires_grad_(True)
        dyt = to_torch(dy, tdt).contiguous(memory_format=fmt)
        wdt = torch.float64 if tdt == torch.float64 else torch.float32   # statistics dtype
        wt = torch.as_tensor(gamma64, device="cuda", dtype=wdt).requires_grad_(True)
        bt = torch.as_tensor(beta64, device="cuda", dtype=wt.dtype).requires_grad_(True)
        t_fwd = lambda: F.batch_norm(xt, None, None, wt, bt, training=True, eps=EPS)   # noqa: E731
        out["t_fwd"] = _time_torch(torch, t_fwd, repeat, warmup)
        yt = t_fwd()
        t_bwd = lambda: torch.autograd.grad(yt, (xt, wt, bt), dyt, retain_graph=True)  # noqa: E731
        out["t_bwd"] = _time_torch(torch, t_bwd, repeat, warmup)
        dxt, dwt, dbt = t_bwd()

        x64 = to_torch(x, torch.float64).contiguous().requires_grad_(True)
        w64 = torch.as_tensor(gamma64, device="cuda").requires_grad_(True)
        b64 = torch.as_tensor(beta64, device="cuda").requires_grad_(True)
        y64 = F.batch_norm(x64, None, None, w64, b64, training=True, eps=EPS)
        dx64, dw64, db64 = torch.autograd.grad(y64, (x64, w64, b64), to_torch(dy, torch.float64))

        def ref(t):  # torch logical -> NumPy in bnref's memory layout
            if channels_last and t.ndim > 2:
                t = t.permute(0, *range(2, t.ndim), 1)
            return t.detach().contiguous().cpu().numpy().astype(np.float64)

        y_ref, dx_ref, dg_ref, db_ref = ref(y64), ref(dx64), ref(dw64), ref(db64)
        out["t_err_fwd"] = _err(ref(yt.float()), y_ref)
        out["t_err_bwd"] = max(_err(ref(dxt.float()), dx_ref), _err(ref(dwt.float()), dg_ref),
                               _err(ref(dbt.float()), db_ref))
        del xt, dyt, yt, dxt, x64, y64, dx64
    else:
        from bnref.kernels import numpy_bn
        x3 = _host(cp, x).reshape(_acb(x.shape, axis))
        dy3 = _host(cp, dy).reshape(x3.shape)
        y3, mean, _, inv_std = numpy_bn.bn_forward_train(x3, gamma64, beta64, EPS)
        dx3, dg_ref, db_ref = numpy_bn.bn_backward(dy3, x3, mean, inv_std, gamma64)
        y_ref, dx_ref = y3.reshape(x.shape), dx3.reshape(x.shape)
    out["b_err_fwd"] = _err(_host(cp, y), y_ref)
    out["b_err_bwd"] = max(_err(_host(cp, dx), dx_ref), _err(_host(cp, dgamma), dg_ref),
                           _err(_host(cp, dbeta), db_ref))
    out["nbytes"] = x.nbytes
    return out


def _acb(shape, axis):
    axis = axis % len(shape)
    return (int(np.prod(shape[:axis])), shape[axis], int(np.prod(shape[axis + 1:])))


def _time_torch(torch, fn, repeat, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dtype", default="float32", choices=["float16", "bfloat16", "float32", "float64"])
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="skip the two largest shapes")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "gpu.md"))
    p.add_argument("--require-gpu", action="store_true", help="exit 1 (not 0) without a GPU")
    args = p.parse_args(argv)

    cp = _gpu_or_exit(args.require_gpu)
    dtype = np.dtype(args.dtype) if args.dtype != "bfloat16" else _bfloat16()
    torch, F = _torch()
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    device = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    copy = _copy_gbps(cp)

    header = ("| shape | layout | pass | bnref ms | PyTorch ms | ratio (PyTorch/bnref) | "
              "bnref GB/s | % of copy | bnref max err | PyTorch max err |")
    lines = [header, "|" + " --- |" * 10]
    for shape in (QUICK if args.quick else SHAPES):
        for channels_last in ((False,) if len(shape) == 2 else (False, True)):
            layout = "(N, C)" if len(shape) == 2 else ("NHWC" if channels_last else "NCHW")
            r = bench_case(cp, torch, F, shape, channels_last, dtype, args.repeat, args.warmup)
            for pas, nbytes in (("fwd", 2 * r["nbytes"]), ("bwd", 3 * r["nbytes"])):
                ms, tms = r[f"b_{pas}"], r.get(f"t_{pas}")
                gbps = nbytes / (ms * 1e-3) / 1e9
                terr = r.get(f"t_err_{pas}")
                lines.append(
                    f"| {shape} | {layout} | {pas} | {ms:.3f} | "
                    f"{'n/a' if tms is None else f'{tms:.3f}'} | "
                    f"{'n/a' if tms is None else f'{tms / ms:.2f}'} | {gbps:.0f} | "
                    f"{100 * gbps / copy:.0f}% | {r[f'b_err_{pas}']:.2e} | "
                    f"{'n/a' if terr is None else f'{terr:.2e}'} |")
            print(lines[-2], lines[-1], sep="\n", flush=True)

    import cupy
    versions = f"CuPy {cupy.__version__}, " + (
        f"PyTorch {torch.__version__} (cuDNN {torch.backends.cudnn.version()})"
        if torch is not None else "PyTorch not installed")
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = "\n".join([
        f"# GPU benchmark: bnref (CuPy) vs PyTorch, {args.dtype}", "",
        f"- date: {now}", f"- device: {device}", f"- {versions}",
        f"- device-to-device copy bandwidth (read + write), same run: {copy:.0f} GB/s",
        f"- median of {args.repeat} calls after {args.warmup} warm-up calls, CUDA events; "
        "public API calls (validation included)",
        "- GB/s counts the minimal traffic: forward 2|x|, backward 3|x|",
        "- max err: max |result - float64 reference| / max |reference| "
        "(backward: worst of dx, dgamma, dbeta)", "",
        *lines, ""])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"\nwrote {out}")


def _bfloat16():
    import ml_dtypes
    return np.dtype(ml_dtypes.bfloat16)


if __name__ == "__main__":
    main()
