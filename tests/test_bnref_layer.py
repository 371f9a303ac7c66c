"""The layers as a PyTorch user expects them: the names, the repr, the state, the rank checks.

The numbers of the layers (step after step, train and eval) are checked against PyTorch in
tests/test_bnref_oracle.py; this file checks the interface around them.
"""
import numpy as np
import pytest
import torch

import bnref

LAYERS = [(bnref.BatchNorm1d, torch.nn.BatchNorm1d, (16, 5)),
          (bnref.BatchNorm1d, torch.nn.BatchNorm1d, (16, 5, 7)),
          (bnref.BatchNorm2d, torch.nn.BatchNorm2d, (8, 5, 4, 6)),
          (bnref.BatchNorm3d, torch.nn.BatchNorm3d, (4, 5, 3, 4, 2))]
OPTIONS = [dict(), dict(eps=1e-3, momentum=0.01), dict(momentum=None), dict(affine=False),
           dict(track_running_stats=False), dict(bias=False), dict(affine=False, track_running_stats=False)]


def _ids(kw):
    return ",".join(f"{k}={v}" for k, v in kw.items()) or "defaults"


# ---------------------------------------------------------------- the form PyTorch prints

@pytest.mark.parametrize("kw", OPTIONS, ids=_ids)
@pytest.mark.parametrize("ours, theirs", [(bnref.BatchNorm1d, torch.nn.BatchNorm1d),
                                          (bnref.BatchNorm2d, torch.nn.BatchNorm2d),
                                          (bnref.BatchNorm3d, torch.nn.BatchNorm3d)], ids=["1d", "2d", "3d"])
def test_the_repr_is_pytorch_s(ours, theirs, kw):
    assert repr(ours(6, **kw)) == repr(theirs(6, **kw))


def test_the_general_layer_s_repr_names_a_channels_last_axis():
    assert repr(bnref.BatchNorm(3)) == ("BatchNorm(3, eps=1e-05, momentum=0.1, affine=True, bias=True, "
                                        "track_running_stats=True)")
    assert repr(bnref.BatchNorm(3, axis=-1)).endswith("track_running_stats=True, axis=-1)")


# ---------------------------------------------------------------- weight and bias are gamma and beta

def test_weight_and_bias_are_gamma_and_beta_under_pytorch_s_names():
    bn = bnref.BatchNorm2d(3)
    assert bn.weight is bn.gamma and bn.bias is bn.beta
    bn.weight = np.full(3, 2.0)
    assert bn.gamma.tolist() == [2.0, 2.0, 2.0]
    assert bnref.BatchNorm2d(3, affine=False).weight is None
    no_shift = bnref.BatchNorm2d(3, bias=False)
    assert no_shift.bias is None and no_shift.weight is not None


def test_a_layer_without_bias_gives_no_shift_and_no_dbeta(rng):
    x = rng.normal(2, 1, (8, 3))
    bn = bnref.BatchNorm1d(3, bias=False)
    y = bn(x)
    np.testing.assert_allclose(y.mean(axis=0), 0, atol=1e-12)
    bn.backward(np.ones_like(x))
    assert bn.dbeta is None and bn.dgamma is not None


# ---------------------------------------------------------------- the state, in PyTorch's keys

@pytest.mark.parametrize("kw", OPTIONS, ids=_ids)
def test_state_dict_has_pytorch_s_keys_in_its_order(kw):
    assert list(bnref.BatchNorm2d(4, **kw).state_dict()) == list(torch.nn.BatchNorm2d(4, **kw).state_dict())


def _trained_torch(theirs, shape, rng, steps=5):
    """A few optimiser steps in torch, so that weight, bias and the running statistics all move."""
    opt = torch.optim.SGD(theirs.parameters(), lr=0.5) if list(theirs.parameters()) else None
    dtype = theirs.running_mean.dtype
    for step in range(steps):
        x = torch.tensor(rng.normal(1.5 + step, 2.0, shape), dtype=dtype)
        loss = (theirs(x) * torch.tensor(rng.normal(size=shape), dtype=dtype)).sum()
        if opt:
            opt.zero_grad()
            loss.backward()
            opt.step()
    return theirs


@pytest.mark.parametrize("kw", [dict(), dict(momentum=None), dict(bias=False), dict(affine=False)], ids=_ids)
@pytest.mark.parametrize("ours_cls, torch_cls, shape", LAYERS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_a_trained_torch_layer_s_state_loads_and_gives_the_same_eval_output(ours_cls, torch_cls, shape, kw, rng):
    theirs = _trained_torch(torch_cls(shape[1], dtype=torch.float64, **kw), shape, rng)
    ours = ours_cls(shape[1], **kw)
    result = ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    assert result == ([], [])
    assert ours.num_batches_tracked == 5
    x = rng.normal(3.0, 2.5, shape)
    np.testing.assert_allclose(ours.eval()(x), theirs.eval()(torch.tensor(x)).detach().numpy(),
                               rtol=1e-12, atol=1e-12)
    # and training goes on from there as it does in torch
    ours.train(), theirs.train()
    x = rng.normal(size=shape)
    np.testing.assert_allclose(ours(x), theirs(torch.tensor(x)).detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours.running_var, theirs.running_var.numpy(), rtol=1e-12)


def test_a_float32_torch_state_loads_into_the_layer_s_own_dtype(rng):
    theirs = _trained_torch(torch.nn.BatchNorm2d(3), (4, 3, 2, 2), rng)     # float32
    ours = bnref.BatchNorm2d(3)                                              # float64
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    assert ours.weight.dtype == ours.running_var.dtype == np.float64
    np.testing.assert_array_equal(ours.running_mean, theirs.running_mean.numpy().astype(np.float64))


def test_state_dict_is_a_copy_and_round_trips():
    a = bnref.BatchNorm1d(2)
    state = a.state_dict()
    a(np.array([[0.0, 1.0], [2.0, 5.0]]))
    assert state["running_mean"].tolist() == [0.0, 0.0] and int(state["num_batches_tracked"]) == 0
    b = bnref.BatchNorm1d(2)
    b.load_state_dict(a.state_dict())
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[k], v)


