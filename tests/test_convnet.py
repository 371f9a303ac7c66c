"""bnref.experiments.convnet (chapter 8): the convolutional network's pieces against PyTorch.

Convolution, LRN and the whole network (every placement) are compared with
``torch.nn.functional`` and its autograd in float64 on random inputs; spatial BN's statistics
are checked to be per channel over N, H and W. The last tests re-run short trainings and check
the statements chapter 8 makes about them.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bnref
from bnref.data import load_digits
from bnref.experiments import convnet as C

TOL = dict(rtol=1e-9, atol=1e-11)                  # float64 against float64: round-off only


def t(a, grad=False):
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


@pytest.fixture(scope="module")
def data():
    return load_digits()


# ------------------------------------------------------------------ convolution

@pytest.mark.parametrize("shape, c_out", [((4, 3, 5, 6), 5), ((2, 1, 8, 8), 8), ((3, 8, 4, 4), 8)])
def test_conv_forward_and_backward_match_torch_conv2d(rng, shape, c_out):
    x, w, b = rng.normal(size=shape), rng.normal(size=(c_out, shape[1], 3, 3)), rng.normal(size=c_out)
    y, cache = C.conv_forward(x, w, b)
    xt, wt, bt = t(x, True), t(w, True), t(b, True)
    yt = F.conv2d(xt, wt, bt, padding=1)
    np.testing.assert_allclose(y, yt.detach().numpy(), **TOL)
    dy = rng.normal(size=y.shape)
    yt.backward(t(dy))
    dx, dw, db = C.conv_backward(dy, cache)
    np.testing.assert_allclose(dx, xt.grad.numpy(), **TOL)
    np.testing.assert_allclose(dw, wt.grad.numpy(), **TOL)
    np.testing.assert_allclose(db, bt.grad.numpy(), **TOL)


def test_conv_is_a_cross_correlation_not_a_flipped_convolution(rng):
    """A kernel with one tap off centre moves the image; a flipped kernel would move it the other way."""
    x, w = rng.normal(size=(1, 1, 5, 5)), np.zeros((1, 1, 3, 3))
    w[0, 0, 1, 2] = 1.0                              # y[h, w] = x[h, w + 1]
    y, _ = C.conv_forward(x, w, np.zeros(1))
    np.testing.assert_array_equal(y[0, 0, :, :-1], x[0, 0, :, 1:])


def test_conv_backward_can_skip_dx(rng):
    y, cache = C.conv_forward(rng.normal(size=(2, 1, 4, 4)), rng.normal(size=(3, 1, 3, 3)), np.zeros(3))
    dx, dw, db = C.conv_backward(np.ones_like(y), cache, need_dx=False)
    assert dx is None and dw.shape == (3, 1, 3, 3)


# ------------------------------------------------------------------ LRN

@pytest.mark.parametrize("n", [5, 4, 3, 1])
@pytest.mark.parametrize("shape", [(3, 8, 4, 4), (2, 16, 3, 5), (2, 3, 2, 2)])
def test_lrn_matches_torch_local_response_norm_with_alpha_times_n(rng, shape, n):
    # large inputs and alpha so that the denominator really varies
    x, k, alpha, beta = 3 * rng.normal(size=shape), 2.0, 0.05, 0.75
    y, cache = C.lrn_forward(x, n=n, k=k, alpha=alpha, beta=beta)
    xt = t(x, True)
    yt = F.local_response_norm(xt, size=n, alpha=alpha * n, beta=beta, k=k)   # torch divides alpha by n
    np.testing.assert_allclose(y, yt.detach().numpy(), **TOL)
    dy = rng.normal(size=shape)
    yt.backward(t(dy))
    np.testing.assert_allclose(C.lrn_backward(dy, cache), xt.grad.numpy(), **TOL)


def test_lrn_alpha_convention_matters(rng):
    """Passing AlexNet's alpha to torch unchanged gives a different result: the conversion is needed."""
    x = 3 * rng.normal(size=(2, 8, 3, 3))
    y, _ = C.lrn_forward(x, n=5, alpha=0.05)
    yt = F.local_response_norm(t(x), size=5, alpha=0.05, beta=0.75, k=2.0).numpy()
    assert not np.allclose(y, yt, rtol=1e-3)


