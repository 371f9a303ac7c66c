"""Bad input raises a clear error naming the argument, what it got and what was expected."""
import re

import numpy as np
import pytest

import bnref

# Every test runs with every CPU kernel set: the checks come before the kernels, whichever run.
pytestmark = pytest.mark.usefixtures("cpu_kernels")

X = np.random.default_rng(0).normal(size=(8, 3))
G, B = np.ones(3), np.zeros(3)


def test_x_with_one_dimension_is_rejected():
    with pytest.raises(ValueError, match=r"x must have at least 2 dimensions, got shape \(8,\)"):
        bnref.batchnorm_forward(X[:, 0], G[:1], B[:1])


def test_gamma_of_wrong_shape_is_rejected():
    with pytest.raises(ValueError, match=r"gamma must have shape \(3,\).*got shape \(4,\)"):
        bnref.batchnorm_forward(X, np.ones(4), B)


def test_gamma_as_column_vector_is_rejected():
    with pytest.raises(ValueError, match=r"gamma must have shape \(3,\).*got shape \(3, 1\)"):
        bnref.batchnorm_forward(X, np.ones((3, 1)), B)


def test_beta_of_wrong_shape_is_rejected():
    with pytest.raises(ValueError, match=r"beta must have shape \(3,\).*got shape \(1, 3\)"):
        bnref.batchnorm_forward(X, G, np.zeros((1, 3)))


@pytest.mark.parametrize("name", ["running_mean", "running_var"])
def test_running_statistics_of_wrong_shape_are_rejected(name):
    kw = dict(running_mean=np.zeros(3), running_var=np.ones(3))
    kw[name] = np.zeros(2)
    with pytest.raises(ValueError, match=rf"{name} must have shape \(3,\).*got shape \(2,\)"):
        bnref.batchnorm_inference(X, G, B, **kw)


def test_one_value_per_channel_in_training_is_rejected_like_pytorch():
    with pytest.raises(ValueError, match=r"more than 1 value per channel when training, got x of shape \(1, 3\)"):
        bnref.batchnorm_forward(X[:1], G, B)


def test_one_value_per_channel_is_fine_in_inference():
    y = bnref.batchnorm_inference(X[:1], G, B, np.zeros(3), np.ones(3))
    assert y.shape == (1, 3)


def test_layer_in_training_rejects_a_single_example():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bnref.BatchNorm(3)(X[:1])


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_, np.complex128])
def test_integer_bool_and_complex_inputs_are_rejected(dtype):
    with pytest.raises(TypeError, match=rf"x must have a floating dtype .*got dtype {np.dtype(dtype)}"):
        bnref.batchnorm_forward(X.astype(dtype), G, B)


def test_float16_on_the_cpu_is_rejected_with_the_supported_dtypes():
    with pytest.raises(TypeError, match="on the CPU bnref supports float32 and float64"):
        bnref.batchnorm_forward(X.astype(np.float16), G, B)


def test_integer_gamma_is_rejected():
    with pytest.raises(TypeError, match="gamma must have a floating dtype"):
        bnref.batchnorm_forward(X, np.ones(3, dtype=int), B)


# ---------------------------------------------------------------- what is not a NumPy or CuPy array

def _torch_tensor():
    torch = pytest.importorskip("torch")
    return torch.zeros(8, 3, dtype=torch.float64)


FOREIGN = {
    "list": (lambda: X.tolist(), "list", r"np.asarray\(x, dtype=np.float64\)"),
    "tuple": (lambda: tuple(map(tuple, X)), "tuple", r"np.asarray\(x, dtype=np.float64\)"),
    "torch tensor": (_torch_tensor, "torch.Tensor", r"x.detach\(\).cpu\(\).numpy\(\)"),
    "np.matrix": (lambda: np.asmatrix(X), "numpy.matrix", r"np.asarray\(x\)"),
    "masked array": (lambda: np.ma.masked_less(X, 0), "numpy.ma.MaskedArray", r"x.filled\(np.nan\)"),
    "duck array": (lambda: type("Duck", (), {"shape": (8, 3), "dtype": np.dtype("f8"), "ndim": 2})(),
                   "test_bnref_errors.Duck", r"np.asarray\(x, dtype=np.float64\)"),
    "scalar": (lambda: np.float64(1.0), "numpy.float64", r"np.asarray\(x, dtype=np.float64\)"),
}


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@pytest.mark.parametrize("kind", FOREIGN)
def test_what_is_not_an_array_is_a_type_error_naming_it_and_the_conversion(kind):
    make, type_name, conversion = FOREIGN[kind]
    with pytest.raises(TypeError) as e:
        bnref.batchnorm_forward(make(), G, B)
    message = str(e.value)
    assert message.startswith(f"x must be a numpy.ndarray or a cupy.ndarray, got {type_name}"), message
    assert re.search(conversion, message), message


