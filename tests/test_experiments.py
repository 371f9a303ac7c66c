"""bnref.experiments: the functions the chapters call behave as documented.

The last tests re-run the experiments of chapters 6 and 7 (seeded, shortened where possible)
and check the qualitative statements the chapters make about their outcome, so that the text
cannot silently drift from the numbers.
"""
import importlib

import numpy as np
import pytest

import bnref
from bnref import experiments as E
from bnref.data import load_digits
from bnref.mlp import MLP

SMALL = dict(sizes=(64, 16, 16, 10), activation="relu")       # a net that trains in milliseconds


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


# ------------------------------------------------------------------ the package

SUBMODULES = ["graph", "running_stats", "training", "noise", "lp_batchnorm", "small_batches"]


@pytest.mark.parametrize("module", SUBMODULES)
def test_every_public_name_of_a_topic_module_is_reexported(module):
    mod = importlib.import_module(f"bnref.experiments.{module}")
    for name in mod.__all__:
        assert name in E.__all__, f"{module}.{name} is missing from bnref.experiments.__all__"
        assert getattr(E, name) is getattr(mod, name)


def test_the_package_docstring_names_every_module_and_public_function():
    for module in SUBMODULES:
        assert f":mod:`.{module}`" in E.__doc__
    for name in E.__all__:
        assert name in E.__doc__, f"the package docstring does not say where {name} is"


# modules whose names are reached through the module (E.convnet.forward), not re-exported
BY_NAME = ["bugs", "depth", "dropout", "convnet"]


@pytest.mark.parametrize("module", BY_NAME)
def test_a_module_reached_by_name_is_listed_and_its_public_names_exist(module):
    mod = importlib.import_module(f"bnref.experiments.{module}")
    assert getattr(E, module) is mod and module in E.__all__
    assert f":mod:`.{module}`" in E.__doc__
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.__all__ names {name}, which it does not define"


def test_every_experiment_module_is_in_the_package_table():
    import pkgutil

    modules = {m.name for m in pkgutil.iter_modules(E.__path__) if not m.name.startswith("_")}
    assert modules == set(SUBMODULES) | set(BY_NAME)


def test_mlp_still_offers_nonstationary_noise():
    from bnref.mlp import nonstationary_noise

    assert nonstationary_noise is E.nonstationary_noise
    with pytest.raises(AttributeError):
        bnref.mlp.no_such_name


# ------------------------------------------------------------------ staged backward

def test_bn_stages_use_the_package_vocabulary():
    assert [name for name, _, _, _ in E.BN_STAGES] == [
        "mean", "x_centered", "sq", "var", "std", "inv_std", "x_hat", "gamma_x_hat", "y"]


def test_bn_stages_are_in_forward_order():
    known = {"x", "gamma", "beta"}
    for name, inputs, _, _ in E.BN_STAGES:
        assert set(inputs) <= known, f"{name} uses {set(inputs) - known} before it is computed"
        known.add(name)


def test_staged_backward_values_are_those_of_bnref(rng):
    x, dy = rng.normal(2.0, 3.0, size=(6, 3)), rng.normal(size=(6, 3))
    gamma, beta = rng.uniform(0.5, 2.0, 3), rng.normal(size=3)
    values, _, _ = E.staged_backward(x, gamma, beta, dy)
    y, cache = bnref.batchnorm_forward(x, gamma, beta)
    np.testing.assert_allclose(values["mean"], x.mean(axis=0))
    np.testing.assert_allclose(values["var"], x.var(axis=0))
    np.testing.assert_allclose(values["inv_std"], cache.inv_std)
    np.testing.assert_allclose(values["x_hat"], cache.x_hat)
    np.testing.assert_allclose(values["y"], y)


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


# ------------------------------------------------------------------ the sweep

