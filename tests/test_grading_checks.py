"""bnref.grading: each check passes the right answer, fails each known mistake with its message.

The learner's functions are written here as source text, as a learner would type them, and
run through the real checks in this process (the path of the visible test cells; the
sandboxed path gives the same verdicts: ``test_grading_sandbox.py``). Every expectation
says which cases pass, so partial credit is pinned down per mistake.
"""
import re
import textwrap

import numpy as np
import pytest

from bnref.grading.exercise import LocalExecutor, evaluate
from bnref.grading.exercises import EXERCISES


def define(src, **extra):
    """Define the learner's functions from source, in a fresh namespace with ``np``."""
    ns = {"np": np, **extra}
    exec(compile(textwrap.dedent(src), "<learner cell>", "exec"), ns)
    return ns


def outcome(check, funcs, case, nonce=None):
    """``"pass"`` or the failure message (a pass with a note counts as a pass)."""
    ex = EXERCISES[check]
    names = {role: f"{role}_{i}" for i, role in enumerate(ex.functions)}
    namespace = {names[role]: f for role, f in zip(ex.functions, funcs)}
    verdict = evaluate(ex, case, names, LocalExecutor(namespace), nonce=nonce)
    return "pass" if verdict.passed else verdict.message


# The autograder draws fresh inputs for every case (a nonce mixed into the seeds): every
# expectation must hold for the learner's fixed inputs (nonce 0) and for fresh ones alike.
NONCES = (0, 11, 2024, 987654321)


def assert_outcomes(check, funcs, expected):
    """``expected``: case -> "pass" or a substring that the failure message must contain."""
    for nonce in NONCES:
        got = {case: outcome(check, funcs, case, nonce) for case in expected}
        for case, want in expected.items():
            if want == "pass":
                assert got[case] == "pass", f"{check}/{case} (nonce {nonce}) should pass, failed with: {got[case]}"
            else:
                assert got[case] != "pass", f"{check}/{case} (nonce {nonce}) should fail ({want!r}) but passed"
                assert want in got[case], f"{check}/{case} (nonce {nonce}): expected {want!r} in message: {got[case]}"


# ---------------------------------------------------------------- ps1: forward
FWD = """
def batchnorm_forward(x, gamma, beta, eps=1e-5):
    mean = x.mean(axis=0)
    var = {var}
    x_hat = (x - mean) / {denominator}
    out = {out}
    return out, (x_hat, gamma)
"""
CORRECT = dict(var="((x - mean) ** 2).mean(axis=0)", denominator="np.sqrt(var + eps)", out="gamma * x_hat + beta")


def fwd(**change):
    return define(FWD.format(**{**CORRECT, **change}))["batchnorm_forward"]


FWD_CASES = ["normalise", "scale_shift", "eps", "shapes", "float32"]


@pytest.mark.parametrize("name, change, expected", [
    ("correct", {}, dict.fromkeys(FWD_CASES, "pass")),
    ("unbiased variance", dict(var="x.var(axis=0, ddof=1)"),
     dict(normalise="unbiased", scale_shift="pass", eps="pass", shapes="unbiased", float32="unbiased")),
    ("missing eps", dict(denominator="np.sqrt(var)"),
     dict(normalise="pass", scale_shift="pass", eps="eps is missing", shapes="pass", float32="pass")),
    ("eps outside the sqrt", dict(denominator="(np.sqrt(var) + eps)"),
     dict(normalise="pass", scale_shift="pass", eps="inside", shapes="pass", float32="pass")),
    ("wrong axis", dict(var="x.var(axis=1, keepdims=True)",
                        denominator="np.sqrt(var + eps)"),   # mean still over axis 0: wrong anyway
     dict(normalise="Wrong result", scale_shift="Wrong result")),
    ("beta missing", dict(out="gamma * x_hat"),
     dict(normalise="pass", scale_shift="beta is not added", eps="beta", shapes="beta")),
    ("gamma and beta swapped", dict(out="beta * x_hat + gamma"),
     dict(normalise="swapped", scale_shift="swapped")),
    ("float64 output for float32 input", dict(out="gamma * x_hat + beta + np.zeros(x.shape)"),
     dict(normalise="pass", shapes="pass", float32="float64 for float32 input")),
])
def test_batchnorm_forward_mistakes(name, change, expected):
    assert_outcomes("batchnorm_forward", (fwd(**change),), expected)


