"""Chapter 6: deep BN networks at initialisation and dropout before BN (claims 18, 23, 24).

The gradients of bnref.experiments.depth's networks are checked against PyTorch autograd;
the measurements the chapter reports (gradient growth with depth, activation scales, the
variance shift of dropout before BN) are checked against their analytic values.
"""
from pathlib import Path

import numpy as np
import pytest
import torch

from bnref.data import load_digits
from bnref.experiments.depth import (YANG_RELU_BN_GROWTH, activation_scales, deep_mlp,
                                     gradient_profiles, growth_per_layer, init_gradient_norms)
from bnref.experiments.dropout import (DropoutMLP, dropout_forward, dropout_variance,
                                       linear_variance_ratio, predicted_variance_shift,
                                       reestimate_bn, variance_shift)
from bnref.mlp import train

CHAPTER = Path(__file__).resolve().parents[1] / "book" / "06_what_bn_does.md"
_TORCH_ACT = {"relu": torch.relu, "tanh": torch.tanh}


@pytest.fixture(scope="module")
def data():
    return load_digits()


def _torch_grads(net, X, y, masks=None):
    """Gradients of ``net``'s mean cross-entropy by PyTorch autograd, from the same parameters.

    ``masks[l]``, when given and not None, multiplies hidden layer l's activation (dropout).
    """
    params = {k: torch.tensor(np.asarray(v), dtype=torch.float64, requires_grad=True)
              for k, v in net.params.items()}
    a = torch.tensor(X, dtype=torch.float64)
    for l in range(net.n_hidden):
        z = a @ params[f"W{l}"].T
        if net.norm == "batch":
            z = torch.nn.functional.batch_norm(z, None, None, params[f"gamma{l}"], params[f"beta{l}"],
                                               training=True, eps=net.eps)
        else:
            z = z + params[f"b{l}"]
        a = _TORCH_ACT[net.activation](z)
        if masks is not None and masks[l] is not None:
            a = a * torch.tensor(masks[l])
    L = net.n_hidden
    logits = a @ params[f"W{L}"].T + params[f"b{L}"]
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(y))
    loss.backward()
    return float(loss.detach()), {k: v.grad.numpy() for k, v in params.items()}


# ------------------------------------------------------------------ gradients at initialisation

@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("norm", ["batch", None])
def test_deep_net_gradients_equal_torch_autograd(data, activation, norm):
    net = deep_mlp(8, width=16, activation=activation, norm=norm, gain=1.3, seed=1)
    X, y = data[0][:32], data[1][:32]
    loss, grads = net.loss_and_grads(X, y, update_running_stats=False)
    loss_t, grads_t = _torch_grads(net, X, y)
    assert loss == pytest.approx(loss_t, rel=1e-12)
    assert sorted(grads) == sorted(grads_t)
    for name, g in grads.items():
        np.testing.assert_allclose(g, grads_t[name], rtol=1e-9, atol=1e-12, err_msg=name)


def test_init_gradient_norms_are_the_norms_of_torch_gradients(data):
    depth, batch_size, seed = 10, 64, 3
    norms = init_gradient_norms(data, depth, width=32, batch_size=batch_size, seed=seed)
    net = deep_mlp(depth, width=32, seed=seed)
    idx = np.random.default_rng(seed).choice(len(data[0]), batch_size, replace=False)
    _, grads_t = _torch_grads(net, data[0][idx], data[1][idx])
    np.testing.assert_allclose(norms, [np.linalg.norm(grads_t[f"W{l}"]) for l in range(depth)],
                               rtol=1e-9)


def test_growth_per_layer_recovers_a_geometric_rate():
    g = 5.0 * 1.3 ** -np.arange(12.0)
    assert growth_per_layer(g) == pytest.approx(1.3)
    g[0] = 1e6                                            # layer 1 is left out of the fit
    assert growth_per_layer(g) == pytest.approx(1.3)
    assert growth_per_layer(g, skip_first=False) > 2


@pytest.fixture(scope="module")
def profiles(data):
    return gradient_profiles(data, [30], seeds=(0, 1))


