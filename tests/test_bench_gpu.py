"""benchmarks/bench_gpu.py and tools/gpu_check.sh (with tools/gpu_extra.py) where there is no GPU.

The arithmetic of the benchmark (statistics, L2 rotation, traffic and bandwidth, the issue's
goal verdicts), its timing loops on a fake GPU timeline (one event pair per batch of calls,
synchronisation only after a batch), the rule that nothing is written without ``--out``, the
no-GPU exit, one whole case measured on the CPU emulation of the CUDA kernels (so the
plumbing and the accuracy check run for real), and gpu_check.sh on a machine without a GPU.
Speed itself is only ever measured on a GPU, by the benchmark.
"""
import importlib.util
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_gpu.py"
GPU_CHECK = ROOT / "tools" / "gpu_check.sh"
GPU_EXTRA = ROOT / "tools" / "gpu_extra.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_gpu_under_test", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bench = _load()


# ---- statistics --------------------------------------------------------------------------------

def test_summary_gives_min_median_max_and_count():
    assert bench.summarize([3.0, 1.0, 2.0, 10.0]) == {"min": 1.0, "median": 2.5, "max": 10.0, "n": 4}
    assert bench.summarize([5, 1, 4]) == {"min": 1.0, "median": 4.0, "max": 5.0, "n": 3}


@pytest.mark.parametrize("samples, word", [([], "empty"), ([1.0, -0.5], "-0.5"),
                                           ([1.0, float("nan")], "nan")])
def test_summary_refuses_no_samples_and_impossible_times(samples, word):
    with pytest.raises(ValueError, match="samples") as info:
        bench.summarize(samples)
    assert word in str(info.value)


# ---- L2 rotation -------------------------------------------------------------------------------

@pytest.mark.parametrize("copy_bytes", [16 << 10, 1 << 20, 3 << 20, 7 * 10**6, 49 << 20])
def test_rotation_reads_factor_times_l2_of_other_data_between_uses_and_no_more_copies(copy_bytes):
    l2 = 50 << 20
    n = bench.rotation_count(copy_bytes, l2, factor=3.0)
    assert (n - 1) * copy_bytes >= 3 * l2                 # enough other data in between
    assert (n - 2) * copy_bytes < 3 * l2                  # and the fewest copies that do it
    assert bench.rotation_covers_l2(n, copy_bytes, l2, 3.0)
    assert not bench.rotation_covers_l2(n - 1, copy_bytes, l2, 3.0)


def test_rotation_needs_one_copy_when_a_tensor_evicts_itself_and_is_capped():
    l2 = 50 << 20
    assert bench.rotation_count(150 << 20, l2, factor=3.0) == 1
    assert bench.rotation_count((150 << 20) - 1, l2, factor=3.0) == 3
    n = bench.rotation_count(64, l2, factor=3.0, max_copies=1000)
    assert n == 1000 and not bench.rotation_covers_l2(n, 64, l2, 3.0)


@pytest.mark.parametrize("args, name", [((0, 1 << 20), "copy_bytes"), ((1024, 0), "l2_bytes"),
                                        ((1024, 2.5e6), "l2_bytes")])
def test_rotation_refuses_sizes_that_are_not_positive_byte_counts(args, name):
    with pytest.raises(ValueError, match=name):
        bench.rotation_count(*args)


