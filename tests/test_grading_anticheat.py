"""bnref.grading cannot be fooled: calling the reference scores 0, patching the grader fails.

Each test plays a learner's cell (source text run in a fresh namespace), then runs a check the
way a notebook test cell does, and asserts the exact outcome and message.
"""
import builtins
import json
import sys
import textwrap
import types

import numpy as np
import pytest

from bnref.grading._kernel import GradingError, run_check

WRONG_FORWARD = """
def batchnorm_forward(x, gamma, beta, eps=1e-5):
    mean = x.mean(axis=0)
    var = x.var(axis=0, ddof=1)                    # wrong: unbiased
    return gamma * (x - mean) / np.sqrt(var + eps) + beta, None
"""

TEST_CELL = textwrap.dedent("""
    import sys; [sys.modules.pop(m) for m in list(sys.modules) if m.partition(".")[0] == "bnref"]
    from bnref.grading import check_batchnorm_forward
    check_batchnorm_forward(batchnorm_forward, case="normalise")
""")


def learner(src):
    ns = {"np": np, "__name__": "__main__"}
    exec(compile(textwrap.dedent(src), "<learner cell>", "exec"), ns)
    return ns


def failure(check, funcs, case="normalise"):
    with pytest.raises(GradingError) as e:
        run_check(check, funcs, case)
    return str(e.value)


@pytest.fixture
def restore_modules():
    """The anti-cheat tests evict and patch modules; put everything back afterwards."""
    saved = dict(sys.modules)
    yield
    for name in [m for m in sys.modules if m not in saved]:
        del sys.modules[name]
    sys.modules.update(saved)


# ---------------------------------------------------------------- calling the reference
@pytest.mark.parametrize("src, named", [
    ("import bnref\ndef batchnorm_forward(x, gamma, beta, eps=1e-5):\n"
     "    return bnref.batchnorm_forward(x, gamma, beta, eps)\n", "bnref"),
    ("from bnref.kernels import numpy_bn\n"
     "def batchnorm_forward(x, gamma, beta, eps=1e-5):\n"
     "    y, *_ = numpy_bn.bn_forward_train(x[..., None], gamma, beta, eps)\n"
     "    return y[..., 0], None\n", "bnref"),
    # obtained by name at run time: invisible to a static scan, seen by the profiler
    ("def batchnorm_forward(x, gamma, beta, eps=1e-5):\n"
     "    f = getattr(__import__('bn' + 'ref'), 'batchnorm_' + 'forward')\n"
     "    return f(x, gamma, beta, eps)\n", "bnref/functional.py"),
    ("import torch\ndef batchnorm_forward(x, gamma, beta, eps=1e-5):\n"
     "    t = torch.nn.functional.batch_norm(torch.from_numpy(x), None, None, torch.from_numpy(gamma),\n"
     "                                       torch.from_numpy(beta), training=True, eps=eps)\n"
     "    return t.numpy(), None\n", "batch_norm"),
    ("import torch\nbn = torch.nn.BatchNorm1d(3, dtype=torch.float64)\n"
     "def batchnorm_forward(x, gamma, beta, eps=1e-5):\n"
     "    return bn(torch.from_numpy(x)).detach().numpy(), None\n", "orm"),
])
def test_calling_a_reference_batchnorm_scores_zero(src, named):
    if "torch" in src:
        pytest.importorskip("torch")
    f = learner(src)["batchnorm_forward"]
    msg = failure("batchnorm_forward", (f,))
    assert msg.startswith("Score 0") and named in msg


def test_reference_on_an_untested_branch_is_caught_statically():
    ns = learner("""
    import bnref
    def batchnorm_forward(x, gamma, beta, eps=1e-5):
        if x.shape == (123, 45):          # never a test shape
            return bnref.batchnorm_forward(x, gamma, beta, eps)
        mean = x.mean(axis=0)
        return gamma * (x - mean) / np.sqrt(x.var(axis=0) + eps) + beta, None
    """)
    msg = failure("batchnorm_forward", (ns["batchnorm_forward"],))
    assert msg.startswith("Score 0") and "bnref" in msg


def test_reference_hidden_in_a_helper_function_is_caught():
    ns = learner("""
    from bnref import batchnorm_forward as _helper_impl
    def helper(x, gamma, beta, eps):
        return _helper_impl(x, gamma, beta, eps)
    def batchnorm_forward(x, gamma, beta, eps=1e-5):
        return helper(x, gamma, beta, eps)
    """)
    assert failure("batchnorm_forward", (ns["batchnorm_forward"],)).startswith("Score 0")


def test_reference_called_from_a_thread_is_caught():
    ns = learner("""
    import threading, bnref
    def batchnorm_forward(x, gamma, beta, eps=1e-5):
        box = []
        t = threading.Thread(target=lambda: box.append(getattr(bnref, "batchnorm_forward")(x, gamma, beta, eps)))
        t.start(); t.join()
        return box[0]
    """)
    assert failure("batchnorm_forward", (ns["batchnorm_forward"],)).startswith("Score 0")


def test_disabling_the_profiler_inside_the_function_scores_zero():
    ns = learner("""
    import sys
    def batchnorm_forward(x, gamma, beta, eps=1e-5):
        sys.setprofile(None)
        mean = x.mean(axis=0)
        return (x - mean) / np.sqrt(x.var(axis=0) + eps), None
    """)
    msg = failure("batchnorm_forward", (ns["batchnorm_forward"],))
    assert msg.startswith("Score 0") and "setprofile" in msg


