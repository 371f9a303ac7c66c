"""The grading sandbox: what a submission's code can see and do, and what comes back out.

- the wire format decodes plain values only and rejects everything else;
- inside the sandbox: no bnref, no course files, no network, no grader environment, its own
  PID namespace, resource limits, nothing left running afterwards;
- the session: deadlines, crashes and restarts are the grader's, not the learner's;
- the same learner code gets the same verdict and message in the sandbox as in the kernel.

The sandbox tests need bubblewrap and user namespaces; where they are missing they skip and
say so (``make test`` installs bubblewrap on Debian).
"""
import os
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from bnref.grading.exercise import LocalExecutor, evaluate
from bnref.grading.exercises import EXERCISES
from bnref.grading.runner import UnreadableTestCell, parse_test_cell, to_python
from bnref.grading.sandbox import bwrap, wire
from bnref.grading.sandbox.session import Failure, Session, SessionConfig

ROOT = Path(__file__).resolve().parents[1]


def _sandbox_works():
    try:
        bwrap.probe()
        return ""
    except bwrap.SandboxUnavailable as e:
        return str(e)


NO_SANDBOX = _sandbox_works()
needs_sandbox = pytest.mark.skipif(bool(NO_SANDBOX), reason=f"no bubblewrap sandbox here: {NO_SANDBOX[:200]}")
FAST = SessionConfig(cell_timeout=5, call_timeout=5)


# ---------------------------------------------------------------- the wire format
@pytest.mark.parametrize("value", [
    None, True, 3, -(10 ** 40), 1.5, float("inf"), "text", (1, 2.0), [None, (3,)], {"a": 1},
    np.arange(6, dtype=np.float32).reshape(2, 3), np.float32(2.5), np.array(True), np.zeros((0, 4)),
    np.arange(4, dtype=">f8"),
])
def test_plain_values_round_trip(value):
    back = wire.decode(wire.encode(value))
    if isinstance(value, np.ndarray):
        assert isinstance(back, np.ndarray) and back.shape == value.shape
        assert back.dtype == value.dtype.newbyteorder("<") and np.array_equal(back, value)
        assert back.flags.writeable
    elif isinstance(value, np.generic):
        assert type(back) is type(value) and back == value
    else:
        assert back == value and type(back) is type(value)


def test_nan_survives_exactly():
    assert np.isnan(wire.decode(wire.encode(float("nan"))))


@pytest.mark.parametrize("value, type_name", [
    (np.array([object()]), "dtype object"), (np.array(["ab"]), "dtype <U2"), (object(), "object"),
    (lambda: 0, "function"), ({1: 2}, "dict"),
])
def test_anything_else_comes_back_as_its_type_name_only(value, type_name):
    back = wire.decode(wire.encode(value))
    assert isinstance(back, wire.Other) and type_name in back.type_name


def test_hostile_objects_do_not_break_the_encoder():
    class Evil(np.ndarray):
        def __array__(self, *a, **k):
            raise RuntimeError("no")

    class Deep(list):
        pass
    nested = []
    for _ in range(100):
        nested = [nested]
    for v in (np.zeros(3).view(Evil), nested, Deep([1])):
        wire.decode(wire.encode(v))          # a value or Other, never an exception


def _message(header, blob=b""):
    head = __import__("json").dumps(header).encode()
    return struct.pack("<I", len(head)) + head + blob


@pytest.mark.parametrize("message", [
    b"", b"\x00\x00", _message({"k": "nd", "dt": "|O", "sh": [1], "o": 0, "n": 8}, b"\0" * 8),
    _message({"k": "nd", "dt": "<f8", "sh": [3], "o": 0, "n": 8}, b"\0" * 8),
    _message({"k": "nd", "dt": "<f8", "sh": [1], "o": 4, "n": 8}, b"\0" * 8),
    _message({"k": "nd", "dt": "<f8", "sh": [-1], "o": 0, "n": 8}, b"\0" * 8),
    _message({"k": "pickle", "v": "gASVAAAA"}), _message([1, 2]), _message({"k": "ref", "step": 0}),
    _message({"k": "int", "v": "1" * 500}), _message({"k": "float", "v": 1.0}),
    struct.pack("<I", 5) + b"{{{{{",
])
def test_malformed_messages_are_rejected(message):
    with pytest.raises(wire.WireError):
        wire.decode(message)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_decode_to_anything_but_an_error_or_plain_data(data):
    try:
        v = wire.decode(data)
    except wire.WireError:
        return
    assert v is None or isinstance(v, (bool, int, float, str, tuple, list, dict, np.ndarray, np.generic, wire.Other))


