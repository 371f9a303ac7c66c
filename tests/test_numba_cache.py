"""The compiled kernels' disk cache, as several processes meet it.

Numba's cache is not safe when two processes compile the same functions at once: each writes
its own index, and machine code can end up filed under another signature (a crash at the
next load). bnref compiles every specialisation in one go under a file lock
(``bnref.kernels.numba_bn.ensure_compiled``). These tests start processes together on an
empty cache (``NUMBA_CACHE_DIR``), then one more that must only load.
"""
import os
import subprocess
import sys

import pytest

pytest.importorskip("numba", reason="numba is not installed: the compiled kernels are not used")
pytestmark = pytest.mark.slow            # a cold compilation: about 20 s per run

CHECK = """
import numpy as np, bnref
assert bnref.get_cpu_kernels() == "numba"
rng = np.random.default_rng(0)
for dtype in (np.float32, np.float64):
    for shape, axis in [((64, 8), 1), ((4, 6, 7, 7), 1), ((4, 7, 7, 6), -1), ((512, 96), 1)]:
        x = rng.normal(3.0, 2.0, shape).astype(dtype)
        y, cache = bnref.batchnorm_forward(x, None, None, axis=axis)
        dx = bnref.batchnorm_backward(y, cache)[0]
        with bnref.use_cpu_kernels("reference"):
            y_ref, cache_ref = bnref.batchnorm_forward(x, None, None, axis=axis)
            dx_ref = bnref.batchnorm_backward(y_ref, cache_ref)[0]
        tol = 1e-4 if dtype == np.float32 else 1e-10
        assert np.allclose(y, y_ref, atol=tol) and np.allclose(dx, dx_ref, atol=tol), (dtype, shape)
print("ok")
"""


def _start(cache_dir):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)}
    env.pop("BNREF_CPU_KERNELS", None)
    return subprocess.Popen([sys.executable, "-c", CHECK], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_processes_starting_together_on_an_empty_cache_all_get_right_answers(tmp_path):
    procs = [_start(tmp_path) for _ in range(3)]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0 and out.strip() == "ok", err[-2000:]
    assert list(tmp_path.rglob("bnref-compile.lock")), "the compile lock lives next to the cache"
    files = lambda: {(f, f.stat().st_mtime_ns, f.stat().st_size)            # noqa: E731
                     for f in tmp_path.rglob("*") if f.suffix in (".nbi", ".nbc")}
    before = files()
    p = _start(tmp_path)                 # the cache those processes left: load only
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0 and out.strip() == "ok", err[-2000:]
    assert before and files() == before, "a process that finds the cache complete writes nothing to it"


def test_a_file_system_without_locks_compiles_unlocked_instead_of_failing(monkeypatch):
    import fcntl

    from bnref.kernels import numba_bn

    def no_locks(f, op):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    monkeypatch.setattr(numba_bn, "_READY", False)
    assert numba_bn.ensure_compiled() > 0 and numba_bn._READY
