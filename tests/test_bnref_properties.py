"""Properties of Batch Normalization that hold for every input (checked with hypothesis),
numerical gradient checks, and numerical stability."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

import bnref

# Every test runs with every CPU kernel set (the reference, tuned NumPy, Numba threaded and serial).
pytestmark = pytest.mark.usefixtures("cpu_kernels")


@st.composite
def batches(draw, max_dims=4):
    """A float64 batch (N, C, *spatial) with per-channel spread well above eps, and an axis."""
    ndim = draw(st.integers(2, max_dims))
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=ndim, max_size=ndim)))
    shape = (max(shape[0], 2),) + shape[1:]                      # m > 1 values per channel
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    axis = draw(st.sampled_from([1, -1]))
    C = shape[axis]
    cshape = [1] * ndim
    cshape[axis] = C
    center = rng.uniform(-100, 100, size=C).reshape(cshape)
    spread = rng.uniform(0.1, 10, size=C).reshape(cshape)
    x = center + spread * rng.normal(size=shape)
    return x, axis


def _red(x, axis):
    return tuple(i for i in range(x.ndim) if i != axis % x.ndim)


@settings(max_examples=60, deadline=None)
@given(batches())
def test_normalised_output_has_zero_mean_and_unit_variance_per_channel(case):
    x, axis = case
    y, _ = bnref.batchnorm_forward(x, None, None, eps=1e-30, axis=axis)
    red = _red(x, axis)
    np.testing.assert_allclose(y.mean(axis=red), 0, atol=1e-9)
    np.testing.assert_allclose(y.var(axis=red), 1, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(batches(), st.integers(0, 2**32 - 1))
def test_dx_sums_to_zero_and_is_orthogonal_to_x_hat_per_channel(case, seed):
    x, axis = case
    rng = np.random.default_rng(seed)
    C = x.shape[axis]
    # Orthogonality to x_hat is exact only as eps -> 0 (see the next test), so eps is tiny here.
    gamma = rng.normal(size=C)
    y, cache = bnref.batchnorm_forward(x, gamma, rng.normal(size=C), eps=1e-30, axis=axis)
    dy = rng.normal(size=x.shape)
    dx, _, _ = bnref.batchnorm_backward(dy, cache)
    red = _red(x, axis)
    # the size of the terms that cancel: |gamma| * inv_std * |dy| summed over the channel
    scale = np.max(np.abs(gamma) * cache.inv_std) * np.abs(dy).max() * x.size
    np.testing.assert_allclose(dx.sum(axis=red), 0, atol=1e-12 * scale)
    np.testing.assert_allclose((dx * cache.x_hat).sum(axis=red), 0, atol=1e-9 * scale)


@settings(max_examples=30, deadline=None)
@given(batches(max_dims=3), st.integers(0, 2**32 - 1))
def test_with_eps_dx_dot_x_hat_is_exactly_the_eps_leak(case, seed):
    """sum(dx * x_hat) = gamma * inv_std * sum(dy * x_hat) * eps / (var + eps), per channel."""
    x, axis = case
    rng = np.random.default_rng(seed)
    C = x.shape[axis]
    gamma, eps = rng.normal(size=C), 0.5
    y, cache = bnref.batchnorm_forward(x, gamma, None, eps=eps, axis=axis)
    dy = rng.normal(size=x.shape)
    dx, _, _ = bnref.batchnorm_backward(dy, cache)
    red = _red(x, axis)
    leak = gamma * cache.inv_std * (dy * cache.x_hat).sum(axis=red) * eps / (cache.var + eps)
    np.testing.assert_allclose((dx * cache.x_hat).sum(axis=red), leak, rtol=1e-8, atol=1e-10)


@settings(max_examples=60, deadline=None)
@given(batches(), st.integers(0, 2**32 - 1))
def test_output_is_unchanged_by_per_channel_shift_and_positive_scale(case, seed):
    x, axis = case
    rng = np.random.default_rng(seed)
    C = x.shape[axis]
    cshape = [1] * x.ndim
    cshape[axis] = C
    a = rng.uniform(0.1, 10, size=C).reshape(cshape)             # positive per-channel factor
    b = rng.uniform(-50, 50, size=C).reshape(cshape)
    g, bt = rng.normal(size=C), rng.normal(size=C)
    # eps must be negligible against the variance for exact invariance: sqrt(a^2 var + eps) != a sqrt(var + eps)
    y1, _ = bnref.batchnorm_forward(x, g, bt, eps=1e-30, axis=axis)
    y2, _ = bnref.batchnorm_forward(a * x + b, g, bt, eps=1e-30, axis=axis)
    np.testing.assert_allclose(y2, y1, rtol=1e-7, atol=1e-7)


@settings(max_examples=30, deadline=None)
@given(batches(max_dims=3))
def test_gamma_sqrt_var_and_beta_mean_recover_the_identity(case):
    x, axis = case
    mean, var = bnref.batch_statistics(x, axis=axis)
    y, _ = bnref.batchnorm_forward(x, np.sqrt(var + 1e-5), mean, eps=1e-5, axis=axis)
    np.testing.assert_allclose(y, x, rtol=1e-9, atol=1e-9 * np.abs(x).max())


def _gradcheck(forward, backward, x, params, rng):
    dy = rng.normal(size=forward(x, *params)[0].shape)
    _, cache = forward(x, *params)
    dx, dg, db = backward(dy, cache)
    num_dx = bnref.numerical_gradient(lambda x_: forward(x_, *params)[0], x, dy)
    assert bnref.relative_error(dx, num_dx) < 1e-7
    for analytic, i in ((dg, 0), (db, 1)):
        p = params[i]
        num = bnref.numerical_gradient(
            lambda p_: forward(x, *[p_ if j == i else q for j, q in enumerate(params)])[0], p, dy)
        assert bnref.relative_error(analytic, num) < 1e-7


@pytest.mark.parametrize("shape,axis", [((5, 3), 1), ((3, 2, 4), 1), ((2, 3, 2, 2), 1), ((2, 2, 3), -1)])
def test_batchnorm_backward_passes_numerical_gradient_check(rng, shape, axis):
    C = shape[axis]
    x = rng.normal(1, 2, size=shape)
    _gradcheck(lambda x_, g, b: bnref.batchnorm_forward(x_, g, b, axis=axis), bnref.batchnorm_backward,
               x, [rng.normal(size=C), rng.normal(size=C)], rng)


def test_layernorm_backward_passes_numerical_gradient_check(rng):
    x = rng.normal(size=(4, 6))
    _gradcheck(bnref.layernorm_forward, bnref.layernorm_backward, x, [rng.normal(size=6), rng.normal(size=6)], rng)


def test_groupnorm_backward_passes_numerical_gradient_check(rng):
    x = rng.normal(size=(2, 4, 3))
    _gradcheck(lambda x_, g, b: bnref.groupnorm_forward(x_, g, b, num_groups=2), bnref.groupnorm_backward,
               x, [rng.normal(size=4), rng.normal(size=4)], rng)


@pytest.mark.parametrize("shape,axis", [((4096, 8), 1), ((16, 4, 32, 32), 1), ((16, 32, 32, 4), -1)])
def test_float32_variance_is_stable_when_the_mean_dwarfs_the_spread(rng, shape, axis):
    # mean 1e4, std 1e-2: E[x^2] - E[x]^2 loses every digit in float32 (1e8 has ulp 8).
    x = (1e4 + 1e-2 * rng.normal(size=shape)).astype(np.float32)
    mean, var = bnref.batch_statistics(x, axis=axis)
    red = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    true_var = x.astype(np.float64).var(axis=red)
    assert np.all(np.isfinite(var))
    assert np.max(np.abs(var - true_var) / true_var) <= 1e-3
    y, _ = bnref.batchnorm_forward(x, None, None, axis=axis)
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y.astype(np.float64).var(axis=red), true_var / (true_var + 1e-5), rtol=2e-3)


def test_naive_one_pass_variance_fails_where_bnref_does_not(rng):
    """The reason for the shifted sums: the textbook formula is catastrophically wrong here."""
    x = (1e4 + 1e-2 * rng.normal(size=(4096, 1))).astype(np.float32)
    naive = (x * x).mean(axis=0) - x.mean(axis=0) ** 2
    true_var = x.astype(np.float64).var(axis=0)
    assert np.abs(naive - true_var)[0] / true_var[0] >= 0.5     # at least 50% wrong (here: 0 or negative)
    assert np.abs(bnref.batch_statistics(x)[1] - true_var)[0] / true_var[0] < 1e-3


def test_nan_in_one_channel_propagates_to_that_channel_only(rng):
    x = rng.normal(size=(8, 3))
    x[2, 1] = np.nan
    y, _ = bnref.batchnorm_forward(x, None, None)
    assert np.all(np.isnan(y[:, 1]))
    assert np.all(np.isfinite(y[:, [0, 2]]))


def test_inference_on_one_example_equals_inference_in_a_batch(rng):
    x = rng.normal(size=(5, 4))
    rm, rv = rng.normal(size=4), rng.uniform(1, 2, size=4)
    full = bnref.batchnorm_inference(x, None, None, rm, rv)
    one = bnref.batchnorm_inference(x[2:3], None, None, rm, rv)
    np.testing.assert_array_equal(one[0], full[2])


def test_non_contiguous_input_gives_the_same_answer_as_its_copy(rng):
    x = rng.normal(size=(6, 8, 5))[:, ::2, :]                    # strided view, C = 4
    y1, c1 = bnref.batchnorm_forward(x, None, None)
    y2, c2 = bnref.batchnorm_forward(np.ascontiguousarray(x), None, None)
    np.testing.assert_allclose(y1, y2, rtol=0, atol=1e-15)