def _assert_same_runs(a, b):
    assert list(a) == list(b)
    for norm in a:
        assert len(a[norm]) == len(b[norm])
        for ra, rb in zip(a[norm], b[norm]):
            assert ra.keys() == rb.keys()
            np.testing.assert_array_equal(ra["loss"], rb["loss"])
            for key in ("diverged", "final_loss", "train_acc", "test_acc"):
                np.testing.assert_equal(ra[key], rb[key])


def test_lr_sweep_is_the_sweep_over_lr(data):
    kw = dict(norms=(None, "batch"), steps=20, **SMALL)
    _assert_same_runs(E.lr_sweep(data, [0.1, 1e3], **kw), E.sweep(data, "lr", [0.1, 1e3], **kw))


def test_init_scale_sweep_is_the_sweep_over_init_scale(data):
    kw = dict(norms=("batch",), steps=20, lr=0.3, **SMALL)
    _assert_same_runs(E.init_scale_sweep(data, [0.01, 1.0], **kw),
                      E.sweep(data, "init_scale", [0.01, 1.0], **kw))


def test_a_sweep_run_is_one_train_curves_run_evaluated_at_its_end(data):
    r = E.sweep(data, "batch_size", [16, 32], norms=("layer",), steps=25, lr=0.2, **SMALL)
    for value, run in zip([16, 32], r["layer"]):
        _, h = E.train_curves(data, norm="layer", batch_size=value, steps=25, eval_every=25,
                              lr=0.2, **SMALL)
        np.testing.assert_array_equal(run["loss"], h["loss"])
        assert run["test_acc"] == h["test_acc"][-1] and run["train_acc"] == h["train_acc"][-1]
        assert run["final_loss"] == pytest.approx(np.mean(h["loss"][-20:]), rel=1e-12)
        assert not run["diverged"]


def test_sweep_varies_any_training_keyword(data):
    r = E.sweep(data, "seed", [0, 1], norms=(None,), steps=10, **SMALL)
    assert not np.array_equal(r[None][0]["loss"], r[None][1]["loss"])


@pytest.mark.parametrize("param", ["norm", "steps", "eval_every", "data", "learning_rate"])
def test_sweep_rejects_what_it_cannot_vary(data, param):
    with pytest.raises(ValueError, match="param must be one of"):
        E.sweep(data, param, [1], steps=5, **SMALL)


def test_lr_sweep_flags_divergence(data):
    r = E.lr_sweep(data, [0.1, 1e3], norms=(None,), steps=30, sizes=(64, 16, 16, 10), activation="linear")
    assert not r[None][0]["diverged"] and r[None][1]["diverged"]
    assert np.isnan(r[None][1]["test_acc"])


# ------------------------------------------------------------------ measuring during training

def test_measure_during_training_measures_every_k_steps_on_a_batch_that_depends_only_on_seed_and_step(data):
    batches = {}

    def record(norm):
        batches[norm] = []
        return lambda net, X, y: batches[norm].append((X.copy(), y.copy())) or len(batches[norm])

    plain = E.measure_during_training(data, record(None), every=4, steps=10, batch_size=16, **SMALL)
    bn = E.measure_during_training(data, record("batch"), every=4, steps=10, batch_size=16,
                                   norm="batch", **SMALL)
    assert plain["step"].tolist() == bn["step"].tolist() == [0, 4, 8]
    assert plain["results"] == [1, 2, 3]                        # what measure returned, in order
    for (X0, y0), (X1, y1) in zip(batches[None], batches["batch"]):
        np.testing.assert_array_equal(X0, X1)                   # same batch for both networks
        np.testing.assert_array_equal(y0, y1)
        assert X0.shape == (16, 64)
    assert not np.array_equal(batches[None][0][0], batches[None][1][0])   # a new batch each time


def test_measure_during_training_trains_as_train_curves_does(data):
    kw = dict(steps=12, batch_size=32, seed=3, norm="batch", lr=0.2, **SMALL)
    run = E.measure_during_training(data, lambda net, X, y: None, every=5, **kw)
    _, h = E.train_curves(data, eval_every=12, **kw)
    np.testing.assert_array_equal(run["loss"], h["loss"])
    assert run["test_acc"] == h["test_acc"][-1]