def test_load_state_dict_refuses_missing_and_unexpected_keys_unless_not_strict():
    bn = bnref.BatchNorm2d(3)
    state = bn.state_dict()
    del state["bias"]
    state["momentum"] = np.array(0.1)
    with pytest.raises(ValueError, match=r"missing keys \['bias'\], unexpected keys \['momentum'\]"):
        bn.load_state_dict(state)
    state["weight"] = np.full(3, 2.0)
    assert bn.load_state_dict(state, strict=False) == (["bias"], ["momentum"])
    assert bn.weight.tolist() == [2.0, 2.0, 2.0]


@pytest.mark.parametrize("key, value, error, words", [
    ("weight", np.ones(4), ValueError, r"state_dict\['weight'\] must have shape \(3,\) \(num_features\), got shape \(4,\)"),
    ("running_var", -np.ones(3), ValueError, r"state_dict\['running_var'\] must be >= 0"),
    ("running_mean", np.zeros(3, dtype=int), TypeError, r"must have a floating dtype, got int"),
    ("num_batches_tracked", np.array([3]), ValueError, r"must be a 0-d array holding an int >= 0"),
    ("bias", [0.0, 0.0, 0.0], TypeError, r"state_dict\['bias'\] must be a numpy.ndarray .* got list"),
])
def test_load_state_dict_refuses_a_bad_value_and_changes_nothing(key, value, error, words):
    bn = bnref.BatchNorm2d(3)
    state = bn.state_dict()
    state["weight"] = np.full(3, 7.0)          # valid, and must not be loaded either
    state[key] = value
    with pytest.raises(error, match=words):
        bn.load_state_dict(state)
    assert bn.weight.tolist() == [1.0, 1.0, 1.0]


def test_a_torch_state_not_converted_to_numpy_is_refused_with_the_conversion():
    with pytest.raises(TypeError, match=r"got torch.Tensor; convert it first: .*\.detach\(\)\.cpu\(\)\.numpy\(\)"):
        bnref.BatchNorm2d(3).load_state_dict(torch.nn.BatchNorm2d(3).state_dict())


# ---------------------------------------------------------------- the rank, as BatchNorm1d/2d/3d check it

@pytest.mark.parametrize("ours, theirs, ndim", [
    (bnref.BatchNorm1d, torch.nn.BatchNorm1d, 4), (bnref.BatchNorm1d, torch.nn.BatchNorm1d, 1),
    (bnref.BatchNorm2d, torch.nn.BatchNorm2d, 3), (bnref.BatchNorm2d, torch.nn.BatchNorm2d, 5),
    (bnref.BatchNorm3d, torch.nn.BatchNorm3d, 4)])
def test_a_wrong_rank_is_refused_in_pytorch_s_words(ours, theirs, ndim):
    shape = (2, 3, 2, 2, 2)[:ndim] if ndim > 1 else (3,)
    with pytest.raises(ValueError) as torch_error:
        theirs(3)(torch.zeros(shape))
    with pytest.raises(ValueError) as our_error:
        ours(3)(np.zeros(shape))
    assert str(our_error.value).startswith(f"{ours.__name__} {torch_error.value}"[:-1])   # "... (got 4D input"


def test_the_general_layer_takes_any_rank_from_two():
    for shape in [(4, 3), (4, 3, 2), (4, 3, 2, 2), (2, 3, 2, 2, 2), (2, 3, 1, 2, 2, 2)]:
        assert bnref.BatchNorm(3)(np.random.default_rng(0).normal(size=shape)).shape == shape


# ---------------------------------------------------------------- arguments checked at construction

@pytest.mark.parametrize("kw, error, words", [
    (dict(num_features=0), ValueError, "num_features must be a positive int"),
    (dict(num_features=2.5), ValueError, "num_features must be a positive int"),
    (dict(num_features=True), ValueError, "num_features must be a positive int"),
    (dict(eps=0), ValueError, "eps must be a finite number > 0"),
    (dict(momentum=2), ValueError, r"momentum must be in \[0, 1\]"),
    (dict(axis=5), ValueError, r"axis must be 1 \(channels first.*or -1 \(channels last.*got 5"),
    (dict(axis=0), ValueError, "axis must be 1"),
    (dict(axis="1"), ValueError, "axis must be 1"),
    (dict(affine="yes"), TypeError, "affine must be True or False, got 'yes'"),
    (dict(track_running_stats=1), TypeError, "track_running_stats must be True or False, got 1"),
    (dict(bias=None), TypeError, "bias must be True or False"),
    (dict(dtype=np.int64), TypeError, r"dtype must be one of \('float32', 'float64'\) for numpy parameters, got int64"),
    (dict(dtype="half"), TypeError, "dtype must be one of"),
    (dict(dtype="no such dtype"), TypeError, "dtype must be a floating dtype"),
    (dict(xp=torch), TypeError, "xp must be the numpy or the cupy module"),
])
def test_a_bad_argument_is_refused_when_the_layer_is_made(kw, error, words):
    kw = {"num_features": 3, **kw}
    with pytest.raises(error, match=words):
        bnref.BatchNorm(**kw)