def test_forward_stats_over_rows_is_called_the_wrong_axis():
    f = define("""
    def batchnorm_forward(x, gamma, beta, eps=1e-5):
        mean = x.mean(axis=1, keepdims=True)
        var = x.var(axis=1, keepdims=True)
        return gamma * (x - mean) / np.sqrt(var + eps) + beta, None
    """)["batchnorm_forward"]
    assert_outcomes("batchnorm_forward", (f,), dict(normalise="wrong axis", scale_shift="wrong axis"))


def test_forward_that_raises_reports_the_exception():
    f = define("""
    def batchnorm_forward(x, gamma, beta, eps=1e-5):
        return x + np.ones(7), None
    """)["batchnorm_forward"]
    msg = outcome("batchnorm_forward", (f,), "normalise")
    assert "raised ValueError" in msg and "Check the shapes" in msg


@pytest.mark.parametrize("body, message", [
    ("raise NotImplementedError()", "not implemented yet"),
    ("return x", "must return (out, cache)"),
    ("return None, None", "out is None"),
    ("return [[0.0]], None", "has shape"),
])
def test_forward_structure_errors(body, message):
    f = define(f"def batchnorm_forward(x, gamma, beta, eps=1e-5):\n    {body}\n")["batchnorm_forward"]
    assert message in outcome("batchnorm_forward", (f,), "normalise")


def test_renamed_eps_argument_is_reported():
    f = define("""
    def batchnorm_forward(x, gamma, beta, epsilon=1e-5):
        return x, None
    """)["batchnorm_forward"]
    assert "Keep the function's name and arguments" in outcome("batchnorm_forward", (f,), "eps")


# ---------------------------------------------------------------- ps1: running statistics
RUN = """
def running_stats_update(running_mean, running_var, x, momentum=0.1):
    N = x.shape[0]
    mean = x.mean(axis=0)
    var = {var}
    running_mean = {m}
    running_var = {v}
    return running_mean, running_var
"""
RUN_OK = dict(var="x.var(axis=0, ddof=1)", m="(1 - momentum) * running_mean + momentum * mean",
              v="(1 - momentum) * running_var + momentum * var")
RUN_FLIP = dict(m="momentum * running_mean + (1 - momentum) * mean",
                v="momentum * running_var + (1 - momentum) * var")


def run(**change):
    return define(RUN.format(**{**RUN_OK, **change}))["running_stats_update"]


@pytest.mark.parametrize("name, change, expected", [
    ("correct", {}, dict(momentum="pass", unbiased="pass", sequence="pass", float32="pass")),
    ("momentum flipped", RUN_FLIP,
     dict(momentum="momentum convention is flipped", unbiased="pass", sequence="flipped", float32="flipped")),
    ("biased running variance", dict(var="x.var(axis=0)"),
     dict(momentum="pass", unbiased="unbiased one", sequence="unbiased", float32="unbiased")),
    ("both", dict(var="x.var(axis=0)", **RUN_FLIP),
     dict(momentum="two mistakes", unbiased="unbiased one")),
    ("momentum ignored", dict(m="0.9 * running_mean + 0.1 * mean", v="0.9 * running_var + 0.1 * var"),
     dict(momentum="pass", unbiased="momentum argument is ignored", sequence="ignored")),
    ("stale buffers (never updated)", dict(m="running_mean", v="running_var"),
     dict(momentum="never updated (stale)", unbiased="never updated", sequence="never updated")),
])
def test_running_stats_mistakes(name, change, expected):
    assert_outcomes("running_stats_update", (run(**change),), expected)


# ---------------------------------------------------------------- ps1: inference
INF = """
def batchnorm_inference(x, gamma, beta, running_mean, running_var, eps=1e-5):
    return {body}
"""


@pytest.mark.parametrize("body, expected", [
    ("gamma * (x - running_mean) / np.sqrt(running_var + eps) + beta",
     dict(running_stats="pass", eps="pass", single_example="pass")),
    ("gamma * (x - x.mean(axis=0)) / np.sqrt(x.var(axis=0) + eps) + beta",
     dict(running_stats="batch's own mean", eps="batch", single_example="batch")),
    ("gamma * (x - running_mean) / np.sqrt(running_var) + beta",
     dict(running_stats="pass", eps="eps is missing", single_example="pass")),
    ("gamma * (x - running_mean) / (running_var + eps) + beta",
     dict(running_stats="square root", eps="square root")),
])
def test_inference_mistakes(body, expected):
    f = define(INF.format(body=body))["batchnorm_inference"]
    assert_outcomes("batchnorm_inference", (f,), expected)


