"""Chapter 6: deep networks in training, with and without BN (claims 7 and 27).

Specifications of bnref.experiments.depth's training measurements: how far each layer's input
distribution drifts (input_drift, drift_measures) and the test accuracy against depth and
training-set size (trained_accuracy, accuracy_grid). The last tests pin the direction of the
findings that the chapter's prose states.
"""
import numpy as np
import pytest

from bnref.data import load_digits
from bnref.experiments.depth import (accuracy_grid, deep_mlp, drift_measures, input_drift,
                                     trained_accuracy)
from bnref.mlp import train


@pytest.fixture(scope="module")
def data():
    return load_digits()


def _moments(z):
    return z.mean(axis=0), z.std(axis=0)


# ------------------------------------------------------------------ drift measures

def test_drift_measures_are_the_unit_means_of_the_normalised_moves(rng):
    mean, std = rng.normal(size=(4, 3, 5)), rng.uniform(0.5, 2.0, size=(4, 3, 5))
    shift, scale = drift_measures(mean, std)
    assert shift.shape == scale.shape == (4, 3)
    t, l = 2, 1
    assert shift[t, l] == pytest.approx(np.mean(np.abs(mean[t, l] - mean[0, l]) / std[0, l]))
    assert scale[t, l] == pytest.approx(np.mean(np.abs(np.log(std[t, l] / std[0, l]))))
    np.testing.assert_array_equal(shift[0], 0.0)
    np.testing.assert_array_equal(scale[0], 0.0)


def test_drift_measures_do_not_depend_on_the_units_of_the_data(rng):
    mean, std = rng.normal(size=(3, 2, 4)), rng.uniform(0.5, 2.0, size=(3, 2, 4))
    shift, scale = drift_measures(mean, std)
    shift_s, scale_s = drift_measures(10 * mean + 3, 10 * std)      # z -> 10 z + 3
    np.testing.assert_allclose(shift_s, shift)
    np.testing.assert_allclose(scale_s, scale, atol=1e-12)


def test_drift_measures_treat_shrinking_and_growing_alike():
    mean = np.zeros((3, 1, 1))
    std = np.array([1.0, 2.0, 0.5]).reshape(3, 1, 1)
    _, scale = drift_measures(mean, std)
    assert scale[1, 0] == pytest.approx(scale[2, 0]) == pytest.approx(np.log(2))


@pytest.mark.parametrize("mean_shape, std_shape", [((3, 4), (3, 4)), ((2, 3, 4), (2, 3, 5))])
def test_drift_measures_refuse_arrays_of_the_wrong_shape(mean_shape, std_shape):
    with pytest.raises(ValueError, match=r"mean and std must both have shape \(records, depth, width\)"):
        drift_measures(np.zeros(mean_shape), np.ones(std_shape))


def test_drift_measures_refuse_a_unit_with_no_initial_spread():
    std = np.ones((2, 1, 3))
    std[0, 0, 1] = 0.0
    with pytest.raises(ValueError, match=r"std\[0\].*must be positive.*0\.0"):
        drift_measures(np.zeros((2, 1, 3)), std)


# ------------------------------------------------------------------ input drift in training

@pytest.fixture(scope="module")
def drift(data):
    """Depth-6 ReLU networks of width 16, 120 steps at learning rate 0.1, records every 40."""
    kw = dict(depth=6, width=16, lr=0.1, steps=120, every=40)
    return {norm: input_drift(data, norm=norm, seed=0, **kw) for norm in (None, "batch")}


def test_drift_is_recorded_at_step_0_every_few_steps_and_after_the_last_update(drift):
    r = drift[None]
    assert r["step"].tolist() == [0, 40, 80, 120]
    assert sorted(k for k in r if isinstance(r[k], dict)) == ["normed", "preact"]
    assert sorted(k for k in drift["batch"] if isinstance(drift["batch"][k], dict)) == [
        "normed", "preact", "x_hat"]
    for site in ("mean", "std"):
        assert r["preact"][site].shape == (4, 6, 16)           # records, layers, units
    for site in ("mean_shift", "log_std_change"):
        assert r["preact"][site].shape == (4, 6)
        np.testing.assert_array_equal(r["preact"][site][0], 0.0)