# ---------------------------------------------------------------- what the sandbox sees
def _run_in_sandbox(code, config=FAST):
    """Run ``code`` as a learner cell; return what it printed (and its error, if any)."""
    with Session([textwrap.dedent(code)], config) as s:
        s.start()
        rep = s.reports[0]
    return rep.stdout + (f"\nERROR {rep.error}" if rep.error else "")


@needs_sandbox
def test_the_sandbox_sees_python_and_numpy_only():
    out = _run_in_sandbox(f"""
        import os, sys, importlib.util, numpy
        print("root", sorted(os.listdir("/")))
        print("bnref", importlib.util.find_spec("bnref"))
        print("repo", os.path.exists({str(ROOT)!r}), os.path.exists({str(ROOT / 'solutions')!r}))
        print("site", [os.listdir(p) for p in ({sys.base_prefix!r} + "/lib/python3.{sys.version_info.minor}/site-packages",)
                       if os.path.isdir(p)])
        print("numpy", numpy.__file__)
        print("env", sorted(os.environ))
        print("home", os.path.expanduser("~"), os.getcwd())
        """)
    assert "bnref None" in out and "repo False False" in out and "site [[]]" in out
    assert "numpy /sandbox/site/numpy/__init__.py" in out
    assert "home /scratch /scratch" in out
    env = eval(out.split("env ")[1].splitlines()[0])
    assert set(env) <= {"PATH", "HOME", "LANG", "TMPDIR", "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED",
                        "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BNREF_OUTPUT_LIMIT", "PWD"}
    root = eval(out.split("root ")[1].splitlines()[0])
    assert "work" not in root and "home" not in root and "etc" not in root


@needs_sandbox
def test_no_network_no_other_processes_and_not_the_graders_user():
    out = _run_in_sandbox("""
        import os, socket
        try:
            socket.create_connection(("127.0.0.1", 22), timeout=2); print("net open")
        except OSError as e:
            print("net", type(e).__name__)
        print("pids", sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
        print("uid", os.getuid())
        """)
    assert "net open" not in out and "net " in out
    pids = eval(out.split("pids ")[1].splitlines()[0])
    assert max(pids) < 20, pids                  # its own PID namespace: a handful of processes
    uid = int(out.split("uid ")[1].split()[0])
    assert uid == (bwrap.NOBODY if os.geteuid() == 0 else os.getuid())


@needs_sandbox
def test_writes_outside_the_scratch_folders_fail():
    out = _run_in_sandbox(f"""
        for path in ["/sandbox/worker/wire.py", {str(Path(np.__file__))!r}.replace({str(Path(np.__file__).parent)!r}, "/sandbox/site/numpy"),
                     "/usr/lib/x", "/x", "/proc/sys/kernel/hostname"]:
            try:
                open(path, "a").write("x"); print("wrote", path)
            except OSError as e:
                print("refused", path)
        open("/scratch/ok", "w").write("x"); open("/tmp/ok", "w").write("x"); print("scratch ok")
        """)
    assert "wrote" not in out and "scratch ok" in out


@needs_sandbox
@pytest.mark.parametrize("code, expect", [
    ("import numpy as np\nhog = np.ones(1 << 31)\n", "MemoryError"),
    ("open('/scratch/big', 'wb').write(b'x' * (200 << 20))\n", "OSError"),
    ("import os, time\nn = 0\ntry:\n    while n < 10000:\n        if os.fork() == 0:\n            time.sleep(30); os._exit(0)\n"
     "        n += 1\nexcept OSError:\n    print('stopped at', n)\n", "stopped at"),
])
def test_resource_limits(code, expect):
    limits = bwrap.Limits(memory_mb=1024, processes=16, file_mb=32)
    out = _run_in_sandbox(code, SessionConfig(limits=limits, cell_timeout=20))
    assert expect in out, out
    if "stopped at" in out:
        assert int(out.split("stopped at")[1].split()[0]) < 200