# ---------------------------------------------------------------- ps2: backward
FWD_CACHE = define("""
def batchnorm_forward(x, gamma, beta, eps=1e-5):
    mean = x.mean(axis=0)
    var = x.var(axis=0)
    inv_std = 1.0 / np.sqrt(var + eps)
    x_hat = (x - mean) * inv_std
    return gamma * x_hat + beta, (x_hat, inv_std, gamma)
""")["batchnorm_forward"]
BWD = """
def batchnorm_backward(dy, cache):
    x_hat, inv_std, gamma = cache
    N = dy.shape[0]
    dbeta = {dbeta}
    dgamma = {dgamma}
    dx_hat = dy * gamma
    dx = {dx}
    return dx, dgamma, dbeta
"""
BWD_OK = dict(dbeta="dy.sum(axis=0)", dgamma="(dy * x_hat).sum(axis=0)",
              dx="inv_std * (dx_hat - dx_hat.mean(axis=0) - x_hat * (dx_hat * x_hat).mean(axis=0))")


def bwd(**change):
    return define(BWD.format(**{**BWD_OK, **change}))["batchnorm_backward"]


@pytest.mark.parametrize("name, change, expected", [
    ("correct", {}, dict(dgamma_dbeta="pass", dx="pass", shapes="pass", float32="pass")),
    ("no path through the mean", dict(dx="inv_std * (dx_hat - x_hat * (dx_hat * x_hat).mean(axis=0))"),
     dict(dgamma_dbeta="pass", dx="through the batch mean", shapes="mean", float32="mean")),
    ("no path through the variance", dict(dx="inv_std * (dx_hat - dx_hat.mean(axis=0))"),
     dict(dgamma_dbeta="pass", dx="through the batch variance")),
    ("mean and variance treated as constants", dict(dx="inv_std * dx_hat"),
     dict(dgamma_dbeta="pass", dx="constants")),
    ("dgamma and dbeta not summed", dict(dbeta="dy", dgamma="dy * x_hat"),
     dict(dgamma_dbeta="not summed over the batch", dx="pass", shapes="not summed")),
    ("dgamma without x_hat", dict(dgamma="dy.sum(axis=0)"),
     dict(dgamma_dbeta="missing the factor x_hat", dx="pass")),
])
def test_batchnorm_backward_mistakes(name, change, expected):
    assert_outcomes("batchnorm_backward", (FWD_CACHE, bwd(**change)), expected)


def test_backward_reports_a_wrong_forward():
    wrong_fwd = define("""
    def batchnorm_forward(x, gamma, beta, eps=1e-5):
        mean = x.mean(axis=0)
        inv_std = 1.0 / np.sqrt(x.var(axis=0, ddof=1) + eps)
        x_hat = (x - mean) * inv_std
        return gamma * x_hat + beta, (x_hat, inv_std, gamma)
    """)["batchnorm_forward"]
    msg = outcome("batchnorm_backward", (wrong_fwd, bwd()), "dx")
    assert "forward pass's output is wrong too" in msg


# ---------------------------------------------------------------- ps3: spatial
SP_FWD = """
def spatial_batchnorm_forward(x, gamma, beta, eps=1e-5):
    N, C, H, W = x.shape
    {body}
"""
SP_OK = """mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = x.var(axis=(0, 2, 3), keepdims=True)
    x_hat = (x - mean) / np.sqrt(var + eps)
    return gamma.reshape(1, C, 1, 1) * x_hat + beta.reshape(1, C, 1, 1), (x_hat, var, gamma, eps)"""
SP_RESHAPE_BUG = """x2 = x.reshape(-1, C)
    mean, var = x2.mean(axis=0), x2.var(axis=0)
    out = (gamma * (x2 - mean) / np.sqrt(var + eps) + beta).reshape(N, C, H, W)
    return out, None"""
SP_INSTANCE = """mean = x.mean(axis=(2, 3), keepdims=True)
    var = x.var(axis=(2, 3), keepdims=True)
    x_hat = (x - mean) / np.sqrt(var + eps)
    return gamma.reshape(1, C, 1, 1) * x_hat + beta.reshape(1, C, 1, 1), None"""


