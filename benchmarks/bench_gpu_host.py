"""Host cost of the GPU path: bnref's Python work per call, with every kernel launch stubbed.

On the GPU the small and medium shapes are bound by what the host does per call (argument
checks, views, plans, scratch allocations, kernel look-ups and launches), not by the device.
This measures that part on any machine, for BatchNorm (forward, backward and the layer's
training call in three layouts) and for LayerNorm and GroupNorm (forward, backward): CuPy is replaced by the CPU stand-in of
``tests/test_gpu_emulator.py`` whose kernels return at once, so a call costs exactly bnref's
Python work plus the stand-in's NumPy array creation (which real CuPy pays as pool
allocations). Not counted: CuPy's own cost per launch (its RawKernel call, argument packing,
cuLaunchKernel; microseconds each on a GPU, not measured here), so that each BatchNorm pass
now launches twice instead of three times does not show in this table. For scale it times,
in the same run, a call of PyTorch's CPU
``F.batch_norm`` on a tiny tensor (the framework overhead a PyTorch user already pays) and
an empty Python function call.

    python benchmarks/bench_gpu_host.py [--rounds 2000] [--clock process]

``--clock process`` counts this process's CPU time instead of wall time: on a shared,
loaded machine (other jobs on the same cores) wall time includes the time the scheduler gave
to others, CPU time does not.

Targets (issue 13): <= 25 us per forward and <= 20 us per backward on the 2-core course
machine. "layer train fwd" is a training-mode call of ``bnref.BatchNorm`` (forward and
running-statistics update) with float32 statistics. Prints a Markdown table; writes benchmarks/results/gpu_host.md only with --write.
"""
import argparse
import datetime
import os
import platform
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
SHAPES = [((64, 128), 1, "NC"), ((32, 64, 56, 56), 1, "NCHW"), ((32, 56, 56, 64), -1, "NHWC")]


def stubbed_cupy():
    """The emulator's fake CuPy with kernels that do nothing, installed as ``cupy``."""
    import test_gpu_emulator as emu
    from bnref.kernels import cupy_bn

    class _NoKernel:
        kernel = types.SimpleNamespace(ptr=0)        # for the occupancy query (the stand-in answers)

        def __call__(self, grid, block, args):
            return None

    cp = emu.FAKE_CUPY
    sys.modules["cupy"] = cp
    cupy_bn.clear_cache()               # plans hold kernel handles: made again, with the stubs
    cupy_bn._cupy = lambda: cp
    cupy_bn._kernel = lambda name, expression: _NoKernel()
    return cp




def _params(cp, shape):
    return cp.asarray(np.ones(shape, np.float32)), cp.asarray(np.zeros(shape, np.float32))


# (layout label, shape, forward(bnref, cp, x) -> a call returning (y, cache), backward)
NORMS = [
    ("LayerNorm", (64, 128),
     lambda bn, cp, x: (lambda g, b: lambda: bn.layernorm_forward(x, g, b))(*_params(cp, x.shape[1:])),
     lambda bn, x, cache: bn.layernorm_backward(x, cache)),
    ("GroupNorm G=8", (32, 64, 56, 56),
     lambda bn, cp, x: (lambda g, b: lambda: bn.groupnorm_forward(x, g, b, num_groups=8))(*_params(cp, x.shape[1])),
     lambda bn, x, cache: bn.groupnorm_backward(x, cache)),
]
CLOCK = time.perf_counter


def per_call_us(fn, rounds):
    """Median over 7 batches of ``rounds`` calls, in microseconds per call."""
    fn()
    batches = []
    for _ in range(7):
        t0 = CLOCK()
        for _ in range(rounds):
            fn()
        batches.append((CLOCK() - t0) / rounds * 1e6)
    return statistics.median(batches), min(batches), max(batches)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument("--write", action="store_true", help="also write benchmarks/results/gpu_host.md")
    ap.add_argument("--clock", choices=("wall", "process"), default="wall",
                    help="wall time (perf_counter, default) or this process's CPU time (process_time)")
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "process" else time.perf_counter

    import bnref
    cp = stubbed_cupy()
    rows = ["| shape | layout | pass | bnref us (median) | min | max | vs torch CPU call |", "|---" * 7 + "|"]
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(1)
    tiny = torch.zeros(2, 2)
    torch_us = per_call_us(lambda: F.batch_norm(tiny, None, None, training=True), args.rounds)[0]
    empty_us = per_call_us(lambda: None, args.rounds)[0]
    for shape, axis, layout in SHAPES:
        C = shape[axis]
        # the stand-in's arrays hold no data here: the kernels are stubs, only shapes matter
        x = cp.asarray(np.zeros(shape, np.float32))
        g, b = cp.asarray(np.ones(C, np.float32)), cp.asarray(np.zeros(C, np.float32))
        y, cache = bnref.batchnorm_forward(x, g, b, axis=axis)
        fwd = per_call_us(lambda: bnref.batchnorm_forward(x, g, b, axis=axis), args.rounds)
        bwd = per_call_us(lambda: bnref.batchnorm_backward(x, cache), args.rounds)
        # a training step of the layer: the forward plus the running statistics' update
        # (float32 statistics, as x: on the GPU path the statistics kernel does the update)
        layer = bnref.BatchNorm(C, axis=axis, dtype=np.float32)
        layer.gamma, layer.beta = g, b
        layer.running_mean = cp.asarray(np.zeros(C, np.float32))
        layer.running_var = cp.asarray(np.ones(C, np.float32))
        step = per_call_us(lambda: layer(x), args.rounds)
        for name, (med, lo, hi) in (("fwd", fwd), ("bwd", bwd), ("layer train fwd", step)):
            rows.append(f"| {shape} | {layout} | {name} | {med:.1f} | {lo:.1f} | {hi:.1f} | {med / torch_us:.2f} |")
        print(*rows[-3:], sep="\n", flush=True)
    # LayerNorm over the features of (N, D) rows and GroupNorm of an (N, C, H, W) activation
    for name, shape, fwd_fn, bwd_fn in NORMS:
        x = cp.asarray(np.zeros(shape, np.float32))
        forward = fwd_fn(bnref, cp, x)
        _, cache = forward()
        timed = (("fwd", per_call_us(forward, args.rounds)),
                 ("bwd", per_call_us(lambda: bwd_fn(bnref, x, cache), args.rounds)))
        for pass_, (med, lo, hi) in timed:
            rows.append(f"| {shape} | {name} | {pass_} | {med:.1f} | {lo:.1f} | {hi:.1f} | {med / torch_us:.2f} |")
        print(*rows[-2:], sep="\n", flush=True)
    meta = (f"Measured {datetime.date.today()} on {platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}; {args.clock} clock; kernels stubbed, CuPy replaced by the emulator's NumPy stand-in; "
            f"medians (min, max) of 7 batches of {args.rounds} calls. Same run: PyTorch CPU "
            f"F.batch_norm on a 2x2 tensor {torch_us:.1f} us, an empty Python call {empty_us:.2f} us.")
    table = "\n".join(rows)
    print(f"\n{meta}\n\n{table}")
    if args.write:
        out = ROOT / "benchmarks" / "results" / "gpu_host.md"
        out.write_text(f"# GPU path: host cost per call, launches stubbed\n\n{meta}\n\n{table}\n")
        print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
