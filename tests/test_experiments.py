"""bnref.experiments: the functions the chapters call behave as documented.

The last tests re-run the experiments of chapters 6 and 7 (seeded, shortened where possible)
and check the qualitative statements the chapters make about their outcome, so that the text
cannot silently drift from the numbers.
"""
import numpy as np
import pytest

from bnref import experiments as E
from bnref.data import load_digits
from bnref.mlp import MLP


@pytest.fixture(scope="module")
def data():
    return load_digits()


def _state(net):
    params = {k: v.copy() for k, v in net.params.items()}
    stats = [(bn.running_mean.copy(), bn.running_var.copy(), bn.num_batches_tracked) for bn in net.bn]
    return params, stats


def _assert_same_state(net, state):
    params, stats = state
    for k, v in params.items():
        np.testing.assert_array_equal(net.params[k], v)
    for bn, (rm, rv, nb) in zip(net.bn, stats):
        np.testing.assert_array_equal(bn.running_mean, rm)
        np.testing.assert_array_equal(bn.running_var, rv)
        assert bn.num_batches_tracked == nb


# ------------------------------------------------------------------ staged backward

def test_staged_backward_records_every_node(rng):
    x, dy = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    values, grads, contribs = E.staged_backward(x, np.ones(3), np.zeros(3), dy)
    nodes = [name for name, _, _, _ in E.BN_STAGES]
    assert set(nodes) <= set(values) and set(nodes) <= set(grads)
    for name, inputs, _, _ in E.BN_STAGES:
        for inp in inputs:
            assert (name, inp) in contribs
            assert np.shape(contribs[(name, inp)]) == np.shape(values[inp])


def test_staged_backward_x_gradient_is_sum_of_both_paths(rng):
    x, dy = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    _, grads, contribs = E.staged_backward(x, np.ones(3), np.zeros(3), dy)
    np.testing.assert_allclose(grads["x"], contribs[("x_centered", "x")] + contribs[("mean", "x")])


# ------------------------------------------------------------------ conventions

def test_running_average_example_values():
    b = [np.array([[0.0], [2.0]])] * 2
    means, variances = E.running_average(b, "pytorch", momentum=0.5)
    assert means[:, 0].tolist() == [0.5, 0.75]
    assert variances[:, 0].tolist() == [1.5, 1.75]
    means, variances = E.running_average(b, "cs231n", momentum=0.5)     # biased, starts at 0
    assert variances[:, 0].tolist() == [0.5, 0.75]


def test_running_average_default_momentum_is_the_conventions(rng):
    b = [rng.normal(size=(4, 2)) for _ in range(3)]
    for name in ("pytorch", "cs231n", "keras"):
        a = E.running_average(b, name)
        c = E.running_average(b, name, E.CONVENTIONS[name]["momentum"])
        np.testing.assert_array_equal(a[0], c[0])


@pytest.mark.parametrize("bad", ["torch", "tf", ""])
def test_unknown_convention_is_rejected(bad):
    with pytest.raises(ValueError, match="convention"):
        E.convert_momentum(0.1, bad, "pytorch")
    with pytest.raises(ValueError, match="convention"):
        E.running_average([np.ones((2, 1))], bad)


def test_convert_momentum_round_trip():
    for p in (0.0, 0.01, 0.1, 0.5):
        assert E.convert_momentum(E.convert_momentum(p, "pytorch", "keras"), "keras", "pytorch") == pytest.approx(p)


# ------------------------------------------------------------------ measurements

def test_ics_gradient_change_leaves_the_net_unchanged(data):
    net = MLP([64, 16, 16, 10], activation="relu", norm="batch", seed=0)
    state = _state(net)
    r = E.ics_gradient_change(net, data[0][:32], data[1][:32], lr=0.1)
    assert [d["layer"] for d in r] == [1, 2]
    _assert_same_state(net, state)


def test_ics_is_zero_when_earlier_layers_do_not_move(data):
    net = MLP([64, 16, 16, 10], activation="relu", norm=None, seed=0)
    r = E.ics_gradient_change(net, data[0][:32], data[1][:32], lr=0.0)
    for d in r:
        assert d["l2"] == 0.0 and d["cos"] == pytest.approx(1.0)


def test_ics_with_noisy_bn_uses_the_same_noise_twice(data):
    net = MLP([64, 16, 16, 10], activation="relu", norm="batch", seed=0, noise=E.centered_noise(1.0))
    r = E.ics_gradient_change(net, data[0][:32], data[1][:32], lr=0.0)
    for d in r:                       # without frozen noise G and G' would differ even at lr=0
        assert d["l2"] == pytest.approx(0.0, abs=1e-15)
    assert net.noise is not None and net.noise.__name__ == "noise"          # restored


def test_landscape_along_gradient_leaves_net_unchanged_and_descends(data):
    net = MLP([64, 16, 16, 10], activation="relu", norm="batch", seed=0)
    state = _state(net)
    r = E.landscape_along_gradient(net, data[0][:64], data[1][:64], [1e-4, 1e-3, 1e-2])
    _assert_same_state(net, state)
    assert np.all(r["loss"] < r["loss0"])                         # small steps go downhill
    assert r["grad_change"][0] < r["grad_change"][-1]
    assert r["loss_range"] >= 0 and r["beta_smoothness"] > 0