@pytest.mark.parametrize("body, expected", [
    (SP_OK, dict(axes="pass", exact="pass", shapes="pass", float32="pass")),
    (SP_RESHAPE_BUG, dict(axes="x.reshape(-1, C) mixes channels", exact="reshape", shapes="reshape")),
    (SP_INSTANCE, dict(axes="InstanceNorm", exact="InstanceNorm")),
])
def test_spatial_forward_mistakes(body, expected):
    f = define(SP_FWD.format(body=body))["spatial_batchnorm_forward"]
    assert_outcomes("spatial_batchnorm_forward", (f,), expected)


SP_BWD = """
def spatial_batchnorm_backward(dy, cache):
    x_hat, var, gamma, eps = cache
    N, C, H, W = dy.shape
    m = N * H * W
    inv_std = 1 / np.sqrt(var + eps)
    dbeta = {dbeta}
    dgamma = {dgamma}
    g = gamma.reshape(1, C, 1, 1) * inv_std
    dx = g / m * (m * dy - dy.sum(axis=(0, 2, 3), keepdims=True)
                  - x_hat * (dy * x_hat).sum(axis=(0, 2, 3), keepdims=True))
    return dx, dgamma, dbeta
"""


@pytest.mark.parametrize("dbeta, dgamma, expected", [
    ("dy.sum(axis=(0, 2, 3))", "(dy * x_hat).sum(axis=(0, 2, 3))",
     dict(dgamma_dbeta="pass", dx="pass", shapes="pass")),
    ("dy.sum(axis=0)", "(dy * x_hat).sum(axis=0)",
     dict(dgamma_dbeta="summed over the batch only", dx="pass", shapes="summed over the batch only")),
])
def test_spatial_backward_mistakes(dbeta, dgamma, expected):
    fwd_ = define(SP_FWD.format(body=SP_OK))["spatial_batchnorm_forward"]
    bwd_ = define(SP_BWD.format(dbeta=dbeta, dgamma=dgamma))["spatial_batchnorm_backward"]
    assert_outcomes("spatial_batchnorm_backward", (fwd_, bwd_), expected)


# ---------------------------------------------------------------- ps4: folding
FOLD = """
def fold_batchnorm(W, b, gamma, beta, running_mean, running_var, eps=1e-5):
    scale = gamma / np.sqrt(running_var + eps)
    {none}
    return {W_f}, {b_f}
"""
FOLD_OK = dict(none="b = np.zeros_like(running_mean) if b is None else b", W_f="W * scale",
               b_f="(b - running_mean) * scale + beta")


@pytest.mark.parametrize("name, change, expected", [
    ("correct", {}, dict(W_folded="pass", b_folded="pass", no_bias="pass", shapes="pass")),
    ("sign of the mean", dict(b_f="(b + running_mean) * scale + beta"),
     dict(W_folded="pass", b_folded="wrong sign", no_bias="wrong sign", shapes="wrong sign")),
    ("b not scaled", dict(b_f="b - running_mean * scale + beta"),
     dict(W_folded="pass", b_folded="not multiplied by the scale", no_bias="pass")),
    ("scale inverted", dict(W_f="W / scale"), dict(W_folded="inverted", b_folded="pass")),
    ("PyTorch layout", dict(W_f="(W * scale).T"),
     dict(W_folded="transposed", b_folded="pass", shapes="transposed")),
    ("rows scaled", dict(W_f="W * scale[:, None]"),   # named in every case, not a broadcast error
     dict(W_folded="rows of W", b_folded="pass", no_bias="rows of W", float32_no_bias="rows of W",
          shapes="rows of W")),
    ("b None not handled", dict(none="pass"),
     dict(W_folded="pass", b_folded="pass", no_bias="raised TypeError", shapes="raised TypeError")),
])
def test_fold_mistakes(name, change, expected):
    f = define(FOLD.format(**{**FOLD_OK, **change}))["fold_batchnorm"]
    assert_outcomes("fold_batchnorm", (f,), expected)


def test_fold_rows_on_a_square_layer_is_named():
    f = define(FOLD.format(**{**FOLD_OK, "W_f": "W * scale[:, None]"}))["fold_batchnorm"]
    assert "rows of W" in outcome("fold_batchnorm", (f,), "shapes")


def test_every_fold_case_has_a_square_W_and_most_a_non_square_one():
    # scaling the rows of W runs on a square W (named from its values) and raises on a non-square
    # one (named from its broadcast error): the cases try both
    from bnref.grading.exercise import _rng_factory

    for nonce in NONCES:
        for case in EXERCISES["fold_batchnorm"].cases.values():
            trials = case.build(_rng_factory(nonce))
            assert trials[0]["W"].shape[0] == trials[0]["W"].shape[1], case.name
            if case.name != "b_folded":          # b alone: square only (see the module)
                assert any(t["W"].shape[0] != t["W"].shape[1] for t in trials), case.name


