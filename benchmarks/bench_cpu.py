"""CPU benchmark: bnref's BatchNorm (the default path and each kernel set) against PyTorch, float32.

For every shape and layout it times the training-mode forward and the backward of bnref and
of PyTorch (``F.batch_norm`` + autograd) with 1 and with 2 threads, in the same process,
interleaved (one call of each per round, so machine noise hits all alike), and reports medians
over >= 9 rounds after warm-up. bnref runs as a user gets it without choosing ("default":
Numba where it is installed) and with each kernel set chosen (``use_cpu_kernels``): Numba,
tuned NumPy and the reference. Effective bandwidth counts the minimal bytes (forward reads x
and writes y: 2|x|; backward reads x and dy and writes dx: 3|x|) and is compared with a copy
bandwidth (``np.copyto``, read + write) measured in the same run.

It also measures what the first call costs in a new process: with an empty Numba cache
(compilation) and with the cache the previous process left (loading), against the same
process's steady-state call.

    python benchmarks/bench_cpu.py [--rounds 15] [--quick] [--out FILE]

Prints Markdown tables and writes them to ``--out`` (default benchmarks/results/cpu.md).
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
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

SETS = ("default", "numba", "numpy", "reference")
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
    for k in SETS:
        def fwd(k=k):
            if k == "default":           # no choice made: what bnref.backend picks
                return bnref.batchnorm_forward(x, gamma, beta, axis=axis)
            with bnref.use_cpu_kernels(k):
                return bnref.batchnorm_forward(x, gamma, beta, axis=axis)
        cache = fwd()[1]

        def bwd(k=k, cache=cache):
            if k == "default":
                return bnref.batchnorm_backward(dy, cache)
            with bnref.use_cpu_kernels(k):
                return bnref.batchnorm_backward(dy, cache)
        fns[f"{k}_fwd"], fns[f"{k}_bwd"] = fwd, bwd
    fns["torch_fwd"], fns["torch_bwd"] = torch_fwd, torch_bwd

    times = {k: [] for k in fns}
    set_threads(threads)
    with threadpool_limits(threads):
        for f in fns.values():           # warm-up (JIT, caches, thread pools)
            f(); f()
        order = list(fns.items())
        for i in range(rounds):
            # a different one goes first each round: the first after another library's call
            # pays for the caches and thread pools it left behind
            for k, f in order[i % len(order):] + order[:i % len(order)]:
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
    return {k: 1e3 * float(np.median(v)) for k, v in times.items()}


FIRST_CALL = """
import time
t0 = time.perf_counter()
import numpy as np
import bnref
t1 = time.perf_counter()
rng = np.random.default_rng(0)
out = {"import_s": t1 - t0, "kernels": bnref.get_cpu_kernels()}
for name, shape, axis in [("NC", (64, 128), 1), ("NCHW", (8, 64, 14, 14), 1), ("NHWC", (8, 14, 14, 64), -1)]:
    x = rng.normal(size=shape).astype(np.float32)
    C = shape[axis]
    g, b = np.ones(C, np.float32), np.zeros(C, np.float32)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        y, cache = bnref.batchnorm_forward(x, g, b, axis=axis)
        bnref.batchnorm_backward(y, cache)
        times.append(time.perf_counter() - t)
    out[name] = times                    # the first call, then two steady-state calls