def test_ics_during_training_is_the_driver_with_ics_gradient_change(data):
    kw = dict(norm="batch", lr=0.1, steps=12, every=6, seed=1, **SMALL)
    r = E.ics_during_training(data, **kw)
    run = E.measure_during_training(data, lambda net, X, y: E.ics_gradient_change(net, X, y, 0.1),
                                    **kw)
    np.testing.assert_array_equal(r["step"], run["step"])
    assert r["rel"].shape == (2, 2)                             # (measurements, layers 1..2)
    for key in ("l2", "rel", "cos"):
        np.testing.assert_array_equal(r[key], [[d[key] for d in m] for m in run["results"]])
    np.testing.assert_array_equal(r["loss"], run["loss"])


def test_landscape_during_training_is_the_driver_with_landscape_along_gradient(data):
    kw = dict(norm="batch", lr=0.1, steps=12, every=6, seed=1, noise=E.centered_noise(0.5), **SMALL)
    r = E.landscape_during_training(data, **kw)
    steps_sizes = 0.1 * np.geomspace(0.25, 4.0, 5)
    run = E.measure_during_training(
        data, lambda net, X, y: E.landscape_along_gradient(net, X, y, steps_sizes), **kw)
    np.testing.assert_array_equal(r["loss_min"], [np.nanmin(m["loss"]) for m in run["results"]])
    np.testing.assert_array_equal(r["loss_max"], [np.nanmax(m["loss"]) for m in run["results"]])
    np.testing.assert_array_equal(r["beta_smoothness"], [m["beta_smoothness"] for m in run["results"]])
    assert r["test_acc"] == run["test_acc"]


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


def test_ch5_fine_tuning_with_bn_in_eval_mode_is_consistent_but_needs_a_smaller_step(data):
    """Chapter 5's three fine-tuning runs on the shifted digits, as the chapter runs them."""
    from bnref.mlp import train
    net = MLP([64, 32, 32, 10], activation="relu", norm="batch", seed=0)
    train(net, data, steps=400, batch_size=64, lr=0.1)
    shifted = tuple(0.5 * a + 0.3 if i % 2 == 0 else a for i, a in enumerate(data))

    def fine_tune(momentum=0.1, in_eval=False, lr=0.1):
        tuned = net.copy()
        for bn in tuned.bn:
            bn.momentum = momentum
        history = train(tuned.freeze_bn(in_eval).train(), shifted, steps=200, batch_size=64, lr=lr)
        return tuned.freeze_bn(False).accuracy(shifted[2], data[3]), np.mean(history["loss"][-20:]), history

    usual, _, _ = fine_tune()
    eval_fast, eval_fast_loss, h = fine_tune(in_eval=True)
    eval_slow, _, _ = fine_tune(in_eval=True, lr=0.03)
    stale, _, _ = fine_tune(momentum=0.0)
    assert eval_slow >= usual - 0.01 and eval_slow > stale + 0.1      # consistent, and as good
    assert eval_fast_loss > h["loss"][0] and eval_fast < stale        # at lr 0.1 the loss climbs


