"""CPU benchmark: bnref's BatchNorm (NumPy and Numba kernels) against PyTorch, float32.

For every shape and layout it times the training-mode forward and the backward of bnref and
of PyTorch (``F.batch_norm`` + autograd) with 1 and with 2 threads, in the same process,
interleaved (one call of each per round, so machine noise hits all alike), and reports medians
over >= 9 rounds after warm-up. Effective bandwidth counts the minimal bytes (forward reads x
and writes y: 2|x|; backward reads x and dy and writes dx: 3|x|) and is compared with a copy
bandwidth (``np.copyto``, read + write) measured in the same run.

    python benchmarks/bench_cpu.py [--rounds 15] [--quick]

Prints a Markdown table and writes it to benchmarks/results/cpu.md.
"""
import argparse
import datetime
import os
import platform
import time
from pathlib import Path

# The libraries' OpenMP thread pools (PyTorch's, Numba's, OpenBLAS's) take turns here; with
# the default spin-waiting, the idle pool of one steals the cores of the next one's threads
# (on 2 cores that doubles some timings). Passive waiting treats every library alike.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numba  # noqa: E402  (after the environment is set)
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import bnref  # noqa: E402

SHAPES = [((4096, 1024), "NC"), ((32, 64, 56, 56), "NCHW"), ((32, 56, 56, 64), "NHWC"),
          ((8, 256, 28, 28), "NCHW"), ((8, 28, 28, 256), "NHWC"), ((64, 128), "NC")]


def copy_bandwidth(nbytes=256 * 2**20, rounds=9):
    """GB/s of a large float32 copy (read + write), median of ``rounds``."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    ts = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        ts.append(time.perf_counter() - t0)
    return 2 * nbytes / np.median(ts) / 1e9


def set_threads(n):
    torch.set_num_threads(n)
    numba.set_num_threads(n)


def bench_case(shape, layout, threads, rounds):
    rng = np.random.default_rng(0)
    axis = -1 if layout == "NHWC" else 1
    C = shape[axis]
    x = rng.normal(1.0, 2.0, size=shape).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    gamma, beta = rng.normal(size=C).astype(np.float32), rng.normal(size=C).astype(np.float32)

    # PyTorch on the same memory; NHWC is a channels_last tensor, as PyTorch users would run it.
    to_t = (lambda a: torch.from_numpy(a).permute(0, 3, 1, 2)) if layout == "NHWC" else torch.from_numpy
    xt, dyt = to_t(x).requires_grad_(True), to_t(dy)
    gt, bt = torch.from_numpy(gamma).requires_grad_(True), torch.from_numpy(beta).requires_grad_(True)

    def torch_fwd():
        return F.batch_norm(xt, None, None, gt, bt, training=True, eps=1e-5)

    yt = torch_fwd()

    def torch_bwd():                     # the autograd backward of one saved graph
        torch.autograd.grad(yt, (xt, gt, bt), dyt, retain_graph=True)

    fns = {}
    for k in ("numpy", "numba"):
        def fwd(k=k):
            bnref.set_cpu_kernels(k)
            return bnref.batchnorm_forward(x, gamma, beta, axis=axis)
        cache = fwd()[1]

        def bwd(k=k, cache=cache):
            bnref.set_cpu_kernels(k)
            return bnref.batchnorm_backward(dy, cache)
        fns[f"{k}_fwd"], fns[f"{k}_bwd"] = fwd, bwd
    fns["torch_fwd"], fns["torch_bwd"] = torch_fwd, torch_bwd

    times = {k: [] for k in fns}
    set_threads(threads)
    with threadpool_limits(threads):
        for f in fns.values():           # warm-up (JIT, caches, thread pools)
            f(); f()
        for _ in range(rounds):
            for k, f in fns.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
    return {k: 1e3 * float(np.median(v)) for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="only the two smallest shapes, 9 rounds")
    args = ap.parse_args()
    rounds = max(9, 9 if args.quick else args.rounds)
    shapes = [s for s in SHAPES if np.prod(s[0]) <= 2_000_000] if args.quick else SHAPES

    set_threads(2)
    with threadpool_limits(2):
        copy_bw = copy_bandwidth()
    rows = []
    header = ("| shape | layout | pass | threads | bnref numpy ms | bnref numba ms | torch ms "
              "| numpy/torch | numba/torch | numba GB/s | of copy BW |")
    rows.append(header)
    rows.append("|---" * 11 + "|")
    totals = ["| shape | layout | threads | numpy fwd+bwd ms | numba fwd+bwd ms | torch fwd+bwd ms "
              "| numpy/torch | numba/torch |", "|---" * 8 + "|"]
    for shape, layout in shapes:
        nbytes = np.prod(shape) * 4
        for threads in (1, 2):
            r = bench_case(shape, layout, threads, rounds)
            t = {k: r[f"{k}_fwd"] + r[f"{k}_bwd"] for k in ("numpy", "numba", "torch")}
            totals.append(f"| {shape} | {layout} | {threads} | {t['numpy']:.3f} | {t['numba']:.3f} | {t['torch']:.3f} "
                          f"| {t['numpy'] / t['torch']:.2f} | {t['numba'] / t['torch']:.2f} |")
            for p, nb_bytes in (("fwd", 2 * nbytes), ("bwd", 3 * nbytes)):
                gbs = nb_bytes / (r[f"numba_{p}"] / 1e3) / 1e9
                rows.append(
                    f"| {shape} | {layout} | {p} | {threads} | {r[f'numpy_{p}']:.3f} | {r[f'numba_{p}']:.3f} "
                    f"| {r[f'torch_{p}']:.3f} | {r[f'numpy_{p}'] / r[f'torch_{p}']:.2f} "
                    f"| {r[f'numba_{p}'] / r[f'torch_{p}']:.2f} | {gbs:.1f} | {gbs / copy_bw:.0%} |")
            print(rows[-2], rows[-1], sep="\n", flush=True)
    meta = (f"Measured {datetime.date.today()} on {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores; numpy {np.__version__}, numba {numba.__version__}, torch {torch.__version__}; "
            f"float32, median of {rounds} interleaved rounds, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}; copy bandwidth (read+write) {copy_bw:.1f} GB/s "
            f"measured in the same run. Ratios < 1 mean bnref is faster. Minimal bytes: forward 2|x|, backward 3|x|.")
    table = "\n".join(rows) + "\n\nForward + backward (the issue's target: ratio <= 1):\n\n" + "\n".join(totals)
    out = Path(__file__).parent / "results" / "cpu.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(f"# CPU benchmark: bnref vs PyTorch\n\n{meta}\n\n{table}\n")
    print(f"\n{meta}\n\n{table}\n\nwritten to {out}")


if __name__ == "__main__":
    main()