def test_centered_noise_has_identity_mean():
    noise = E.centered_noise(1.0)
    rng = np.random.default_rng(0)
    draws = [noise(0, 1000, rng, np) for _ in range(20)]
    scales = np.concatenate([d[0] for d in draws])
    shifts = np.concatenate([d[1] for d in draws])
    assert scales.mean() == pytest.approx(1.0, abs=0.01) and shifts.mean() == pytest.approx(0.0, abs=0.02)
    assert scales.min() >= 0.5 and scales.max() <= 1.5 and np.abs(shifts).max() <= 1.0


def test_lr_sweep_flags_divergence(data):
    r = E.lr_sweep(data, [0.1, 1e3], norms=(None,), steps=30, sizes=(64, 16, 16, 10), activation="linear")
    assert not r[None][0]["diverged"] and r[None][1]["diverged"]
    assert np.isnan(r[None][1]["test_acc"])


def test_batch_stat_spread_ignores_constant_columns():
    x = np.random.default_rng(0).normal(size=(500, 3))
    x[:, 1] = 0.0
    s = E.batch_stat_spread(x, [4], n_batches=100)
    assert s["excess_kurtosis"].shape == (2,)
    assert np.all(np.isfinite(s["var_spread"]))


def test_experiments_accept_xp_numpy(data):
    r = E.small_batch_accuracy(data, [64], norms=("layer",), epochs=1, xp=np)
    assert r["layer"].shape == (1,) and 0.0 <= r["layer"][0] <= 1.0
    s = E.batch_stat_spread(data[0], [8], n_batches=50, xp=np)
    assert s["mean_spread"].shape == (1,)


def test_experiments_run_on_cupy(data):
    cupy = pytest.importorskip("cupy")
    try:
        cupy.cuda.runtime.getDeviceCount()
    except Exception:                                   # pragma: no cover - no device
        pytest.skip("no CUDA device")
    r = E.batch_stat_spread(data[0], [8], n_batches=50, xp=cupy)
    assert np.isfinite(r["mean_spread"]).all()
    net = MLP([64, 16, 10], activation="relu", norm="batch", seed=0, xp=cupy)
    assert len(E.ics_gradient_change(net, data[0][:32], data[1][:32], lr=0.1)) == 1


# ------------------------------------------------------------------ the chapters' statements

def test_ch6_bn_smooths_the_landscape(data):
    kw = dict(sizes=(64, 64, 64, 64, 10), activation="relu", lr=0.1, steps=200, every=40, seed=0)
    plain = E.landscape_during_training(data, norm=None, **kw)
    bn = E.landscape_during_training(data, norm="batch", **kw)
    assert (bn["loss_max"] - bn["loss_min"]).mean() < (plain["loss_max"] - plain["loss_min"]).mean()
    assert bn["max_grad_change"].mean() < 0.5 * plain["max_grad_change"].mean()
    assert bn["beta_smoothness"].mean() < plain["beta_smoothness"].mean()


def test_ch6_noisy_bn_still_trains(data):
    kw = dict(sizes=(64, 64, 64, 64, 10), activation="relu", lr=0.1, steps=400, eval_every=400)
    _, bn = E.train_curves(data, norm="batch", **kw)
    _, noisy = E.train_curves(data, norm="batch", noise=E.centered_noise(1.0), **kw)
    assert noisy["test_acc"][-1] > bn["test_acc"][-1] - 0.03


def test_ch6_ics_smaller_with_bn_in_our_mlp(data):
    # chapter 6 reports (against Santurkar et al.'s VGG result) that our BN MLP has less ICS
    kw = dict(sizes=(64, 64, 64, 64, 10), activation="relu", lr=0.1, steps=200, every=40, seed=0)
    plain = E.ics_during_training(data, norm=None, **kw)
    bn = E.ics_during_training(data, norm="batch", **kw)
    assert bn["rel"].mean() < plain["rel"].mean()


def test_ch6_bn_rescues_the_sigmoid_network(data):
    r = E.lr_sweep(data, [1.0], steps=300, sizes=(64, 64, 64, 64, 10), activation="sigmoid")
    assert r[None][0]["test_acc"] < 0.6 < 0.9 < r["batch"][0]["test_acc"]


def test_ch7_bn_collapses_with_class_pure_batches(data):
    r = E.non_iid_accuracy(data, norms=("batch", "layer"), steps=300)
    assert r["batch"]["non_iid"] < 0.5 < 0.9 < r["batch"]["iid"]
    assert r["layer"]["non_iid"] > 0.9


def test_ch7_bn_suffers_at_batch_size_two_groupnorm_does_not(data):
    r = E.small_batch_accuracy(data, [2, 16], norms=("batch", "group"), epochs=2)
    assert r["batch"][0] < r["batch"][1] - 0.1
    assert abs(r["group"][0] - r["group"][1]) < 0.05