# ---------------------------------------------------------------- ps5: LayerNorm, GroupNorm
LN = """
def layernorm_forward(x, gamma, beta, eps=1e-5):
    mean = x.mean(axis={a}, keepdims=True)
    var = x.var(axis={a}, keepdims=True)
    inv_std = 1 / np.sqrt(var + eps)
    x_hat = (x - mean) * inv_std
    return gamma * x_hat + beta, (x_hat, inv_std, gamma)

def layernorm_backward(dy, cache):
    x_hat, inv_std, gamma = cache
    g = dy * gamma
    dx = {dx}
    return dx, {dgamma}, {dbeta}
"""
LN_OK = dict(a=1, dx="inv_std * (g - g.mean(axis=1, keepdims=True) - x_hat * (g * x_hat).mean(axis=1, keepdims=True))",
             dgamma="(dy * x_hat).sum(axis=0)", dbeta="dy.sum(axis=0)")


def test_layernorm_correct_and_batch_axis():
    ok = define(LN.format(**LN_OK))
    assert_outcomes("layernorm_forward", (ok["layernorm_forward"],), dict(rows="pass", exact="pass", shapes="pass"))
    assert_outcomes("layernorm_backward", (ok["layernorm_forward"], ok["layernorm_backward"]),
                    dict(dgamma_dbeta="pass", dx="pass", shapes="pass"))
    bn = define(LN.format(**{**LN_OK, "a": 0}))
    assert_outcomes("layernorm_forward", (bn["layernorm_forward"],), dict(rows="BatchNorm", exact="BatchNorm"))


def test_layernorm_backward_mistakes():
    ns = define(LN.format(**{**LN_OK, "dgamma": "(dy * x_hat).sum(axis=1)", "dbeta": "dy.sum(axis=1)",
                             "dx": "inv_std * (g - x_hat * (g * x_hat).mean(axis=1, keepdims=True))"}))
    assert_outcomes("layernorm_backward", (ns["layernorm_forward"], ns["layernorm_backward"]),
                    dict(dgamma_dbeta="summed over the features", dx="each row's mean"))


GN = """
def groupnorm_forward(x, gamma, beta, G, eps=1e-5):
    N, C, H, W = x.shape
    xg = x.reshape({shape})
    mean = xg.mean(axis={axes}, keepdims=True)
    var = xg.var(axis={axes}, keepdims=True)
    x_hat = ((xg - mean) / np.sqrt(var + eps)).reshape(N, C, H, W)
    return gamma.reshape(1, C, 1, 1) * x_hat + beta.reshape(1, C, 1, 1), None
"""


@pytest.mark.parametrize("shape, axes, expected", [
    ("N, G, C // G, H, W", "(2, 3, 4)", dict(groups="pass", exact="pass", shapes="pass")),
    ("N, C // G, G, H, W", "(1, 3, 4)", dict(groups="CONSECUTIVE", exact="CONSECUTIVE", shapes="CONSECUTIVE")),
    ("N, C, 1, H, W", "(2, 3, 4)", dict(groups="InstanceNorm", exact="InstanceNorm")),
    ("N, 1, C, H, W", "(2, 3, 4)", dict(groups="LayerNorm", exact="LayerNorm")),
    ("N, G, C // G, H, W", "(0, 2, 3, 4)", dict(groups="batch axis", exact="batch axis")),
])
def test_groupnorm_mistakes(shape, axes, expected):
    f = define(GN.format(shape=shape, axes=axes))["groupnorm_forward"]
    assert_outcomes("groupnorm_forward", (f,), expected)