def test_relu_bn_gradients_explode_at_the_rate_yang_et_al_predict(profiles):
    assert YANG_RELU_BN_GROWTH == pytest.approx(1.2112, abs=1e-4)
    growth = growth_per_layer(profiles["relu", "batch", 30])
    assert abs(growth - YANG_RELU_BN_GROWTH) < 0.05
    g = profiles["relu", "batch", 30]
    assert g[1] / g[-1] > 100                              # two orders of magnitude over 30 layers


def test_tanh_bn_gradients_explode_too_but_more_slowly(profiles):
    growth = growth_per_layer(profiles["tanh", "batch", 30])
    assert 1.04 < growth < YANG_RELU_BN_GROWTH - 0.05


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_without_bn_proper_init_keeps_gradients_flat(profiles, activation):
    assert 0.96 < growth_per_layer(profiles[activation, None, 30]) < 1.04


# ------------------------------------------------------------------ activation scales

@pytest.mark.parametrize("gain", [0.5, 2.0])
def test_without_bn_the_scale_changes_by_the_gain_per_layer(data, gain):
    s = activation_scales(data, depth=15, gain=gain, norm=None)["preact"]
    factor = (s[-1] / s[1]) ** (1 / 13)                   # He init times gain: x gain per layer
    assert abs(factor - gain) < 0.15 * gain


@pytest.mark.parametrize("gain", [0.5, 2.0])
def test_with_bn_the_scale_is_reset_to_gamma_whatever_the_init(data, gain):
    s = activation_scales(data, depth=15, gain=gain, norm="batch")
    np.testing.assert_allclose(s["normed"], 1.0, atol=1e-3)   # gamma = 1 at init (eps aside)
    pre = s["preact"][1:]                                 # what enters BN: neither shrinks nor grows
    assert pre.max() / pre.min() < 1.5
    assert ((pre < 1) if gain < 1 else (pre > 1)).all()     # ... but keeps the gain's side of 1


# ------------------------------------------------------------------ dropout before BN

def test_dropout_keeps_the_mean_and_the_backward_mask(rng):
    x = rng.normal(size=(1000, 3))
    y, mask = dropout_forward(x, 0.25, rng)
    np.testing.assert_array_equal(y, x * mask)
    assert set(np.unique(mask)) == {0.0, 1 / 0.75}
    with pytest.raises(ValueError):
        dropout_forward(x, 1.0, rng)


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
@pytest.mark.parametrize("mu, s2", [(0.0, 1.0), (1.0, 0.5), (-2.0, 3.0)])
def test_dropout_variance_formula_matches_monte_carlo(rng, p, mu, s2):
    a = rng.normal(mu, np.sqrt(s2), size=(400_000, 1))
    d, _ = dropout_forward(a, p, rng)
    train_var, test_var = dropout_variance(mu, s2, p)
    assert train_var == pytest.approx((s2 + mu ** 2) / (1 - p) - mu ** 2)
    assert train_var == pytest.approx(s2 + p / (1 - p) * (s2 + mu ** 2))
    assert d.var() == pytest.approx(train_var, rel=0.02)
    assert a.var() == pytest.approx(test_var, rel=0.02)
    assert train_var > test_var                           # the direction of the shift


def test_linear_variance_ratio_matches_monte_carlo(rng):
    p = 0.4
    a = np.maximum(rng.normal(0.5, 1.0, size=(200_000, 6)) + rng.normal(size=(200_000, 1)), 0)
    W = rng.normal(size=(4, 6))
    d, _ = dropout_forward(a, p, rng)
    measured = (a @ W.T).var(axis=0) / (d @ W.T).var(axis=0)
    predicted = linear_variance_ratio(a, W, p)
    np.testing.assert_allclose(predicted, measured, rtol=0.03)
    assert (predicted < 1).all()
    np.testing.assert_allclose(linear_variance_ratio(a, W, 0.0), 1.0)