def _sandbox_processes():
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in ps.splitlines() if "/sandbox/worker" in line or "sleep-forever-marker" in line]


@needs_sandbox
def test_nothing_started_in_the_sandbox_outlives_it():
    _run_in_sandbox("""
        import os, sys
        if os.fork() == 0:
            os.setsid()                      # a daemon in its own session, sleeping forever
            os.execv(sys.executable, [sys.executable, "-c",
                     "import time  # sleep-forever-marker\\nwhile True: time.sleep(1)"])
        """)
    time.sleep(0.5)
    assert _sandbox_processes() == []


# ---------------------------------------------------------------- the session
@needs_sandbox
def test_a_hanging_or_crashing_cell_costs_only_itself():
    cells = ["x = 1", "while True:\n    pass", "y = x + 1", "import os\nos._exit(3)", "def f():\n    return x + y"]
    with Session(cells, SessionConfig(cell_timeout=2, call_timeout=2)) as s:
        s.start()
        assert [r.status for r in s.reports] == ["ok", "timeout", "ok", "crash", "ok"]
        replies = s.call([{"fn": "f", "args": [], "kwargs": {}, "watch": []}])
        assert replies[0]["value"] == 3
        assert s.restarts == 2


@needs_sandbox
def test_a_call_that_hangs_is_stopped_and_the_next_call_restarts_the_code():
    cells = ["def slow(n):\n    while n:\n        pass\n    return 'done'"]
    with Session(cells, SessionConfig(call_timeout=1.5)) as s:
        s.start()
        t = time.monotonic()
        f = s.call([{"fn": "slow", "args": [0], "kwargs": {}, "watch": []},
                    {"fn": "slow", "args": [1], "kwargs": {}, "watch": []}])
        assert isinstance(f, Failure) and f.kind == "timeout" and f.step == 1
        assert time.monotonic() - t < 5
        assert s.call([{"fn": "slow", "args": [0], "kwargs": {}, "watch": []}])[0]["value"] == "done"


@needs_sandbox
def test_a_reply_over_the_size_limit_is_refused():
    with Session(["import numpy as np\ndef big():\n    return np.ones(1 << 22)"],
                 SessionConfig(max_reply_bytes=1 << 20)) as s:
        s.start()
        f = s.call([{"fn": "big", "args": [], "kwargs": {}, "watch": []}])
        assert isinstance(f, Failure) and f.kind == "protocol" and "over the limit" in f.detail


def test_without_a_sandbox_setting_runs_the_worker_as_a_plain_process():
    with Session(["import numpy as np\ndef f(a):\n    return a * 2"], SessionConfig(sandbox="none")) as s:
        s.start()
        assert np.array_equal(s.call([{"fn": "f", "args": [np.ones(2)], "kwargs": {}, "watch": [0]}])[0]["value"],
                              [2, 2])


def test_an_unusable_sandbox_refuses_with_what_to_do(monkeypatch):
    monkeypatch.setattr(bwrap.shutil, "which", lambda name: None)
    with pytest.raises(bwrap.SandboxUnavailable) as e:
        bwrap.probe()
    assert "apt-get install bubblewrap" in str(e.value) and "sandbox = 'none'" in str(e.value)


# ---------------------------------------------------------------- test cells the grader reads
def test_test_cells_are_read_not_run():
    calls = parse_test_cell('"""doc"""\nfrom bnref.grading import check_batchnorm_forward\n'
                            'check_batchnorm_forward(batchnorm_forward, case="normalise")\n')
    assert [(c.exercise, c.functions, c.case) for c in calls] == [("batchnorm_forward", ("batchnorm_forward",), "normalise")]
    for bad in ["print(1)", "check_batchnorm_forward(f, case=x)", "check_nope(f, case='a')",
                "check_batchnorm_forward(f, g, case='normalise')", "import os; os.system('x')"]:
        with pytest.raises(UnreadableTestCell):
            parse_test_cell(bad)