@pytest.mark.parametrize("numel, itemsize", [(1, 2), (127, 2), (128, 2), (129, 4), (1000, 8)])
def test_every_rotation_slot_starts_256_byte_aligned_and_holds_the_tensor(numel, itemsize):
    slot = bench.slot_elements(numel, itemsize)
    assert slot >= numel and (slot * itemsize) % 256 == 0
    assert (slot - 256 // itemsize) < numel               # no more padding than needed


# ---- traffic and bandwidth ---------------------------------------------------------------------

def test_minimal_traffic_is_two_tensors_forward_and_three_backward():
    assert bench.min_traffic("fwd", 1000) == 2000
    assert bench.min_traffic("bwd", 1000) == 3000
    with pytest.raises(ValueError, match="pass_"):
        bench.min_traffic("both", 1000)


def test_bandwidth_is_bytes_per_second_in_decimal_gigabytes():
    assert bench.bandwidth_gbps(10**9, 1.0) == pytest.approx(1000.0)      # 1 GB in 1 ms
    assert bench.bandwidth_gbps(3 * 10**6, 0.002) == pytest.approx(1500.0)
    with pytest.raises(ValueError, match="ms"):
        bench.bandwidth_gbps(10, 0.0)


def test_copy_fraction_compares_minimal_traffic_with_a_copy_of_x():
    # a copy moves 2|x|: a forward as fast as the copy moves as much; a backward moves 3|x|
    assert bench.copy_fraction("fwd", 10**8, 0.1, 0.1) == pytest.approx(1.0)
    assert bench.copy_fraction("bwd", 10**8, 0.1, 0.1) == pytest.approx(1.5)
    assert bench.copy_fraction("fwd", 10**8, 0.2, 0.1) == pytest.approx(0.5)


# ---- goals ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("gpu, want", [(1.0, True), (0.5, True), (1.01, False), (None, None)])
def test_gpu_time_goal_is_at_most_pytorchs_time(gpu, want):
    assert bench.verdicts(10**6, gpu, 0.9, 1.0)["gpu"] is want


@pytest.mark.parametrize("nbytes, frac, want", [(25 * 10**6, 0.70, True), (25 * 10**6, 0.69, False),
                                                (25 * 10**6 - 1, 0.10, "n/a"), (10**9, None, None)])
def test_bandwidth_goal_is_70_percent_of_copy_on_tensors_of_25_mb(nbytes, frac, want):
    v = bench.verdicts(nbytes, 0.9, frac, 1.0)["bandwidth"]
    assert v == want and type(v) is type(want)


@pytest.mark.parametrize("api, want", [(1.2, True), (1.21, False), (0.3, True), (None, None)])
def test_api_latency_goal_is_at_most_1_2_times_pytorchs(api, want):
    assert bench.verdicts(10**6, 0.9, None, api)["api"] is want


def test_verdict_text_passes_only_when_every_measured_goal_is_met():
    assert bench.verdict_text(bench.verdicts(10**6, 0.9, None, 1.0)) == "PASS"
    assert bench.verdict_text(bench.verdicts(10**8, 0.9, 0.5, 1.0)) == "bandwidth FAIL"
    assert bench.verdict_text(bench.verdicts(10**8, 1.5, 0.8, None)) == "gpu FAIL; api not measured"


def _timing(median, spread=0.0):
    return {"min": median - spread, "median": median, "max": median + spread, "n": 3}


def _row(pas="fwd", nbytes=40 * 10**6, b_gpu=0.1, t_gpu=0.125, b_api=0.03, t_api=0.02, copy=0.08,
         torch=True):
    t = {"bnref": {"gpu": _timing(b_gpu, 0.01), "api": _timing(b_api, 0.01), "host_limited": 0}}
    if torch:
        t["torch direct"] = {"gpu": _timing(t_gpu, 0.05), "api": _timing(t_api, 0.005), "host_limited": 0}
        t["torch autograd"] = {"gpu": _timing(2 * t_gpu), "api": _timing(4 * t_api), "host_limited": 1}
    r = {"shape": [4, 8, 10, 10], "layout": "NCHW", "dtype": "float32", "pass": pas, "bytes": nbytes,
         "copies": 3, "working_set_bytes": 3 * nbytes, "covers_l2": True,
         "backend": {"direct_ops": "cudnn_batch_norm + cudnn_batch_norm_backward", "selected": "Cudnn",
                     "impl_index": 1, "profiled_ops": ["aten::cudnn_batch_norm"]} if torch else None,
         "copy": {"gpu": _timing(copy), "host_limited": 0, "graph_error": "RuntimeError: no capture"},
         "errors": {"bnref": 1e-7, "direct": 2e-7, "autograd": 2e-7}, "t": t}
    return bench.finish_row(r)


def test_a_row_takes_its_ratios_and_bandwidth_from_the_medians():
    r = _row()
    assert r["gpu_ratio"] == pytest.approx(0.1 / 0.125)          # not min/min or max/max
    assert r["gpu_ratio_autograd"] == pytest.approx(0.1 / 0.25)
    assert r["api_ratio"] == pytest.approx(0.03 / 0.02)
    assert r["copy_gbps"] == pytest.approx(2 * 40e6 / 0.08e-3 / 1e9)
    assert r["bnref_gbps"] == pytest.approx(2 * 40e6 / 0.1e-3 / 1e9)
    assert r["copy_fraction"] == pytest.approx(0.8)
    assert r["verdicts"] == {"gpu": True, "bandwidth": True, "api": False}
    line = bench.table_row(r)
    assert "| 0.80 |" in line and "| 1.50 |" in line and "| 80% |" in line
    assert "api FAIL" in line and "cudnn_batch_norm" in line
    assert "100.0 [90.0-110.0]" in line                         # median [min-max] in us


def test_without_pytorch_the_comparisons_say_not_measured_not_pass():
    r = _row(torch=False)
    assert r["gpu_ratio"] is None and r["api_ratio"] is None
    assert bench.verdict_text(r["verdicts"]) == "gpu not measured; api not measured"
    counts = bench.overall([r, _row()])
    assert counts["gpu"] == (1, 0, 1) and counts["api"] == (0, 1, 1) and counts["bandwidth"] == (2, 0, 0)


def test_the_report_states_method_backend_goals_and_graph_fallbacks():
    meta = {"date": "d", "device": "Fake GPU", "l2_bytes": 50 << 20, "versions": "v", "dtypes": ["float32"],
            "calls": 20, "repeat": 15, "graph_calls": 20, "l2_factor": 3.0, "notes": ["a note"]}
    text = bench.render([_row("fwd"), _row("bwd")], meta)
    assert "selected Cudnn, impl index 1" in text
    assert "no graph: RuntimeError: no capture" in text          # the fallback is said, per row
    assert "2 met, 0 missed" in text and "a note" in text
    header = next(line for line in text.splitlines() if line.startswith("| shape | layout | dtype | pass | MB"))
    sep = text.splitlines()[text.splitlines().index(header) + 1]
    assert sep.count("---") == header.count("|") - 1              # a well-formed Markdown table


# ---- timing loops on a fake timeline -------------------------------------------------------------

class FakeTimeline:
    """Events stamp a fake device clock; every call of fn adds ``device_ms`` of device work."""

    def __init__(self, log, device_ms=0.5):
        self.log, self.device_ms, self.now, self.stamps = log, device_ms, 0.0, {}

    def event(self):
        return object()

    def record(self, e):
        self.log.append("record")
        self.stamps[e] = self.now

    def elapsed_ms(self, a, b):
        return self.stamps[b] - self.stamps[a]

    def sync(self):
        self.log.append("sync")

    def spin(self, ms):
        self.log.append("spin")

    def fn(self):
        self.log.append("call")
        self.now += self.device_ms


def test_gpu_time_is_many_calls_between_one_event_pair_divided_by_the_calls():
    log = []
    tl = FakeTimeline(log, device_ms=0.25)
    times, limited = bench.gpu_time_queued(tl, tl.fn, calls=8, repeat=3, warmup=2, spin_ms=1.0,
                                           clock=iter(range(1000)).__next__)
    assert times == [0.25, 0.25, 0.25]
    timed = log[log.index("sync") + 1:]
    assert timed == (["spin", "record"] + ["call"] * 8 + ["record"]) * 3     # one pair per batch
    assert limited == 3          # the fake clock ticks 1 s per read: the host never kept up


def test_api_latency_synchronises_only_after_each_timed_batch():
    log, ticks = [], iter(range(0, 10**6, 4))
    tl = FakeTimeline(log)

    def clock():
        log.append("clock")
        return next(ticks) / 1000.0                             # 4 ms between reads

    times = bench.api_latency(tl, tl.fn, calls=4, repeat=2, warmup=1, clock=clock)
    assert times == [1.0, 1.0]                                  # (t1 - t0) / calls, in ms
    assert log == ["call", "sync"] + (["clock"] + ["call"] * 4 + ["clock", "sync"]) * 2


def test_rotating_calls_each_copy_in_turn_across_batches():
    seen = []
    fn = bench.rotating([lambda i=i: seen.append(i) for i in range(3)])
    for _ in range(7):
        fn()
    assert seen == [0, 1, 2, 0, 1, 2, 0]


def test_the_spin_outlasts_the_host_queuing_a_batch():
    assert bench.spin_for(0.05, 20) == pytest.approx(2.0)      # 2 x 20 calls x 50 us
    assert bench.spin_for(0.0001, 20) == 0.5                    # never below 0.5 ms



class FakeCapture:
    """A CuPy stand-in whose stream captures calls into a graph; a launch adds their device time."""

    def __init__(self, log, device_ms=0.5):
        self.log, self.device_ms, self.now, self.captured = log, device_ms, 0.0, None
        fake = self

        class Stream:
            def __init__(self, non_blocking=False):
                pass

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def synchronize(self):
                pass

            def begin_capture(self):
                fake.captured = 0

            def end_capture(self):
                n, fake.captured = fake.captured, None
                return types.SimpleNamespace(launch=lambda s: fake.launch(n))

        self.cuda = types.SimpleNamespace(Stream=Stream, Device=lambda: types.SimpleNamespace(
            synchronize=lambda: None))

    def fn(self):
        if self.captured is None:
            self.now += self.device_ms
        else:
            self.captured += 1

    def launch(self, n):
        self.log.append("launch")
        self.now += n * self.device_ms


class CaptureTimeline(FakeTimeline):
    """Events stamp the FakeCapture clock."""

    def __init__(self, cp, stream=None):
        super().__init__(cp.log)
        self.cp = cp

    def record(self, e):
        self.stamps[e] = self.cp.now


def test_graph_time_is_the_replays_between_one_event_pair_divided_by_every_call():
    log = []
    cp = FakeCapture(log, device_ms=0.25)
    times = bench.graph_time_cupy(cp, CaptureTimeline, [cp.fn], calls=4, repeat=2,
                                  flush=lambda: log.append("flush"), replays=3)
    assert times == [0.25, 0.25]                                 # elapsed / (4 calls x 3 replays)
    assert log == ["launch"] + (["flush"] + ["launch"] * 3) * 2  # one untimed replay first


def test_gpu_checks_graph_time_is_bench_gpus_in_microseconds(monkeypatch):
    monkeypatch.chdir(ROOT)                                      # gpu_check.sh runs from the root
    monkeypatch.setattr(sys, "path", list(sys.path))             # _bench_gpu adds benchmarks/
    mod = _gpu_extra()
    try:
        bench_gpu = mod._bench_gpu()
        assert Path(bench_gpu.__file__).resolve() == BENCH
        monkeypatch.setattr(bench_gpu, "CupyTimeline", CaptureTimeline)
        cp = FakeCapture([], device_ms=0.25)
        assert mod._graph_time(cp, cp.fn, n=10, k=5) == pytest.approx(250.0)   # us per call
    finally:
        sys.modules.pop("bench_gpu", None)


# ---- what runs ------------------------------------------------------------------------------------

def test_every_dtype_shape_and_layout_runs_by_default_channels_last_for_4d_only():
    got = list(bench.cases(bench.build_parser().parse_args([])))
    assert [dt for dt in bench.DTYPES] == ["float32", "float16", "bfloat16"]
    per_dtype = [(s, cl) for s in bench.SHAPES for cl in ((False,) if len(s) == 2 else (False, True))]
    assert got == [(s, cl, dt) for dt in bench.DTYPES for s, cl in per_dtype]
    quick = list(bench.cases(bench.build_parser().parse_args(["--quick", "--dtype", "float16",
                                                              "--layout", "NHWC"])))
    assert quick == [(s, len(s) == 4, "float16") for s in bench.QUICK]


# ---- files and exits -------------------------------------------------------------------------------

def test_no_file_is_written_without_out_and_the_report_is_written_with_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    results = ROOT / "benchmarks" / "results"
    before = {p: p.stat().st_mtime_ns for p in results.iterdir()}
    meta = {"date": "d", "device": "Fake GPU", "l2_bytes": 50 << 20, "versions": "v", "dtypes": ["float32"],
            "calls": 20, "repeat": 15, "graph_calls": 20, "l2_factor": 3.0, "notes": []}
    monkeypatch.setattr(bench, "_gpu_or_exit", lambda require: object())
    monkeypatch.setattr(bench, "measure_all", lambda cp, args: ([_row()], meta))
    assert bench.build_parser().parse_args([]).out is None
    assert bench.main([]) == 0
    assert "| shape | layout |" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []
    assert {p: p.stat().st_mtime_ns for p in results.iterdir()} == before
    assert bench.main(["--out", "sub/gpu.md", "--json", "sub/gpu.json"]) == 0
    assert "Fake GPU" in (tmp_path / "sub" / "gpu.md").read_text()
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["gpu.json", "gpu.md"]


def test_bad_counts_are_refused_naming_the_option(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--calls", "0"])
    assert "--calls: 0; expected >= 1" in capsys.readouterr().err


@pytest.fixture
def no_gpu_env(tmp_path):
    """An environment whose ``import cupy`` finds a CuPy that sees no device (whatever is installed)."""
    fake = tmp_path / "fakecupy" / "cupy"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "class _R:\n    @staticmethod\n    def getDeviceCount():\n"
        "        raise RuntimeError('cudaErrorNoDevice: no CUDA-capable device is detected')\n"
        "class cuda:\n    runtime = _R\n__version__ = '0-fake'\n")
    env = dict(os.environ, PYTHONPATH=f"{fake.parent}{os.pathsep}{ROOT}")
    return env


@pytest.mark.parametrize("extra, rc", [([], 0), (["--require-gpu"], 1)])
def test_without_a_gpu_it_says_so_writes_nothing_and_exits_0_or_1(no_gpu_env, tmp_path, extra, rc):
    out = tmp_path / "gpu.md"
    p = subprocess.run([sys.executable, str(BENCH), "--out", str(out), *extra], env=no_gpu_env,
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == rc, p.stderr
    assert "no GPU benchmark" in p.stderr and "cudaErrorNoDevice" in p.stderr
    assert not out.exists()


# ---- one case measured end to end on the CPU emulation of the kernels ------------------------------

class _Event:
    def __init__(self):
        self.t = None

    def record(self, stream=None):
        import time
        self.t = time.perf_counter()

    def synchronize(self):
        pass


class _Stream:
    def __init__(self, non_blocking=False):
        self.ptr = 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def synchronize(self):
        pass

    def begin_capture(self):
        raise RuntimeError("stream capture: not in this stand-in")


@pytest.fixture
def emulated_cupy(monkeypatch):
    """The emulator's CuPy (kernels compiled with g++) plus events, streams and device queries."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        import test_gpu_emulator as emu
    finally:
        sys.path.remove(str(ROOT / "tests"))
    cp = emu.use_emulator(monkeypatch, as_cupy=True)

    class Device(emu.FakeDevice):
        def __init__(self, i=None):
            super().__init__(emu.FakeDevice.current if i is None else i)
            self.attributes = {"MultiProcessorCount": emu.EMULATED_SMS, "L2CacheSize": 1 << 16,
                               "ClockRate": 1_000_000}

        def synchronize(self):
            pass

    cuda = types.SimpleNamespace(**vars(cp.cuda))
    cuda.Device, cuda.Event, cuda.Stream = Device, _Event, _Stream
    cuda.get_elapsed_time = lambda a, b: (b.t - a.t) * 1e3
    monkeypatch.setattr(cp, "cuda", cuda, raising=False)
    monkeypatch.setattr(cp, "RawKernel", lambda code, name: (lambda *a, **k: None), raising=False)
    monkeypatch.setattr(cp, "get_default_memory_pool",
                        lambda: types.SimpleNamespace(free_all_blocks=lambda: None), raising=False)
    monkeypatch.setattr(bench, "_device_copy", lambda dst, src, n: np.copyto(dst, src[:dst.size]))
    return cp


@pytest.mark.parametrize("shape, channels_last, dtype", [((6, 4, 3, 5), True, "bfloat16"),
                                                         ((48, 8), False, "float32")])
def test_one_case_runs_every_timing_and_bnref_matches_the_float64_reference(
        emulated_cupy, shape, channels_last, dtype):
    opts = bench.build_parser().parse_args(["--calls", "2", "--repeat", "2", "--warmup", "0",
                                            "--graph-calls", "2"])
    lines = []
    rows, notes = bench.measure_case(emulated_cupy, None, None, shape, channels_last, dtype, opts,
                                     l2_bytes=1 << 16, log=lambda *a, **k: lines.append(a[0]))
    assert [r["pass"] for r in rows] == ["fwd", "bwd"] and len(lines) == 2
    nbytes = int(np.prod(shape)) * (2 if dtype == "bfloat16" else 4)
    for r in rows:
        assert r["bytes"] == nbytes and r["layout"] == ("NHWC" if channels_last else "(N, C)")
        assert r["copies"] == bench.rotation_count(nbytes, 1 << 16) and r["covers_l2"]
        t = r["t"]["bnref"]
        assert set(t) >= {"api", "gpu", "host_limited"} and t["gpu"]["n"] == 2
        assert "stream capture" in t["graph_error"]                  # the fallback is recorded
        assert r["copy"]["gpu"]["n"] == 2 and r["copy_fraction"] is not None
        assert r["errors"]["bnref"] < (2e-2 if dtype == "bfloat16" else 1e-5)
        assert r["gpu_ratio"] is None and r["verdicts"]["gpu"] is None    # no PyTorch: not measured
    assert notes == []


# ---- tools/gpu_check.sh -------------------------------------------------------------------------------

def test_gpu_check_script_parses():
    subprocess.run(["bash", "-n", str(GPU_CHECK)], check=True)


@pytest.mark.parametrize("nvidia_smi", ["absent", "failing"])
def test_gpu_check_without_a_gpu_exits_cleanly_and_writes_a_summary(no_gpu_env, tmp_path, nvidia_smi):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("bash", "timeout", "tee", "mkdir", "mktemp", "rm", "date", "cat", "grep", "sed", "ls",
                 "tr", "head", "tail", "hostname", "nproc", "uname", "printf", "dirname", "env"):
        path = shutil.which(tool)
        if path:
            (bindir / tool).symlink_to(path)
    if nvidia_smi == "failing":
        (bindir / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed: no driver' >&2\nexit 9\n")
        (bindir / "nvidia-smi").chmod(0o755)
    out = tmp_path / "out"
    env = dict(no_gpu_env, PATH=str(bindir), OUT=str(out), PYTHON=sys.executable,
               GPU_CHECK_BUDGET="120", GPU_CHECK_SKIP="compile")
    p = subprocess.run(["bash", str(GPU_CHECK)], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=180)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    summary = (out / "summary.txt").read_text()
    assert "no GPU" in summary
    for stage in ("pytest", "checks", "bench", "micro", "racecheck", "ncu", "benchfull"):
        assert any(line.split()[:2] == [stage, "SKIP(no-GPU)"] for line in summary.splitlines()), stage
    assert any(line.split()[:2] == ["env", "OK"] for line in summary.splitlines())
    assert any(line.split()[:2] == ["compile", "SKIP(asked)"] for line in summary.splitlines())
    assert (out / "gpu_check.log").exists()
    assert not list(ROOT.glob("gpu_check.*"))                   # nothing left in the repository


def _gpu_extra_source():
    """The Python tool gpu_check.sh runs (tools/gpu_extra.py), as text."""
    return GPU_EXTRA.read_text()


def test_gpu_check_python_tool_compiles():
    compile(_gpu_extra_source(), "gpu_extra.py", "exec")


def test_gpu_check_reads_the_planner_as_it_stands_or_says_what_is_missing(emulated_cupy):
    from bnref.kernels import cupy_bn
    mod = types.ModuleType("gpu_extra_under_test")
    exec(compile(_gpu_extra_source(), "gpu_extra.py", "exec"), mod.__dict__)
    aligned = emulated_cupy.asarray(np.zeros((8, 4, 64), np.float32))
    odd = emulated_cupy.asarray(np.zeros(8 * 4 * 64 + 1, np.float32))[1:].reshape(8, 4, 64)
    info, info_odd = mod._plan_info(aligned), mod._plan_info(odd)
    if hasattr(cupy_bn, "_plan") or hasattr(cupy_bn, "_grid_plan"):
        assert info["layout"] == "rows" and info["vec"] == 4 and info["grid"][0] == 4, info
        assert info_odd["vec"] == 1, info_odd                       # a misaligned view: scalar loads
    else:
        assert "not found" in info["missing"]
    mod.RESULTS["items"] = []
    mod._private_report()
    report = mod.RESULTS["cupy_bn_private"]
    assert sorted(report["present"] + report["missing"]) == sorted(mod.PRIVATE)
    assert all(hasattr(cupy_bn, n) for n in report["present"])
    assert not any(hasattr(cupy_bn, n) for n in report["missing"])


# ---- PyTorch's two paths, on the CPU build (the operators and their argument order) ---------------

def test_pytorch_direct_operators_give_what_autograd_gives_for_every_copy():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(4, 3, 5, 5, generator=g).to(memory_format=torch.channels_last) * 2 + 0.5
          for _ in range(2)]
    xs[1] = xs[0].clone()                                        # copies hold the same values
    dys = [torch.randn(4, 3, 5, 5, generator=g).to(memory_format=torch.channels_last)] * 2
    w, b = torch.rand(3, generator=g) + 0.5, torch.randn(3, generator=g)
    direct, name, (y, grads) = bench.direct_fns(torch, xs, dys, w, b, use_cudnn=False)
    auto, (ya, grads_a) = bench.autograd_fns(torch, F, xs, dys, w, b)
    assert name == "native_batch_norm + native_batch_norm_backward"
    torch.testing.assert_close(y, ya)
    for got, want in zip(grads, grads_a):
        torch.testing.assert_close(got, want)
    # the formula itself: dbeta = sum dy, dgamma = sum dy * x_hat per channel
    x_hat = (xs[0] - xs[0].mean((0, 2, 3), keepdim=True)) / torch.sqrt(
        xs[0].var((0, 2, 3), unbiased=False, keepdim=True) + bench.EPS)
    torch.testing.assert_close(grads[2], dys[0].sum((0, 2, 3)))
    torch.testing.assert_close(grads[1], (dys[0] * x_hat).sum((0, 2, 3)), rtol=1e-4, atol=1e-4)
    for fns in (direct, auto):                                   # every copy's callable runs
        assert len(fns["fwd"]) == len(fns["bwd"]) == 2
        torch.testing.assert_close(fns["bwd"][1]()[0], grads[0])


def test_pytorch_backend_is_recorded_with_the_dispatchers_own_choice():
    torch = pytest.importorskip("torch")
    x, w, b = torch.randn(4, 3, 5, 5), torch.ones(3), torch.zeros(3)
    info = bench.torch_backend(torch, x, w, b)
    assert info["impl_index"] == 0                       # CPU: the native kernels (1 would be cuDNN)
    assert info["selected"] == "Native"
    assert info["cudnn_enabled"] == torch.backends.cudnn.enabled


def _gpu_extra():
    mod = types.ModuleType("gpu_extra_under_test")
    exec(compile(_gpu_extra_source(), "gpu_extra.py", "exec"), mod.__dict__)
    return mod


OLD_STATS = """
template <class T, int VEC>
__global__ void bn_stats_rows(const T* __restrict__ x, acc_t<T>* __restrict__ part,
                              int A, int C, int B) { }
template <class T, int VEC>
__global__ void bn_stats_cols(const T* __restrict__ x, acc_t<T>* __restrict__ part,
                              long long A, int C, int B) { }
"""


def test_gpu_check_launches_the_stats_kernels_itself_only_while_their_parameters_fit():
    mod = _gpu_extra()
    assert mod._signature(OLD_STATS, "bn_stats_cols") == ["const T*", "acc_t<T>*", "long long", "int", "int"]
    assert mod._sweep_problem(OLD_STATS) is None
    fused = OLD_STATS.replace("acc_t<T>* __restrict__ part,\n                              int A",
                              "acc_t<T>* part, unsigned* counter, int A")
    assert "bn_stats_rows now takes (const T*, acc_t<T>*, unsigned*, int, int, int)" in mod._sweep_problem(fused)
    assert mod._sweep_problem("no kernels here") == "bn_stats_rows not found"
    from bnref.kernels import cupy_bn                     # the sources as they stand: either answer,
    problem = mod._sweep_problem(cupy_bn.module_source("bn_stats"))   # never a crash
    assert problem is None or "bn_stats_" in problem