def test_the_records_are_the_moments_over_the_test_images_before_and_after_training(data):
    """Step 0 is the initial network, the last record the trained one; probing changes nothing."""
    for norm in (None, "batch"):
        r = input_drift(data, depth=4, norm=norm, width=16, lr=0.1, steps=50, every=25, seed=3)
        net = deep_mlp(4, width=16, norm=norm, seed=3)
        X_test = data[2]
        net.forward(X_test, training=True)
        for l in range(4):
            np.testing.assert_allclose(r["preact"]["mean"][0, l], _moments(net.preacts[l])[0], rtol=1e-12)
            np.testing.assert_allclose(r["preact"]["std"][0, l], _moments(net.preacts[l])[1], rtol=1e-12)
        net = deep_mlp(4, width=16, norm=norm, seed=3)
        train(net, data, steps=50, lr=0.1, seed=3)                  # the same run, no probes
        assert r["test_acc"] == net.accuracy(data[2], data[3])      # (running statistics untouched)
        net.forward(X_test, training=True)
        for l in range(4):
            np.testing.assert_allclose(r["normed"]["mean"][-1, l], _moments(net.normed[l])[0],
                                       rtol=1e-10, atol=1e-12)


def test_without_bn_what_enters_the_activation_is_the_preactivation(drift):
    r = drift[None]
    np.testing.assert_array_equal(r["normed"]["mean"], r["preact"]["mean"])
    assert "x_hat" not in r


def test_with_bn_the_normalised_input_does_not_move_by_construction(drift):
    x_hat = drift["batch"]["x_hat"]
    assert x_hat["mean_shift"].max() < 1e-9                      # mean 0 at every record
    # std sqrt(var / (var + eps)): 1 up to eps = 1e-5 against variances of order 0.1 to 1
    assert x_hat["log_std_change"].max() < 1e-3
    # what the activation sees, gamma x_hat + beta, moves as gamma and beta learn
    assert drift["batch"]["normed"]["mean_shift"][-1].min() > 1e-3


def test_the_drift_numbers_are_reproducible_for_a_seed(data, drift):
    again = input_drift(data, depth=6, width=16, lr=0.1, steps=120, every=40, seed=0)
    for key in ("mean_shift", "log_std_change"):
        np.testing.assert_array_equal(again["preact"][key], drift[None]["preact"][key])
    other = input_drift(data, depth=6, width=16, lr=0.1, steps=120, every=40, seed=1)
    assert not np.allclose(other["preact"]["mean_shift"], drift[None]["preact"]["mean_shift"])


@pytest.mark.parametrize("name, value", [("depth", 0), ("steps", -1), ("every", 0), ("every", 2.5)])
def test_input_drift_refuses_a_count_that_is_not_a_positive_integer(data, name, value):
    kw = dict(depth=2, steps=10, every=5) | {name: value}
    with pytest.raises(ValueError, match=rf"{name} must be a positive integer, got {value!r}"):
        input_drift(data, width=8, **kw)


# ------------------------------------------------------------------ accuracy against depth and data

def test_trained_accuracy_is_that_of_the_network_trained_by_hand(data):
    net = deep_mlp(3, width=16, norm="batch", activation="sigmoid", seed=2)
    train(net, data, steps=60, lr=0.5, seed=2)
    expected = net.accuracy(data[2], data[3])
    assert trained_accuracy(data, 3, norm="batch", activation="sigmoid", width=16, lr=0.5,
                            steps=60, seed=2) == expected


def test_trained_accuracy_on_a_subset_trains_on_a_seeded_random_subset(data):
    idx = np.random.default_rng(4).choice(len(data[0]), 100, replace=False)
    subset = (data[0][idx], data[1][idx], data[2], data[3])
    net = deep_mlp(2, width=16, norm=None, seed=4)
    train(net, subset, steps=40, lr=0.1, seed=4)
    assert trained_accuracy(data, 2, width=16, steps=40, n_train=100, seed=4) == \
        net.accuracy(data[2], data[3])


def test_trained_accuracy_is_nan_for_a_diverged_run(data):
    assert np.isnan(trained_accuracy(data, 6, width=16, lr=20.0, steps=30))


@pytest.mark.parametrize("kwargs, message", [
    (dict(depth=0), r"depth must be a positive integer, got 0"),
    (dict(n_train=0), r"n_train must be a positive integer, got 0"),
    (dict(n_train=5000), r"n_train must be at most the 1347 training examples, got 5000"),
    (dict(n_train=50), r"batch_size must be at most the 50 training examples \(n_train\), got 64"),
    (dict(batch_size=0), r"batch_size must be a positive integer, got 0"),
])
def test_trained_accuracy_refuses_bad_arguments_by_name(data, kwargs, message):
    kw = dict(depth=2, width=8, steps=5) | kwargs
    with pytest.raises(ValueError, match=message):
        trained_accuracy(data, **kw)