def test_lrn_with_alexnet_constants_on_unit_scale_inputs_is_nearly_a_constant_scale(rng):
    x = rng.normal(size=(4, 16, 4, 4))
    y, _ = C.lrn_forward(x, **C.ALEXNET_LRN)
    np.testing.assert_allclose(y / x, 2.0 ** -0.75, rtol=1e-3)


def test_lrn_is_per_example_and_does_not_centre(rng):
    x = rng.normal(size=(4, 8, 3, 3)) + 5.0
    y, _ = C.lrn_forward(x, n=5, k=1.0, alpha=1.0, beta=0.75)
    y0, _ = C.lrn_forward(x[:1], n=5, k=1.0, alpha=1.0, beta=0.75)
    np.testing.assert_allclose(y[:1], y0, **TOL)      # batch-mates do not matter
    assert np.all(y > 0)                              # positive in, positive out: no mean removed


# ------------------------------------------------------------------ spatial BN statistics

def test_spatial_bn_statistics_are_per_channel_over_n_h_w(rng):
    x = rng.normal(size=(64, 16, 8, 8)) * rng.uniform(0.5, 3, size=(1, 16, 1, 1)) + rng.normal(size=(1, 16, 1, 1))
    gamma, beta = rng.uniform(0.5, 2, 16), rng.normal(size=16)
    y, cache = bnref.batchnorm_forward(x, gamma, beta)
    assert cache.mean.shape == (16,) and cache.m == 64 * 8 * 8
    np.testing.assert_allclose(cache.mean, x.mean(axis=(0, 2, 3)), **TOL)
    np.testing.assert_allclose(cache.var, x.var(axis=(0, 2, 3)), **TOL)
    for c in range(16):                               # the per-channel formula, one channel at a time
        values = x[:, c]                              # (N, H, W): all m = N*H*W values of channel c
        expected = gamma[c] * (values - values.mean()) / np.sqrt(values.var() + 1e-5) + beta[c]
        np.testing.assert_allclose(y[:, c], expected, **TOL)
    # per channel over N, H, W, not per pixel: single pixels keep a nonzero mean
    assert np.abs(((y - beta[None, :, None, None]) / gamma[None, :, None, None]).mean(axis=0)).max() > 0.1


# ------------------------------------------------------------------ the whole network

def torch_network(placement, params, x, y, lrn, running):
    """The same network in torch.nn.functional; ``running`` holds torch tensors updated in place."""
    def conv(h, name):
        return F.conv2d(h, params[name + ".w"], params[name + ".b"], padding=1)

    def bn(h, name):
        return F.batch_norm(h, running[name + ".running_mean"], running[name + ".running_var"],
                            params[name + ".gamma"], params[name + ".beta"], training=True, momentum=0.1)

    def block(h, i):
        h = conv(h, f"conv{i}")
        if placement == "none":
            return F.relu(h)
        if placement == "before":
            return F.relu(bn(h, f"bn{i}"))
        if placement == "after":
            return bn(F.relu(h), f"bn{i}")
        return F.local_response_norm(F.relu(h), size=lrn["n"], alpha=lrn["alpha"] * lrn["n"],
                                     beta=lrn["beta"], k=lrn["k"])

    if placement == "preact":
        h = F.avg_pool2d(conv(x, "conv1"), 2)
        u = conv(F.relu(bn(h, "bn1")), "conv2")
        h = h + conv(F.relu(bn(u, "bn2")), "conv3")
        h = F.relu(bn(h, "bn3"))
    else:
        h = F.avg_pool2d(block(x, 1), 2)
        h = block(block(h, 2), 3)
    logits = h.mean(dim=(2, 3)) @ params["head.w"] + params["head.b"]
    return F.cross_entropy(logits, y)