def test_dropout_mlp_gradients_equal_torch_autograd(data):
    net = DropoutMLP([64, 16, 16, 16, 10], p=0.3, drop_after=(0, 2), norm="batch",
                     activation="relu", seed=2)
    X, y = data[0][:40], data[1][:40]
    loss, grads = net.loss_and_grads(X, y, update_running_stats=False)
    assert net.masks[1] is None and net.masks[0] is not None
    loss_t, grads_t = _torch_grads(net, X, y, masks=net.masks)
    assert loss == pytest.approx(loss_t, rel=1e-12)
    for name, g in grads.items():
        np.testing.assert_allclose(g, grads_t[name], rtol=1e-9, atol=1e-12, err_msg=name)


def test_dropout_mlp_has_no_dropout_in_eval_mode(data):
    net = DropoutMLP([64, 16, 16, 10], p=0.5, drop_after=(0,), norm="batch", activation="relu")
    X = data[0][:50]
    first = net.forward(X, training=False)
    assert net.masks == [None, None]
    np.testing.assert_array_equal(net.forward(X, training=False), first)


@pytest.fixture(scope="module")
def trained(data):
    """BN networks trained with dropout p = 0.5 before the second BN, or after the last one."""
    nets = {}
    for name, drop_after in (("before", (0,)), ("after", (1,)), ("none", ())):
        net = DropoutMLP([64, 32, 32, 10], p=0.5, drop_after=drop_after, norm="batch",
                         activation="relu", seed=0)
        train(net, data, steps=200, lr=0.1)
        nets[name] = net
    return nets


def test_test_time_variance_is_below_running_var_after_dropout(data, trained):
    ratio = variance_shift(trained["before"], data[2])
    assert np.median(ratio[1]) < 0.75                     # BN after the dropout: too small at test
    assert 0.85 < np.median(ratio[0]) < 1.15              # BN before it: matched
    for name in ("after", "none"):
        assert all(0.85 < np.median(r) < 1.15 for r in variance_shift(trained[name], data[2]))


def test_measured_variance_shift_equals_its_analytic_value(data, trained):
    net = trained["before"]
    measured = variance_shift(net, data[2])[1]
    predicted = predicted_variance_shift(net, data[2])
    assert predicted[0] is None
    assert abs(np.median(measured) - np.median(predicted[1])) < 0.05
    assert np.corrcoef(measured, predicted[1])[0, 1] > 0.5   # unit by unit, not just on average


def test_reestimating_bn_without_dropout_removes_the_shift(data, trained):
    net = trained["before"].copy()
    reestimate_bn(net, data[0])
    assert 0.9 < np.median(variance_shift(net, data[2])[1]) < 1.1
    assert net.bn[0].momentum == trained["before"].bn[0].momentum and net.p == 0.5


# ------------------------------------------------------------------ the chapter's text

def _admonition(title_start):
    text = CHAPTER.read_text()
    start = text.index("````{admonition} " + title_start)
    return text[start:text.index("\n````\n", start)]


def test_ch6_labels_the_sections_the_claim_ledger_links_to():
    text = CHAPTER.read_text()
    for label in ("bn-init-gradients", "bn-activation-scale", "bn-dropout"):
        assert f"({label})=\n" in text


def test_ch6_dropout_drill_answer_is_right():
    body = _admonition("9. Drill")
    train_var, test_var = dropout_variance(mean=1.0, var=1.0, p=0.5)
    assert (train_var, test_var) == (3.0, 1.0)
    assert f"{test_var / train_var:.4f}" in body and f"{np.sqrt(test_var / train_var):.4f}" in body


def test_ch6_every_slider_has_a_predict_first_prompt_before_it():
    text = CHAPTER.read_text()
    calls = [i for i in range(len(text)) if text.startswith("slider_figure(", i)]
    assert calls
    prev = 0
    for c in calls:                                       # a prompt between each widget and the last
        assert "Predict first" in text[prev:c]
        prev = c


def test_ch6_tanh_trains_without_bn_where_sigmoid_does_not(data):
    """Claim 26, "BN helps most with sigmoid or tanh": true for sigmoid, not for tanh."""
    from bnref.experiments.training import train_curves

    loss = {}
    for act in ("sigmoid", "tanh"):
        _, h = train_curves(data, activation=act, norm=None, lr=0.3, steps=300, eval_every=300)
        loss[act] = np.mean(h["loss"][-20:])
    assert loss["tanh"] < 0.3 < 1.5 < loss["sigmoid"]