# ---------------------------------------------------------------- every case can fail
WRONG = {
    "batchnorm_forward": lambda: (fwd(var="x.var(axis=0, ddof=1)", denominator="np.sqrt(var)"),),
    "running_stats_update": lambda: (run(var="x.var(axis=0)", **RUN_FLIP),),
    "batchnorm_inference": lambda: (define(INF.format(
        body="gamma * (x - x.mean(axis=0)) / np.sqrt(x.var(axis=0)) + beta"))["batchnorm_inference"],),
    "batchnorm_backward": lambda: (FWD_CACHE, bwd(dbeta="dy", dgamma="dy", dx="dy")),
    "spatial_batchnorm_forward": lambda: (define(SP_FWD.format(body=SP_RESHAPE_BUG))["spatial_batchnorm_forward"],),
    "spatial_batchnorm_backward": lambda: (define(SP_FWD.format(body=SP_OK))["spatial_batchnorm_forward"],
                                           define("def spatial_batchnorm_backward(dy, cache):\n"
                                                  "    return dy, dy.sum(axis=0), dy.sum(axis=0)\n")
                                           ["spatial_batchnorm_backward"]),
    "fold_batchnorm": lambda: (define(FOLD.format(**{**FOLD_OK, "W_f": "W", "b_f": "b"}))["fold_batchnorm"],),
    "layernorm_forward": lambda: (define(LN.format(**{**LN_OK, "a": 0}))["layernorm_forward"],),
    "layernorm_backward": lambda: (define(LN.format(**LN_OK))["layernorm_forward"],
                                   define(LN.format(**{**LN_OK, "dx": "g", "dgamma": "dy", "dbeta": "dy"}))
                                   ["layernorm_backward"]),
    "groupnorm_forward": lambda: (define(GN.format(shape="N, C // G, G, H, W", axes="(1, 3, 4)"))
                                  ["groupnorm_forward"],),
}


@pytest.mark.parametrize("check, case", [(c, k) for c in EXERCISES for k in EXERCISES[c].cases])
def test_every_case_fails_a_wrong_answer(check, case):
    """No test that cannot fail: a wrong implementation fails every case of every check."""
    for nonce in NONCES:
        assert outcome(check, WRONG[check](), case, nonce) != "pass"


@pytest.mark.parametrize("check, case", [(c, k) for c in EXERCISES for k in EXERCISES[c].cases])
def test_every_case_fails_the_release_stub(check, case):
    stub = lambda *args, **kwargs: (_ for _ in ()).throw(NotImplementedError())   # noqa: E731
    assert "not implemented yet" in outcome(check, (stub,) * len(EXERCISES[check].functions), case)


def test_an_exception_on_a_later_hidden_input_is_reported():
    f = define("""
    def batchnorm_forward(x, gamma, beta, eps=1e-5):
        if x.shape[0] == 2:
            raise ZeroDivisionError("tiny batch")
        mean = x.mean(axis=0)
        return gamma * (x - mean) / np.sqrt(x.var(axis=0) + eps) + beta, None
    """)["batchnorm_forward"]
    msg = outcome("batchnorm_forward", (f,), "shapes")
    assert "raised ZeroDivisionError: tiny batch" in msg


# ---------------------------------------------------------------- diagnoses added after trying as learners
def test_one_pass_variance_fails_only_the_large_mean_case_and_says_why():
    f = define("""
    def batchnorm_forward(x, gamma, beta, eps=1e-5):
        mean = x.mean(axis=0)
        var = (x ** 2).mean(axis=0) - mean ** 2          # E[x^2] - E[x]^2
        return gamma * (x - mean) / np.sqrt(var + eps) + beta, None
    """)["batchnorm_forward"]
    assert_outcomes("batchnorm_forward", (f,), dict(normalise="pass", scale_shift="pass", eps="pass",
                                                    large_mean="E[x**2] - E[x]**2"))


@pytest.mark.parametrize("check, src, arg", [
    ("batchnorm_forward", """
    def batchnorm_forward(x, gamma, beta, eps=1e-5):
        x -= x.mean(axis=0)
        return gamma * x / np.sqrt((x ** 2).mean(axis=0) + eps) + beta, None
    """, "x"),
    ("batchnorm_forward", """
    def batchnorm_forward(x, gamma, beta, eps=1e-5):
        x_hat = (x - x.mean(axis=0)) / np.sqrt(x.var(axis=0) + eps)
        gamma.shape = (1, -1)                            # reshapes the caller's array
        return gamma * x_hat + beta, None
    """, "gamma"),
    ("fold_batchnorm", """
    def fold_batchnorm(W, b, gamma, beta, running_mean, running_var, eps=1e-5):
        scale = gamma / np.sqrt(running_var + eps)
        W *= scale
        b = np.zeros_like(running_mean) if b is None else b
        return W, (b - running_mean) * scale + beta
    """, "W"),
    ("batchnorm_inference", """
    def batchnorm_inference(x, gamma, beta, running_mean, running_var, eps=1e-5):
        running_mean[:] = 0.9 * running_mean + 0.1 * x.mean(axis=0)
        return gamma * (x - running_mean) / np.sqrt(running_var + eps) + beta
    """, "running_mean"),
])
def test_changing_an_input_in_place_is_named(check, src, arg):
    f = define(src)
    msg = outcome(check, (f[check],), next(iter(EXERCISES[check].cases)))
    assert f"changed its argument {arg} in place" in msg