@pytest.mark.parametrize("name, shape, call", [
    ("gamma", (3,), lambda t: bnref.batchnorm_forward(X, t, B)),
    ("running_mean", (3,), lambda t: bnref.batchnorm_inference(X, G, B, t, np.ones(3))),
    ("dy", (8, 3), lambda t: bnref.batchnorm_backward(t, bnref.batchnorm_forward(X, G, B)[1])),
    ("running_mean", (3,), lambda t: bnref.running_stats_update(t, np.ones(3), X)),
    ("gamma", (3,), lambda t: bnref.layernorm_forward(X, t, None)),
    ("x", (8, 3), lambda t: bnref.BatchNorm(3)(t)),
    ("x", (2, 3, 4), lambda t: bnref.groupnorm_forward(t, None, None, 3)),
], ids=["batchnorm_forward", "batchnorm_inference", "batchnorm_backward", "running_stats_update",
        "layernorm_forward", "BatchNorm", "groupnorm_forward"])
def test_every_entry_point_refuses_a_torch_tensor_by_the_argument_s_name(name, shape, call):
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=rf"^{name} must be a numpy.ndarray or a cupy.ndarray, got torch.Tensor"):
        call(torch.ones(shape, dtype=torch.float64))


@pytest.mark.parametrize("eps", [0, -1e-5, float("nan"), float("inf"), "1e-5"])
def test_eps_must_be_a_positive_finite_number(eps):
    with pytest.raises(ValueError, match=r"eps must be a finite number > 0"):
        bnref.batchnorm_forward(X, G, B, eps=eps)


@pytest.mark.parametrize("momentum", [-0.1, 1.5, float("nan")])
def test_momentum_outside_zero_one_is_rejected(momentum):
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]"):
        bnref.running_stats_update(np.zeros(3), np.ones(3), X, momentum=momentum)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]"):
        bnref.BatchNorm(3, momentum=momentum)


def test_momentum_none_needs_num_batches_tracked():
    with pytest.raises(ValueError, match="num_batches_tracked must be an int >= 1"):
        bnref.running_stats_update(np.zeros(3), np.ones(3), X, momentum=None)


@pytest.mark.parametrize("axis", [0, 2, -3])
def test_bad_axis_is_rejected(axis):
    with pytest.raises(ValueError, match=f"axis={axis}"):
        bnref.batchnorm_forward(X, G, B, axis=axis)


def test_mixing_numpy_and_cupy_arrays_is_rejected():
    import sys
    import types

    class FakeCupyArray(np.ndarray):
        pass

    # A stand-in `cupy` module whose ndarray type is recognised by the dispatcher.
    fake = types.ModuleType("cupy")
    fake.ndarray = FakeCupyArray
    old = sys.modules.get("cupy")
    sys.modules["cupy"] = fake
    try:
        with pytest.raises(TypeError, match="cannot mix NumPy and CuPy arrays: x on the GPU .*gamma, beta on the CPU"):
            bnref.batchnorm_forward(X.view(FakeCupyArray), G, B)
    finally:
        if old is None:
            del sys.modules["cupy"]
        else:
            sys.modules["cupy"] = old


def test_backward_rejects_a_cache_from_another_function():
    _, ln_cache = bnref.layernorm_forward(X, None, None)
    with pytest.raises(TypeError, match="cache must be the BatchNormCache returned by batchnorm_forward, got LayerNormCache"):
        bnref.batchnorm_backward(X, ln_cache)
    _, bn_cache = bnref.batchnorm_forward(X, G, B)
    with pytest.raises(TypeError, match="cache must be the LayerNormCache"):
        bnref.layernorm_backward(X, bn_cache)
    with pytest.raises(TypeError, match="cache must be the GroupNormCache"):
        bnref.groupnorm_backward(X, bn_cache)
    with pytest.raises(TypeError, match="got tuple"):
        bnref.batchnorm_backward(X, (X, G))


def test_backward_rejects_dy_of_the_wrong_shape():
    _, cache = bnref.batchnorm_forward(X, G, B)
    with pytest.raises(ValueError, match=r"dy must have the shape of the forward's x \(8, 3\), got \(3, 8\)"):
        bnref.batchnorm_backward(X.T, cache)


def test_groupnorm_rejects_groups_that_do_not_divide_channels():
    with pytest.raises(ValueError, match="num_groups must be a positive int that divides the 6 channels"):
        bnref.groupnorm_forward(np.ones((2, 6, 4)), None, None, num_groups=4)


def test_layernorm_rejects_gamma_not_matching_normalised_axes():
    with pytest.raises(ValueError, match=r"gamma must have shape \(3,\)"):
        bnref.layernorm_forward(X, np.ones(8), None)


def test_layer_rejects_wrong_number_of_channels():
    with pytest.raises(ValueError, match="expected num_features=4"):
        bnref.BatchNorm(4)(X)


def test_fold_rejects_statistics_that_do_not_match_output_channels():
    with pytest.raises(ValueError, match=r"running_mean must have shape \(5,\)"):
        bnref.fold_linear(np.ones((5, 3)), None, None, None, np.zeros(3), np.ones(3))


def test_fold_rejects_conv_weight_of_wrong_rank():
    with pytest.raises(ValueError, match="W must be a conv2d"):
        bnref.fold_conv2d(np.ones((5, 3)), None, None, None, np.zeros(5), np.ones(5))