def test_ch2_the_sigmoid_network_without_bn_is_slow_without_saturating(data):
    """Chapter 2's verdict: few inputs in the tails, mean sigma' like BN's, and still slow."""
    from bnref.mlp import train
    X_test, y_test = data[2], data[3]
    result = {}
    for norm in (None, "batch"):
        net = MLP([64, 100, 100, 100, 10], activation="sigmoid", norm=norm, seed=0)
        z = []

        def record(step, net, z=z):
            if step % 150 == 0:
                net.loss_and_grads(X_test, y_test, update_running_stats=False)
                z.append(net.normed[2].copy())              # (450, 100): layer-3 sigmoid inputs
        h = train(net, data, steps=1500, batch_size=60, lr=0.5, seed=0, callback=record, eval_every=100)
        z = np.array(z)
        s = 1 / (1 + np.exp(-z))
        first_90 = h["eval_step"][int(np.argmax(np.array(h["test_acc"]) >= 0.9))]
        result[norm] = ((np.abs(z) > 4).mean(axis=(1, 2)).max(), (s * (1 - s)).mean(axis=(1, 2)), first_90)
    saturated, slope, first_90 = result[None]
    assert saturated < 0.03 and slope.min() > 0.15                 # hardly any saturation ...
    assert first_90 >= 5 * result["batch"][2]                       # ... and still much slower
    assert abs(slope[-1] - result["batch"][1][-1]) < 0.02           # the same mean sigma' at the end


# ---------------------------------------------------------------- l_p-BN (chapter 6)

@pytest.mark.parametrize("p", [1, 2, 3, np.inf])
def test_lp_batchnorm_backward_matches_a_numerical_gradient(rng, p):
    from bnref.experiments.lp_batchnorm import lp_batchnorm_backward, lp_batchnorm_forward
    x, dy = rng.normal(1.0, 2.0, size=(9, 4)), rng.normal(size=(9, 4))
    gamma, beta = rng.uniform(0.5, 2.0, 4), rng.normal(size=4)
    y, cache = lp_batchnorm_forward(x, gamma, beta, p)
    dx, dgamma, dbeta = lp_batchnorm_backward(dy, cache)
    for got, arg in ((dx, x), (dgamma, gamma), (dbeta, beta)):
        f = {id(x): lambda v: lp_batchnorm_forward(v, gamma, beta, p)[0],
             id(gamma): lambda v: lp_batchnorm_forward(x, v, beta, p)[0],
             id(beta): lambda v: lp_batchnorm_forward(x, gamma, v, p)[0]}[id(arg)]
        assert bnref.relative_error(got, bnref.numerical_gradient(f, arg.copy(), dy)) < 1e-6
    assert np.allclose(dx.sum(axis=0), 0)                     # centred, like BN's


def test_l2_batchnorm_is_bn_up_to_where_eps_goes(rng):
    from bnref.experiments.lp_batchnorm import lp_batchnorm_forward
    x = rng.normal(3.0, 2.0, size=(16, 5))
    y, _ = lp_batchnorm_forward(x, np.ones(5), np.zeros(5), p=2, eps=0.0)
    np.testing.assert_allclose(y, bnref.batchnorm_forward(x, None, None, eps=1e-12)[0], atol=1e-9)


def test_an_mlp_trains_with_lp_batchnorm(data):
    for norm in ("batch_l1", "batch_linf"):
        net, history = E.train_curves(data, norm=norm, activation="relu", sizes=(64, 32, 10), steps=200,
                                      lr=0.1, eval_every=200)
        assert history["test_acc"][-1] > 0.8, norm


def test_ch6_lp_batchnorm_smooths_the_landscape_like_bn_layernorm_does_not(data):
    """Chapter 6's verdict on Santurkar et al.'s l_p-BN claim (one seed, as the page's first)."""
    out = {}
    for norm in (None, "batch", "batch_l1", "batch_linf", "layer"):
        r = E.landscape_during_training(data, norm=norm, sizes=(64, 64, 64, 64, 10), activation="relu",
                                        lr=0.1, steps=300, every=30, seed=0)
        out[norm] = ((r["loss_max"] - r["loss_min"]).mean(), r["max_grad_change"].mean())
    for norm in ("batch_l1", "batch_linf"):
        assert out[norm][0] < out[None][0] / 2 and out[norm][1] < out[None][1] / 4, norm
        assert out[norm][1] < 2 * out["batch"][1], norm
    assert out["layer"][1] > out[None][1] / 3                # LayerNorm: not BN's smoothing