print(__import__("json").dumps(out))
"""


def first_call_costs(repeats=3):
    """Seconds for import and for the first forward+backward, cold (empty Numba cache) and cached.

    Each process starts fresh; "cold" gets a new, empty NUMBA_CACHE_DIR, "cached" the
    directory a cold process just filled. Medians over ``repeats`` pairs.
    """
    runs = {"cold": [], "cached": []}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cache_dir:
            env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir}
            env.pop("BNREF_CPU_KERNELS", None)
            for kind in ("cold", "cached"):
                res = subprocess.run([sys.executable, "-c", FIRST_CALL], env=env, capture_output=True,
                                     text=True, timeout=600, check=True)
                runs[kind].append(json.loads(res.stdout))
    med = lambda vs: float(np.median(vs))                                   # noqa: E731
    rows = {}
    for kind, rs in runs.items():
        rows[kind] = {"kernels": rs[0]["kernels"], "import_s": med([r["import_s"] for r in rs]),
                      **{layout: (med([r[layout][0] for r in rs]), med([min(r[layout][1:]) for r in rs]))
                         for layout in ("NC", "NCHW", "NHWC")}}
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="only the two smallest shapes, 9 rounds")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cpu.md",
                    help="where to write the tables (default: %(default)s)")
    args = ap.parse_args()
    rounds = max(9, 9 if args.quick else args.rounds)
    shapes = [s for s in SHAPES if np.prod(s[0]) <= 2_000_000] if args.quick else SHAPES

    first = first_call_costs()
    set_threads(2)
    with threadpool_limits(2):
        copy_bw = copy_bandwidth()
    rows = ["| shape | layout | pass | threads | " + " | ".join(f"{k} ms" for k in SETS) + " | torch ms | "
            + " | ".join(f"{k}/torch" for k in SETS) + " | default GB/s | of copy BW |",
            "|---" * (7 + 2 * len(SETS)) + "|"]
    totals = ["| shape | layout | threads | " + " | ".join(f"{k} ms" for k in SETS) + " | torch ms | "
              + " | ".join(f"{k}/torch" for k in SETS) + " |", "|---" * (4 + 2 * len(SETS)) + "|"]
    worst = 0.0
    for shape, layout in shapes:
        nbytes = np.prod(shape) * 4
        for threads in (1, 2):
            r = bench_case(shape, layout, threads, rounds)
            t = {k: r[f"{k}_fwd"] + r[f"{k}_bwd"] for k in (*SETS, "torch")}
            worst = max(worst, t["default"] / t["torch"])
            totals.append(f"| {shape} | {layout} | {threads} | " + " | ".join(f"{t[k]:.3f}" for k in SETS)
                          + f" | {t['torch']:.3f} | " + " | ".join(f"{t[k] / t['torch']:.2f}" for k in SETS) + " |")
            for p, nb_bytes in (("fwd", 2 * nbytes), ("bwd", 3 * nbytes)):
                gbs = nb_bytes / (r[f"default_{p}"] / 1e3) / 1e9
                rows.append(f"| {shape} | {layout} | {p} | {threads} | "
                            + " | ".join(f"{r[f'{k}_{p}']:.3f}" for k in SETS) + f" | {r[f'torch_{p}']:.3f} | "
                            + " | ".join(f"{r[f'{k}_{p}'] / r[f'torch_{p}']:.2f}" for k in SETS)
                            + f" | {gbs:.1f} | {gbs / copy_bw:.0%} |")
            print(totals[-1], flush=True)
    meta = (f"Measured {datetime.date.today()} on {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores; numpy {np.__version__}, numba {numba.__version__}, torch {torch.__version__}; "
            f"bnref {bnref.__version__}, default CPU kernels: {bnref.backend.default_cpu_kernels()}; "
            f"float32, median of {rounds} interleaved rounds, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}; "
            f"copy bandwidth (read+write) {copy_bw:.1f} GB/s measured in the same run. Ratios < 1 mean bnref is "
            f"faster. Minimal bytes: forward 2|x|, backward 3|x|.")
    first_rows = ["| Numba cache | kernels | import bnref s | " + " | ".join(
                  f"first fwd+bwd {k} s | steady {k} ms" for k in ("NC", "NCHW", "NHWC")) + " |",
                  "|---" * 9 + "|"]
    for kind, f in first.items():
        first_rows.append(f"| {kind} | {f['kernels']} | {f['import_s']:.2f} | " + " | ".join(
            f"{f[k][0]:.2f} | {1e3 * f[k][1]:.3f}" for k in ("NC", "NCHW", "NHWC")) + " |")
    table = ("Forward + backward (the target: default/torch <= 1 on every shape):\n\n" + "\n".join(totals)
             + f"\n\nWorst default/torch: {worst:.2f}.\n\nEach pass:\n\n" + "\n".join(rows)
             + "\n\nThe first calls in a new process, in this order (float32; NC (64, 128): the serial "
             "kernels for small inputs; then NCHW (8, 64, 14, 14) and NHWC (8, 14, 14, 64): the threaded "
             "ones): with an empty Numba cache the first call compiles every kernel the public functions use, at once and under a lock (`ensure_compiled`), so later first calls cost nothing more; with the cache that such a "
             "process left, it loads. Medians of 3 fresh processes each, against the steady-state call "
             "of the same process:\n\n" + "\n".join(first_rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f"# CPU benchmark: bnref vs PyTorch\n\n{meta}\n\n{table}\n")
    print(f"\n{meta}\n\n{table}\n\nwritten to {args.out}")


if __name__ == "__main__":
    main()