def test_accuracy_grid_is_trained_accuracy_at_every_point(data):
    g = accuracy_grid(data, depths=(1, 3), n_trains=(200, None), lrs=(0.1, 0.5), seeds=(0, 1),
                      width=8, steps=20)
    assert g["acc"].shape == (2, 2, 2, 2, 2)                      # norms, depths, sizes, lrs, seeds
    assert (g["norms"], g["depths"], g["n_trains"]) == ((None, "batch"), (1, 3), (200, None))
    i, d, n, k, s = 1, 1, 0, 1, 1                                 # BN, depth 3, 200 examples, lr 0.5, seed 1
    assert g["acc"][i, d, n, k, s] == trained_accuracy(data, 3, norm="batch", width=8, steps=20,
                                                       n_train=200, lr=0.5, seed=1)


@pytest.mark.parametrize("name", ["depths", "n_trains", "lrs", "seeds", "norms"])
def test_accuracy_grid_refuses_an_empty_axis_by_name(data, name):
    with pytest.raises(ValueError, match=rf"{name} must be a non-empty sequence, got \(\)"):
        accuracy_grid(data, width=8, steps=5, **{name: ()})


# ------------------------------------------------------------------ the findings the chapter states

def test_without_bn_the_input_drift_grows_with_depth_with_bn_it_does_not(data):
    """Claim 7, on the chapter's network (8 ReLU layers of 32, lr 0.1, 300 steps), two seeds."""
    runs = {norm: [input_drift(data, depth=8, norm=norm, seed=s) for s in (0, 1)]
            for norm in (None, "batch")}

    def final(norm, site, key):                                   # (depth,): mean over seeds
        return np.mean([r[site][key][-1] for r in runs[norm]], axis=0)

    for key in ("mean_shift", "log_std_change"):
        plain = final(None, "preact", key)
        assert plain[-1] > 3 * plain[0] and plain[-1] > plain[3] > plain[0]
        into_bn = final("batch", "preact", key)[1:]               # layer 1 sees the raw pixels
        assert into_bn.max() < 2 * into_bn.min()                  # level, not growing
        into_relu = final("batch", "normed", key)
        assert into_relu[:-1].max() < 0.5 * plain[0]
        assert into_relu[-1] > into_relu[:-1].max()              # gamma, beta of the last move most


def _best_over_lrs(grid):
    """(norms, depths x sizes): the best learning rate's test accuracy, mean over the seeds."""
    acc = grid["acc"].reshape(len(grid["norms"]), -1, len(grid["lrs"]), len(grid["seeds"]))
    return np.nanmax(acc.mean(axis=-1), axis=-1)


def test_bn_helps_a_relu_network_more_at_depths_6_and_8_than_at_depth_2(data):
    """Claim 27, the depth half: best test accuracy over learning rates, mean of two seeds."""
    g = accuracy_grid(data, depths=(2, 6, 8), lrs=(0.1, 0.2, 1.0), seeds=(0, 1), width=32,
                      steps=300)
    best = _best_over_lrs(g)
    gain = best[1] - best[0]
    assert gain[1] > gain[0] + 0.02 and gain[2] > gain[0] + 0.02
    assert best[1].max() - best[1].min() < 0.02                  # with BN: about level with depth


def test_without_bn_a_sigmoid_network_of_4_layers_does_not_train_in_300_steps(data):
    for lr in (0.3, 1.0, 3.0):
        assert trained_accuracy(data, 4, activation="sigmoid", lr=lr) < 0.2
    assert trained_accuracy(data, 4, norm="batch", activation="sigmoid", lr=0.3) > 0.9


def test_bn_helps_no_more_with_all_the_training_images_than_with_300(data):
    """Claim 27, the data half: 4 ReLU layers of 32, three seeds."""
    g = accuracy_grid(data, depths=(4,), n_trains=(300, None), lrs=(0.1, 0.2, 1.0, 2.0),
                      seeds=(0, 1, 2), width=32, steps=300)
    best = _best_over_lrs(g)
    gain = best[1] - best[0]                                    # (sizes,)
    assert (gain > 0).all()
    assert gain[1] < gain[0] + 0.01