def test_running_stats_may_be_updated_in_place_as_pytorch_does():
    f = define("""
    def running_stats_update(running_mean, running_var, x, momentum=0.1):
        running_mean *= 1 - momentum
        running_mean += momentum * x.mean(axis=0)
        running_var *= 1 - momentum
        running_var += momentum * x.var(axis=0, ddof=1)
        return running_mean, running_var
    """)["running_stats_update"]
    assert_outcomes("running_stats_update", (f,), dict(momentum="pass", two_steps="pass", sequence="pass"))


def test_inference_that_updates_the_running_statistics_says_so():
    f = define("""
    def batchnorm_inference(x, gamma, beta, running_mean, running_var, eps=1e-5):
        N = x.shape[0]
        mean = 0.9 * running_mean + 0.1 * x.mean(axis=0)
        var = 0.9 * running_var + 0.1 * x.var(axis=0) * N / (N - 1)
        return gamma * (x - mean) / np.sqrt(var + eps) + beta
    """)["batchnorm_inference"]
    assert "running statistics are updated with this batch" in outcome("batchnorm_inference", (f,), "running_stats")


def test_fold_without_bias_in_float32_names_the_bias_dtype():
    f = define(FOLD.format(**{**FOLD_OK, "none": "b = np.zeros(running_mean.shape) if b is None else b"}))
    msg = outcome("fold_batchnorm", (f["fold_batchnorm"],), "float32_no_bias")
    assert "b_folded is float64 for float32 input" in msg and "dtype=W.dtype" in msg
    assert outcome("fold_batchnorm", (f["fold_batchnorm"],), "no_bias") == "pass"


def test_float64_output_is_reported_by_a_visible_case():
    f = fwd(out="gamma * x_hat + beta + np.zeros(x.shape)")
    assert not EXERCISES["batchnorm_forward"].cases["float32_dtype"].hidden
    assert "out is float64 for float32 input" in outcome("batchnorm_forward", (f,), "float32_dtype")


def test_groupnorm_with_G_and_group_size_swapped_fails_every_case():
    f = define(GN.format(shape="N, C // G, G, H, W", axes="(2, 3, 4)"))["groupnorm_forward"]
    assert_outcomes("groupnorm_forward", (f,), dict(groups="G and C // G are swapped", exact="swapped",
                                                    one_example="swapped", shapes="swapped"))


def test_every_groupnorm_trial_has_G_different_from_the_group_size():
    from bnref.grading.exercise import _rng_factory
    for case in EXERCISES["groupnorm_forward"].cases.values():
        for t in case.build(_rng_factory(1)):
            C = t["x"].shape[1]
            assert t["G"] != C // t["G"] or C == 1, (case.name, C, t["G"])


def test_a_tiny_difference_is_printed_with_enough_digits_to_see_it():
    f = define("""
    def batchnorm_forward(x, gamma, beta, eps=1e-5):
        out = gamma * (x - x.mean(axis=0)) / np.sqrt(x.var(axis=0) + eps) + beta
        out[0, 0] *= 1 + 2e-6                      # an in-place slip in the last digits
        return out, None
    """)["batchnorm_forward"]
    msg = outcome("batchnorm_forward", (f,), "exact")
    expected, got = re.search(r"expected (\S+), got (\S+)\)", msg).groups()
    assert expected != got, msg


def test_returning_a_list_passes_with_a_note():
    f = define("""
    def batchnorm_forward(x, gamma, beta, eps=1e-5):
        out = gamma * (x - x.mean(axis=0)) / np.sqrt(x.var(axis=0) + eps) + beta
        return out.tolist(), None
    """)["batchnorm_forward"]
    ex = EXERCISES["batchnorm_forward"]
    v = evaluate(ex, "normalise", {"batchnorm_forward": "f"}, LocalExecutor({"f": f}))
    assert v.passed and "out is a list; return a NumPy array" in v.message