def test_ipython_syntax_becomes_plain_python():
    src = to_python("%timeit 1 + 1\n!ls -l\nx = 3\n")
    compile(src, "<cell>", "exec")
    assert "get_ipython()" in src and "x = 3" in src


# ---------------------------------------------------------------- the same verdict in both places
LEARNER = {
    "right": """
def batchnorm_forward(x, gamma, beta, eps=1e-5):
    mean = x.mean(axis=0)
    return gamma * (x - mean) / np.sqrt(((x - mean) ** 2).mean(axis=0) + eps) + beta, None
""",
    "unbiased": """
def batchnorm_forward(x, gamma, beta, eps=1e-5):
    return gamma * (x - x.mean(axis=0)) / np.sqrt(x.var(axis=0, ddof=1) + eps) + beta, None
""",
    "raises": """
def batchnorm_forward(x, gamma, beta, eps=1e-5):
    return x + np.ones(7), None
""",
    "in_place": """
def batchnorm_forward(x, gamma, beta, eps=1e-5):
    x -= x.mean(axis=0)
    return gamma * x / np.sqrt((x ** 2).mean(axis=0) + eps) + beta, None
""",
    "float64_out": """
def batchnorm_forward(x, gamma, beta, eps=1e-5):
    mean = x.mean(axis=0)
    return np.float64(1) * gamma * (x - mean) / np.sqrt(x.var(axis=0) + eps) + beta, None
""",
    "wrong_structure": """
def batchnorm_forward(x, gamma, beta, eps=1e-5):
    return x
""",
}


@needs_sandbox
@pytest.mark.parametrize("name", sorted(LEARNER))
def test_the_sandbox_and_the_kernel_give_the_same_verdicts(name):
    from bnref.grading.runner import _SandboxExecutor
    src = "import numpy as np\n" + LEARNER[name]
    ex = EXERCISES["batchnorm_forward"]
    ns = {}
    import linecache                           # as IPython does for a notebook cell
    linecache.cache["<learner cell>"] = (len(src), None, src.splitlines(True), "<learner cell>")
    exec(compile(src, "<learner cell>", "exec"), ns)
    names = {"batchnorm_forward": "batchnorm_forward"}
    with Session([src], FAST) as session:
        session.start()
        for case in ex.cases:
            for nonce in (0, 7):                  # the same inputs on both sides
                boxed = evaluate(ex, case, names, _SandboxExecutor(session, time.monotonic() + 5), nonce=nonce)
                local = evaluate(ex, case, names, LocalExecutor(ns), nonce=nonce)
                assert (boxed.passed, _no_location(boxed.message)) == \
                    (local.passed, _no_location(local.message)), (case, nonce)


def _no_location(msg):
    """Messages name the learner's line, whose number depends on how the cells were split."""
    import re
    return re.sub(r"\(line \d+, in ", "(line N, in ", msg)


# ---------------------------------------------------------------- any install of bnref in the kernel
def test_the_visible_checks_work_with_bnref_found_only_on_PYTHONPATH(tmp_path):
    """The checks run in the learner's own process: no subprocess, so no ``python -I`` pitfall."""
    import shutil
    shutil.copytree(ROOT / "bnref", tmp_path / "pp" / "bnref", ignore=shutil.ignore_patterns("__pycache__"))
    code = textwrap.dedent("""
        import sys, numpy as np, bnref
        from bnref.grading import check_batchnorm_forward, GradingError
        assert bnref.__file__.startswith(sys.argv[1]), bnref.__file__
        def batchnorm_forward(x, gamma, beta, eps=1e-5):
            m = x.mean(axis=0)
            return gamma * (x - m) / np.sqrt(((x - m) ** 2).mean(axis=0) + eps) + beta, None
        check_batchnorm_forward(batchnorm_forward, case="normalise")
        try:
            check_batchnorm_forward(lambda x, g, b, eps=1e-5: (x, None), case="normalise")
        except GradingError as e:
            print("failed as it should:", str(e)[:40])
        """)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "pp")}
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "pp")], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Passed: batchnorm_forward, case 'normalise'." in res.stdout and "failed as it should" in res.stdout
