"""bnref against PyTorch (the oracle), for every public function.

PyTorch is pinned to the CPU build (torch==2.13.0). The oracle always runs in float64 on the
same (possibly float32) input values, so a float32 result is compared with the exact answer,
not with another float32 rounding of it. For channels-last inputs (axis=-1) the oracle is
PyTorch on the same data with the channel axis moved to position 1.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bnref

from tolerances import ORACLE, ORACLE_DX_FLOAT32

# Every test runs with every CPU kernel set (the reference, tuned NumPy, Numba threaded and serial).
pytestmark = pytest.mark.usefixtures("cpu_kernels")

torch.set_default_dtype(torch.float64)

SHAPES = [(8, 5), (2, 3), (6, 4, 7), (4, 3, 5, 6), (2, 8, 3, 3)]
DTYPES = [np.float32, np.float64]


def t(a, grad=False):
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def to_channels_first(a, axis):
    return np.moveaxis(a, axis, 1)


def close(actual, expected, dtype):
    if isinstance(expected, torch.Tensor):
        expected = expected.detach().numpy()
    tol = dict(ORACLE[dtype])
    # Absolute error is judged against the size of the result: entries that cancel to ~0
    # (e.g. dx in a group of two values) carry the rounding error of their large neighbours.
    tol["atol"] *= max(1.0, float(np.max(np.abs(expected), initial=0)))
    np.testing.assert_allclose(actual, expected, **tol)


def make(rng, shape, dtype, axis=1, affine=True):
    C = shape[axis]
    x = (rng.normal(size=shape) * rng.uniform(0.5, 3) + rng.normal() * 2).astype(dtype)
    gamma = rng.normal(size=C).astype(dtype) if affine else None
    beta = rng.normal(size=C).astype(dtype) if affine else None
    return x, gamma, beta


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("eps", [1e-5, 1e-3])
def test_forward_and_backward_match_torch_in_training_mode(rng, shape, dtype, axis, affine, eps):
    x, gamma, beta = make(rng, shape, dtype, axis, affine)
    dy = rng.normal(size=shape).astype(dtype)
    y, cache = bnref.batchnorm_forward(x, gamma, beta, eps=eps, axis=axis)
    dx, dgamma, dbeta = bnref.batchnorm_backward(dy, cache)

    xt = t(to_channels_first(x, axis), grad=True)
    gt = t(gamma, grad=True) if affine else None
    bt = t(beta, grad=True) if affine else None
    yt = F.batch_norm(xt, None, None, gt, bt, training=True, eps=eps)
    yt.backward(t(to_channels_first(dy, axis)))

    assert y.dtype == dtype and y.shape == x.shape and dx.dtype == dtype
    close(to_channels_first(y, axis), yt, dtype)
    if dtype == np.float32:
        # dx cancels terms of size gamma * inv_std * dy, and the float32 rounding of x - mean is
        # amplified by |x| * inv_std (a batch of two with close values has a tiny variance), so
        # the error bound scales with that condition number, not with the size of dx.
        k = np.abs(gamma if affine else 1.0) * cache.inv_std
        cond = np.max(k) * np.abs(dy).max() * max(1.0, np.abs(x).max() * cache.inv_std.max())
        np.testing.assert_allclose(to_channels_first(dx, axis), xt.grad.numpy(), rtol=ORACLE_DX_FLOAT32["rtol"],
                                   atol=ORACLE_DX_FLOAT32["atol_per_condition"] * cond)
    else:
        close(to_channels_first(dx, axis), xt.grad, dtype)
    if affine:
        close(dgamma, gt.grad, dtype)
        close(dbeta, bt.grad, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("axis", [1, -1])
def test_inference_matches_torch_eval_mode(rng, shape, dtype, axis):
    x, gamma, beta = make(rng, shape, dtype, axis)
    C = shape[axis]
    rm, rv = rng.normal(size=C).astype(dtype), rng.uniform(0.2, 3, size=C).astype(dtype)
    y = bnref.batchnorm_inference(x, gamma, beta, rm, rv, eps=1e-5, axis=axis)
    yt = F.batch_norm(t(to_channels_first(x, axis)), t(rm), t(rv), t(gamma), t(beta), training=False, eps=1e-5)
    assert y.dtype == dtype
    close(to_channels_first(y, axis), yt, dtype)


@pytest.mark.parametrize("momentum", [0.1, 0.5, 0.0, 1.0])
@pytest.mark.parametrize("shape", [(8, 5), (4, 3, 5, 6)])
def test_running_stats_update_matches_torch(rng, shape, momentum):
    x = rng.normal(2, 3, size=shape)
    C = shape[1]
    rm, rv = rng.normal(size=C), rng.uniform(0.5, 2, size=C)
    new_mean, new_var = bnref.running_stats_update(rm, rv, x, momentum=momentum)
    rmt, rvt = t(rm.copy()), t(rv.copy())
    F.batch_norm(t(x), rmt, rvt, training=True, momentum=momentum)      # updates rmt, rvt in place
    close(new_mean, rmt, np.float64)
    close(new_var, rvt, np.float64)
    assert not np.shares_memory(new_mean, rm)   # pure: inputs untouched


def test_running_stats_update_with_momentum_none_is_the_cumulative_average(rng):
    bn_t = torch.nn.BatchNorm1d(3, momentum=None)
    rm, rv = np.zeros(3), np.ones(3)
    for k in range(1, 6):
        x = rng.normal(k, 1 + k, size=(10, 3))
        rm, rv = bnref.running_stats_update(rm, rv, x, momentum=None, num_batches_tracked=k)
        bn_t(t(x))
    close(rm, bn_t.running_mean, np.float64)
    close(rv, bn_t.running_var, np.float64)


LAYER_CASES = [
    dict(momentum=0.1, affine=True, track_running_stats=True),
    dict(momentum=None, affine=True, track_running_stats=True),
    dict(momentum=0.3, affine=False, track_running_stats=True),
    dict(momentum=0.1, affine=True, track_running_stats=False),
]


@pytest.mark.parametrize("kw", LAYER_CASES, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
@pytest.mark.parametrize("shape", [(16, 6), (8, 6, 5), (4, 6, 3, 5)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_matches_torch_step_after_step_in_train_and_eval(rng, shape, kw, dtype):
    C = shape[1]
    ours = bnref.BatchNorm(C, dtype=dtype, **kw)
    torch_cls = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d}[len(shape)]
    theirs = torch_cls(C, dtype=torch.float64, **kw)
    if kw["affine"]:
        with torch.no_grad():
            g, b = rng.normal(size=C).astype(dtype), rng.normal(size=C).astype(dtype)
            theirs.weight.copy_(t(g)); theirs.bias.copy_(t(b))
        ours.gamma, ours.beta = g.copy(), b.copy()
    for step in range(4):
        for training in (True, False):
            ours.train(training); theirs.train(training)
            x = (rng.normal(size=shape) * (1 + step) + step).astype(dtype)
            dy = rng.normal(size=shape).astype(dtype)
            xt = t(x, grad=True)
            yt = theirs(xt)
            yt.backward(t(dy))
            y = ours(x)
            dx = ours.backward(dy)
            close(y, yt, dtype)
            close(dx, xt.grad, dtype)
            if kw["affine"]:
                close(ours.dgamma, theirs.weight.grad, dtype)
                close(ours.dbeta, theirs.bias.grad, dtype)
                theirs.weight.grad = theirs.bias.grad = None
            else:
                assert ours.dgamma is None and ours.dbeta is None
            if kw["track_running_stats"]:
                close(ours.running_mean, theirs.running_mean, dtype)
                close(ours.running_var, theirs.running_var, dtype)
                assert ours.num_batches_tracked == int(theirs.num_batches_tracked)
            else:
                assert ours.running_mean is None and theirs.running_mean is None


def test_layer_channels_last_matches_torch_on_permuted_input(rng):
    ours = bnref.BatchNorm(4, axis=-1)
    theirs = torch.nn.BatchNorm2d(4)
    for _ in range(3):
        x = rng.normal(3, 2, size=(2, 5, 6, 4))                    # (N, H, W, C)
        y = ours(x)
        yt = theirs(t(x.transpose(0, 3, 1, 2)))                      # (N, C, H, W)
        close(y.transpose(0, 3, 1, 2), yt, np.float64)
    close(ours.running_var, theirs.running_var, np.float64)


@pytest.mark.parametrize("with_bias", [True, False])
def test_fold_linear_matches_torch_fusion_and_outputs(rng, with_bias):
    from torch.nn.utils.fusion import fuse_linear_bn_weights
    W, x = rng.normal(size=(5, 7)), rng.normal(size=(9, 7))
    b = rng.normal(size=5) if with_bias else None
    g, bt, rm, rv = rng.normal(size=5), rng.normal(size=5), rng.normal(size=5), rng.uniform(0.5, 2, 5)
    Wf, bf = bnref.fold_linear(W, b, g, bt, rm, rv, eps=1e-5)
    Wt, btt = fuse_linear_bn_weights(t(W), t(b) if with_bias else torch.zeros(5), t(rm), t(rv), 1e-5, t(g), t(bt))
    close(Wf, Wt, np.float64)
    close(bf, btt, np.float64)
    z = x @ W.T + (b if with_bias else 0)
    close(x @ Wf.T + bf, bnref.batchnorm_inference(z, g, bt, rm, rv), np.float64)


def test_fold_conv2d_matches_torch_fusion_and_conv_outputs(rng):
    from torch.nn.utils.fusion import fuse_conv_bn_weights
    W, b = rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4)
    g, bt, rm, rv = rng.normal(size=4), rng.normal(size=4), rng.normal(size=4), rng.uniform(0.5, 2, 4)
    Wf, bf = bnref.fold_conv2d(W, b, g, bt, rm, rv)
    Wt, btt = fuse_conv_bn_weights(t(W), t(b), t(rm), t(rv), 1e-5, t(g), t(bt))
    close(Wf, Wt, np.float64)
    close(bf, btt, np.float64)
    x = t(rng.normal(size=(2, 3, 6, 6)))
    z = F.conv2d(x, t(W), t(b), padding=1).numpy()
    folded = F.conv2d(x, t(Wf), t(bf), padding=1).numpy()
    close(folded, bnref.batchnorm_inference(z, g, bt, rm, rv), np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,k", [((6, 10), 1), ((3, 4, 5), 1), ((3, 4, 5), 2), ((2, 3, 4, 5), 3)])
@pytest.mark.parametrize("affine", [True, False])
def test_layernorm_forward_and_backward_match_torch(rng, shape, k, dtype, affine):
    nshape = shape[len(shape) - k:]
    x = (rng.normal(size=shape) * 2 + 1).astype(dtype)
    g = rng.normal(size=nshape).astype(dtype) if affine else None
    b = rng.normal(size=nshape).astype(dtype) if affine else None
    dy = rng.normal(size=shape).astype(dtype)
    y, cache = bnref.layernorm_forward(x, g, b, eps=1e-5, normalized_ndim=k)
    dx, dg, db = bnref.layernorm_backward(dy, cache)
    xt = t(x, grad=True)
    gt, bt = (t(g, grad=True), t(b, grad=True)) if affine else (None, None)
    yt = F.layer_norm(xt, nshape, gt, bt, eps=1e-5)
    yt.backward(t(dy))
    assert y.dtype == dtype and dx.dtype == dtype
    close(y, yt, dtype)
    close(dx, xt.grad, dtype)
    if affine:
        close(dg, gt.grad, dtype)
        close(db, bt.grad, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,G", [((4, 12), 3), ((3, 8, 5), 4), ((2, 6, 3, 4), 2), ((2, 6, 3, 4), 6), ((2, 6, 3, 4), 1)])
@pytest.mark.parametrize("affine", [True, False])
def test_groupnorm_forward_and_backward_match_torch(rng, shape, G, dtype, affine):
    C = shape[1]
    x = (rng.normal(size=shape) * 2 + 1).astype(dtype)
    g = rng.normal(size=C).astype(dtype) if affine else None
    b = rng.normal(size=C).astype(dtype) if affine else None
    dy = rng.normal(size=shape).astype(dtype)
    y, cache = bnref.groupnorm_forward(x, g, b, num_groups=G)
    dx, dg, db = bnref.groupnorm_backward(dy, cache)
    xt = t(x, grad=True)
    gt, bt = (t(g, grad=True), t(b, grad=True)) if affine else (None, None)
    yt = F.group_norm(xt, G, gt, bt, eps=1e-5)
    yt.backward(t(dy))
    close(y, yt, dtype)
    close(dx, xt.grad, dtype)
    if affine:
        close(dg, gt.grad, dtype)
        close(db, bt.grad, dtype)


def test_batch_statistics_match_torch_var_mean(rng):
    x = rng.normal(5, 2, size=(4, 3, 6, 6))
    mean, var = bnref.batch_statistics(x)
    vt, mt = torch.var_mean(t(x), dim=(0, 2, 3), correction=0)
    close(mean, mt, np.float64)
    close(var, vt, np.float64)


@pytest.mark.parametrize("shape, axis", [((4, 0), 1), ((3, 0, 5), 1), ((2, 4, 4, 0), -1)])
def test_no_channels_gives_empty_results_as_torch_does(shape, axis):
    x = np.zeros(shape)
    y, cache = bnref.batchnorm_forward(x, None, None, axis=axis)
    dx, dgamma, dbeta = bnref.batchnorm_backward(np.ones(shape), cache)
    yt = F.batch_norm(t(to_channels_first(x, axis), grad=True), None, None, training=True)
    assert y.shape == dx.shape == shape and to_channels_first(y, axis).shape == tuple(yt.shape)
    assert dgamma.shape == dbeta.shape == cache.mean.shape == (0,)
    assert bnref.batchnorm_inference(x, None, None, np.zeros(0), np.ones(0), axis=axis).shape == shape
    assert [a.shape for a in bnref.running_stats_update(np.zeros(0), np.ones(0), x, axis=axis)] == [(0,), (0,)]