# ---------------------------------------------------------------- the instructor's solutions, on fresh inputs
def _solution_namespaces():
    """{problem set: namespace with the instructor's solution functions}."""
    import nbformat
    from pathlib import Path
    out = {}
    for path in sorted(Path(__file__).resolve().parents[1].glob("solutions/ps*/*.ipynb")):
        ns = {"np": np}
        for cell in nbformat.read(str(path), 4).cells:
            if cell.metadata.get("nbgrader", {}).get("solution") and cell.cell_type == "code":
                exec("\n".join(l for l in cell.source.splitlines() if "###" not in l), ns)
        out[path.parent.name] = ns
    return out


SOLUTIONS = _solution_namespaces()
CHECKED_BY = [("ps1_forward", "batchnorm_forward", ("batchnorm_forward",)),
              ("ps1_forward", "running_stats_update", ("running_stats_update",)),
              ("ps1_forward", "batchnorm_inference", ("batchnorm_inference",)),
              ("ps2_backward", "batchnorm_backward", ("batchnorm_forward", "batchnorm_backward")),
              ("ps2_backward", "batchnorm_backward", ("batchnorm_forward", "batchnorm_backward_compact")),
              ("ps3_spatial", "spatial_batchnorm_forward", ("spatial_batchnorm_forward",)),
              ("ps3_spatial", "spatial_batchnorm_backward", ("spatial_batchnorm_forward", "spatial_batchnorm_backward")),
              ("ps4_inference", "fold_batchnorm", ("fold_batchnorm",)),
              ("ps5_alternatives", "layernorm_forward", ("layernorm_forward",)),
              ("ps5_alternatives", "layernorm_backward", ("layernorm_forward", "layernorm_backward")),
              ("ps5_alternatives", "groupnorm_forward", ("groupnorm_forward",))]


@pytest.mark.parametrize("ps, check, funcs", CHECKED_BY, ids=[f"{c}:{f[-1]}" for _, c, f in CHECKED_BY])
def test_the_solutions_pass_every_case_on_fresh_inputs(ps, check, funcs):
    """Honest work is never unlucky: the grade does not depend on the inputs drawn."""
    ns = SOLUTIONS[ps]
    for case in EXERCISES[check].cases:
        for nonce in range(1, 26):
            assert outcome(check, tuple(ns[f] for f in funcs), case, nonce) == "pass", (case, nonce)


def _fold_case_on_non_square_Ws_only(monkeypatch, name):
    """The fold case ``name`` with its square-W trials left out: every trial has D != H."""
    import dataclasses

    ex = EXERCISES["fold_batchnorm"]
    case = ex.cases[name]
    non_square = lambda r: [t for t in case.build(r) if t["W"].shape[0] != t["W"].shape[1]]  # noqa: E731
    monkeypatch.setitem(ex.cases, name, dataclasses.replace(case, build=non_square))


def test_fold_rows_on_a_non_square_layer_is_named_from_its_broadcast_error(monkeypatch):
    # On D != H, W * scale[:, None] raises instead of returning: the exception names the mistake
    _fold_case_on_non_square_Ws_only(monkeypatch, "shapes")
    f = define(FOLD.format(**{**FOLD_OK, "W_f": "W * scale[:, None]"}))["fold_batchnorm"]
    for nonce in NONCES:
        msg = outcome("fold_batchnorm", (f,), "shapes", nonce)
        assert "raised ValueError" in msg and "Likely mistake: the scale multiplies the rows of W" in msg


def test_fold_other_broadcast_errors_are_not_blamed_on_the_rows(monkeypatch):
    _fold_case_on_non_square_Ws_only(monkeypatch, "shapes")
    f = define(FOLD.format(**{**FOLD_OK, "W_f": "W * scale[:1, None].T[:, :0]"}))["fold_batchnorm"]
    msg = outcome("fold_batchnorm", (f,), "shapes")
    assert "raised ValueError" in msg and "broadcast" in msg
    assert "rows of W" not in msg and "Check the shapes" in msg


def test_a_forged_exception_text_cannot_pass_a_case(monkeypatch):
    # the learner can raise any text; an error diagnosis only words the feedback
    _fold_case_on_non_square_Ws_only(monkeypatch, "shapes")
    src = """
def fold_batchnorm(W, b, gamma, beta, running_mean, running_var, eps=1e-5):
    D, H = W.shape
    raise ValueError(f"operands could not be broadcast together with shapes ({D},{H}) ({H},1) ")
"""
    f = define(src)["fold_batchnorm"]
    msg = outcome("fold_batchnorm", (f,), "shapes")
    assert msg != "pass" and "raised ValueError" in msg