# ---------------------------------------------------------------- patching the grader's tools
def test_patched_numpy_comparisons_do_not_turn_a_wrong_answer_into_a_pass(monkeypatch):
    f = learner(WRONG_FORWARD)["batchnorm_forward"]
    monkeypatch.setattr(np, "allclose", lambda *a, **k: True)
    monkeypatch.setattr(np, "isclose", lambda a, b, *r, **k: np.ones(np.shape(a), bool))
    monkeypatch.setattr(np.testing, "assert_allclose", lambda *a, **k: None)
    monkeypatch.setattr(np, "array_equal", lambda *a, **k: True)
    monkeypatch.setattr(np, "max", lambda *a, **k: 0.0)
    monkeypatch.setattr(np, "abs", lambda a, *r, **k: a * 0)
    monkeypatch.setattr(json, "loads", lambda *a, **k: {"passed": True})
    msg = failure("batchnorm_forward", (f,))
    assert "unbiased" in msg


def test_patched_numpy_statistics_only_change_the_learners_own_result(monkeypatch):
    # np.var patched to be "biased" for everyone: the learner's x.var(ddof=1) is still wrong,
    # and the judge (its own process) is unaffected.
    f = learner(WRONG_FORWARD)["batchnorm_forward"]
    monkeypatch.setattr(np, "var", lambda a, *r, **k: np.zeros(a.shape[1]))
    assert "unbiased" in failure("batchnorm_forward", (f,))


def test_replaced_grading_module_is_discarded_by_the_test_cell(restore_modules):
    ns = learner(WRONG_FORWARD)
    fake = types.ModuleType("bnref.grading")
    fake.check_batchnorm_forward = lambda *a, **k: None       # a check that always passes
    sys.modules["bnref.grading"] = fake
    import bnref
    bnref.grading = fake
    with pytest.raises(AssertionError, match="unbiased"):
        exec(TEST_CELL, ns)


def test_replaced_check_name_is_rebound_by_the_test_cell(restore_modules):
    ns = learner(WRONG_FORWARD + "\ncheck_batchnorm_forward = lambda *a, **k: None\n")
    with pytest.raises(AssertionError, match="unbiased"):
        exec(TEST_CELL, ns)


@pytest.mark.parametrize("target, name", [
    (builtins, "isinstance"), (builtins, "memoryview"), (builtins, "getattr"),
])
def test_replaced_builtins_score_zero(monkeypatch, target, name):
    f = learner(WRONG_FORWARD)["batchnorm_forward"]
    real = getattr(target, name)
    if isinstance(real, type):
        fake = type(name, (), {"__new__": lambda cls, *a: real(*a)})
    else:
        def fake(*a, **k):
            return real(*a, **k)
    monkeypatch.setattr(target, name, fake)
    msg = failure("batchnorm_forward", (f,))
    assert msg.startswith("Score 0") and name in msg


def test_replaced_setprofile_scores_zero(monkeypatch):
    f = learner(WRONG_FORWARD)["batchnorm_forward"]
    monkeypatch.setattr(sys, "setprofile", lambda fn: None)
    assert "sys.setprofile was replaced" in failure("batchnorm_forward", (f,))


def test_replaced_interpreter_path_scores_zero(monkeypatch, tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nprintf 'PASS\\n'\n")
    fake.chmod(0o755)
    f = learner(WRONG_FORWARD)["batchnorm_forward"]
    monkeypatch.setattr(sys, "executable", str(fake))
    assert "sys.executable was replaced" in failure("batchnorm_forward", (f,))


def test_replaced_spawn_function_scores_zero(monkeypatch):
    import os
    f = learner(WRONG_FORWARD)["batchnorm_forward"]
    monkeypatch.setattr(os, "posix_spawn", lambda *a, **k: 0)
    assert "posix.posix_spawn was replaced" in failure("batchnorm_forward", (f,))


def test_correct_answer_still_passes_after_harmless_patches(monkeypatch):
    ns = learner("""
    def batchnorm_forward(x, gamma, beta, eps=1e-5):
        mean = x.mean(axis=0)
        return gamma * (x - mean) / np.sqrt(x.var(axis=0) + eps) + beta, None
    """)
    monkeypatch.setattr(np, "allclose", lambda *a, **k: False)   # sabotage only hurts... nobody
    run_check("batchnorm_forward", (ns["batchnorm_forward"],), "normalise")


def test_patching_builtins_or_os_path_during_the_call_does_not_blind_the_watch(monkeypatch):
    import os.path
    monkeypatch.setattr(os.path, "dirname", lambda p: "/nowhere")
    monkeypatch.setattr(os.path, "abspath", lambda p: "/nowhere/x")
    ns = learner("""
    import builtins
    def batchnorm_forward(x, gamma, beta, eps=1e-5):
        f = vars(__import__("bn" + "ref"))["batchnorm_" + "forward"]   # no static reference
        real = builtins.getattr
        builtins.getattr = lambda *a: ""                 # blind a profiler that used getattr
        try:
            return f(x, gamma, beta, eps)
        finally:
            builtins.getattr = real
    """)
    msg = failure("batchnorm_forward", (ns["batchnorm_forward"],))
    assert msg.startswith("Score 0") and "bnref" in msg


def test_builtins_left_replaced_by_the_function_score_zero():
    ns = learner("""
    import builtins
    _real_len = builtins.len
    def batchnorm_forward(x, gamma, beta, eps=1e-5):
        builtins.len = lambda obj: _real_len(obj)
        mean = x.mean(axis=0)
        return gamma * (x - mean) / np.sqrt(x.var(axis=0) + eps) + beta, None
    """)
    try:
        msg = failure("batchnorm_forward", (ns["batchnorm_forward"],))
    finally:
        builtins.len = ns["_real_len"]
    assert msg.startswith("Score 0") and "builtins.len" in msg