@pytest.mark.parametrize("placement", list(C.PLACEMENTS))
def test_network_loss_gradients_and_running_stats_match_torch_autograd(rng, placement):
    params, state = C.init_params(placement, seed=3, channels=8)
    for name in params:                                # move gamma, beta and biases off their init
        if not name.endswith(".w"):
            params[name] = params[name] + 0.3 * rng.normal(size=params[name].shape)
    x, y = rng.random((16, 1, 8, 8)), rng.integers(0, 10, 16)
    lrn = dict(n=5, k=2.0, alpha=0.05, beta=0.75)     # strong enough to matter
    _, loss, cache = C.forward(params, x, y, placement, state, lrn=lrn)
    grads, dx = C.backward(params, cache)

    pt = {k: t(v, True) for k, v in params.items()}
    running = {k: t(v) for k, v in C.init_params(placement, seed=3, channels=8)[1].items()}
    xt = t(x, True)
    loss_t = torch_network(placement, pt, xt, torch.tensor(y), lrn, running)
    loss_t.backward()
    assert loss == pytest.approx(loss_t.item(), rel=1e-10)
    assert sorted(grads) == sorted(params)
    for name in params:
        np.testing.assert_allclose(grads[name], pt[name].grad.numpy(), err_msg=name, **TOL)
    np.testing.assert_allclose(dx, xt.grad.numpy(), **TOL)
    for name in state:                                # PyTorch's running statistics, unbiased variance
        np.testing.assert_allclose(state[name], running[name].numpy(), err_msg=name, **TOL)


def test_a_conv_bias_directly_before_bn_gets_no_gradient(rng):
    params, state = C.init_params("before", channels=8)
    _, _, cache = C.forward(params, rng.random((16, 1, 8, 8)), rng.integers(0, 10, 16), "before", state)
    grads, _ = C.backward(params, cache)
    for i in (1, 2, 3):
        assert np.abs(grads[f"conv{i}.b"]).max() < 1e-12
        assert np.abs(grads[f"conv{i}.w"]).max() > 1e-3
    params, state = C.init_params("after", channels=8)   # with ReLU in between the bias matters
    _, _, cache = C.forward(params, rng.random((16, 1, 8, 8)), rng.integers(0, 10, 16), "after", state)
    assert np.abs(C.backward(params, cache)[0]["conv1.b"]).max() > 1e-6


def test_eval_mode_does_not_depend_on_batch_mates(rng):
    params, state = C.init_params("before", channels=8)
    x = rng.random((8, 1, 8, 8))
    C.forward(params, x, np.arange(8), "before", state)              # moves the running statistics
    full = C.forward(params, x, None, "before", state, train=False)[0]
    alone = C.forward(params, x[:1], None, "before", state, train=False)[0]
    np.testing.assert_allclose(full[:1], alone, **TOL)


def test_forward_rejects_bad_input():
    params, state = C.init_params("before", channels=4)
    with pytest.raises(ValueError, match="images"):
        C.forward(params, np.zeros((2, 64)), None, "before", state)
    with pytest.raises(ValueError, match="state"):
        C.forward(params, np.zeros((2, 1, 8, 8)), None, "before", None)
    with pytest.raises(ValueError, match="placement"):
        C.init_params("sideways")


# ------------------------------------------------------------------ training (what chapter 8 says)

def test_same_seed_gives_every_placement_the_same_convolutions():
    a, _ = C.init_params("none", seed=5)
    b, _ = C.init_params("preact", seed=5)
    for name in ("conv1.w", "conv2.w", "conv3.w", "head.w"):
        np.testing.assert_array_equal(a[name], b[name])


def test_training_is_seeded_and_records_curves(data):
    a = C.train_convnet("after", data, lr=0.3, steps=20, seed=1, channels=8, eval_every=10)
    b = C.train_convnet("after", data, lr=0.3, steps=20, seed=1, channels=8, eval_every=10)
    np.testing.assert_array_equal(a["loss"], b["loss"])
    assert a["eval_steps"].tolist() == [0, 10, 20] and a["test_acc_curve"][-1] == a["test_acc"]
    assert a["loss"][-5:].mean() < a["loss"][:5].mean()


def test_a_diverged_run_reports_nan_accuracy(data):
    with np.errstate(all="ignore"):                    # the overflow is the point
        run = C.train_convnet("none", data, lr=1e100, steps=30, channels=8)
    assert np.isnan(run["test_acc"]) and np.isnan(run["loss"][-1])


def test_with_bn_the_net_learns_faster_than_without(data):
    """Chapter 8's comparison in brief: 200 steps at lr 0.3, seed 0, BN before or after ReLU."""
    runs = C.placement_sweep(data, ["none", "before", "after"], lrs=[0.3], seeds=[0], steps=200,
                             channels=8, eval_every=200)
    acc = {p: runs[p, 0.3, 0]["test_acc"] for p in ("none", "before", "after")}
    assert acc["before"] > acc["none"] + 0.1 and acc["after"] > acc["none"] + 0.1
