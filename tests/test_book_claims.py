"""The claims that chapters 4 to 7 make about bnref, checked as properties of the package.

Each test names the chapter and the claim. Experiments whose outcome is empirical (training
runs) are in tests/test_experiments.py; these are facts about the formulas.
"""
import numpy as np
import pytest

import bnref
from bnref.experiments import (CONVENTIONS, batch_dependence, batch_stat_spread, convert_momentum,
                               running_average, staged_backward, variance_noise)


def _bn(x, gamma, beta, eps=1e-5):
    return bnref.batchnorm_forward(x, gamma, beta, eps=eps)


def _reduce_axes(x):
    return (0,) + tuple(range(2, x.ndim))


# ------------------------------------------------------------------------- chapter 3

def test_ch3_gamma_beta_give_back_x_only_for_a_batch_with_those_statistics(rng):
    x, other = rng.normal(2.0, 3.0, size=(64, 5)), rng.normal(1.0, 2.0, size=(64, 5))
    _, cache = _bn(x, None, None)
    gamma, beta = np.sqrt(cache.var + 1e-5), cache.mean
    np.testing.assert_allclose(_bn(x, gamma, beta)[0], x, atol=1e-12)
    assert np.abs(_bn(other, gamma, beta)[0] - other).max() > 0.5           # training mode: not x
    np.testing.assert_allclose(bnref.batchnorm_inference(other, gamma, beta, cache.mean, cache.var), other,
                               atol=1e-12)                                 # eval mode: the identity


def test_ch3_sigmoid_is_nearly_linear_within_one_not_two():
    sigmoid = lambda z: 1 / (1 + np.exp(-z))                              # noqa: E731
    slope = lambda z: sigmoid(z) * (1 - sigmoid(z))                      # noqa: E731
    assert slope(0) == 0.25 and round(slope(1), 2) == 0.20 and round(slope(2), 3) == 0.105
    z = np.random.default_rng(0).normal(size=200_000)
    assert abs(np.mean(np.abs(z) < 1) - 0.683) < 0.005


# ------------------------------------------------------------------------- chapter 4

@pytest.mark.parametrize("shape", [(8, 4), (3, 5, 2, 3)])
def test_ch4_staged_backward_equals_compact_formula(rng, shape):
    x = rng.normal(2.0, 3.0, size=(shape[0], int(np.prod(shape[1:]))))
    D = x.shape[1]
    gamma, beta, dy = rng.uniform(0.5, 2, D), rng.normal(size=D), rng.normal(size=x.shape)
    _, grads, contribs = staged_backward(x, gamma, beta, dy)
    y, cache = _bn(x, gamma, beta)
    dx, dgamma, dbeta = bnref.batchnorm_backward(dy, cache)
    np.testing.assert_allclose(grads["x"], dx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads["gamma"], dgamma, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads["beta"], dbeta, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads["x_centered"],
                               contribs[("x_hat", "x_centered")] + contribs[("sq", "x_centered")])


def test_ch4_numerical_gradient_check_passes(rng):
    x = rng.normal(2.0, 3.0, size=(8, 4))
    gamma, beta, dy = rng.uniform(0.5, 2, 4), rng.normal(size=4), rng.normal(size=(8, 4))
    _, cache = _bn(x, gamma, beta)
    dx, dgamma, dbeta = bnref.batchnorm_backward(dy, cache)
    num_dx = bnref.numerical_gradient(lambda x_: _bn(x_, gamma, beta)[0], x.copy(), dy)
    num_dgamma = bnref.numerical_gradient(lambda g_: _bn(x, g_, beta)[0], gamma.copy(), dy)
    num_dbeta = bnref.numerical_gradient(lambda b_: _bn(x, gamma, b_)[0], beta.copy(), dy)
    assert bnref.relative_error(dx, num_dx) < 1e-6
    assert bnref.relative_error(dgamma, num_dgamma) < 1e-8
    assert bnref.relative_error(dbeta, num_dbeta) < 1e-8


def test_ch4_forgetting_a_path_gives_large_errors(rng):
    x = rng.normal(2.0, 3.0, size=(8, 4))
    gamma, beta, dy = rng.uniform(0.5, 2, 4), rng.normal(size=4), rng.normal(size=(8, 4))
    values, grads, contribs = staged_backward(x, gamma, beta, dy)
    wrong_no_mean = contribs[("x_centered", "x")]
    wrong_no_stats = grads["x_hat"] * values["inv_std"]
    wrong_no_var = wrong_no_stats - wrong_no_stats.mean(axis=0)
    for wrong in (wrong_no_mean, wrong_no_var, wrong_no_stats):
        err = np.linalg.norm(wrong - grads["x"]) / (np.linalg.norm(wrong) + np.linalg.norm(grads["x"]))
        assert err > 0.1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(16, 5), (4, 3, 5, 5)])
def test_ch4_dx_has_zero_mean_per_channel(rng, dtype, shape):
    x = rng.normal(3.0, 2.0, size=shape).astype(dtype)
    C = shape[1]
    gamma, beta = rng.uniform(0.5, 2, C).astype(dtype), rng.normal(size=C).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    _, cache = _bn(x, gamma, beta)
    dx, _, _ = bnref.batchnorm_backward(dy, cache)
    scale = np.abs(dx).sum(axis=_reduce_axes(x))
    tol = 1e-5 if dtype == np.float32 else 1e-13
    assert np.all(np.abs(dx.sum(axis=_reduce_axes(x))) <= tol * scale)


@pytest.mark.parametrize("shape", [(16, 5), (4, 3, 5, 5)])
def test_ch4_dx_orthogonal_to_x_hat_up_to_the_eps_term(rng, shape):
    x = rng.normal(3.0, 2.0, size=shape)
    C = shape[1]
    gamma, beta, dy = rng.uniform(0.5, 2, C), rng.normal(size=C), rng.normal(size=shape)
    for eps in (1e-5, 1e-1):
        _, cache = _bn(x, gamma, beta, eps=eps)
        dx, dgamma, _ = bnref.batchnorm_backward(dy, cache)
        dot = (dx * cache.x_hat).sum(axis=_reduce_axes(x))
        predicted = gamma * cache.inv_std * eps / (cache.var + eps) * dgamma
        np.testing.assert_allclose(dot, predicted, rtol=1e-8, atol=1e-12)
    # and with var >> eps it is tiny compared with |dx| |x_hat|
    _, cache = _bn(x, gamma, beta)
    dx, _, _ = bnref.batchnorm_backward(dy, cache)
    ax = _reduce_axes(x)
    cos = (dx * cache.x_hat).sum(axis=ax) / np.sqrt((dx ** 2).sum(axis=ax) * (cache.x_hat ** 2).sum(axis=ax))
    assert np.all(np.abs(cos) < 1e-5)


def test_ch4_bn_output_invariant_to_channel_shift_and_scale(rng):
    x = rng.normal(size=(32, 4))
    gamma, beta = rng.normal(size=4), rng.normal(size=4)
    y, _ = _bn(x, gamma, beta, eps=1e-12)
    y2, _ = _bn(3.0 * x + np.array([1.0, -2.0, 5.0, 0.5]), gamma, beta, eps=1e-12)
    np.testing.assert_allclose(y, y2, rtol=1e-9, atol=1e-9)


def test_ch4_weight_gradient_orthogonal_to_weights_before_bn(rng):
    # z = x @ W -> BN: each column of W gets a gradient orthogonal to it (up to eps)
    x = rng.normal(size=(64, 10))
    W = rng.normal(size=(10, 6))
    gamma, beta, dy = rng.uniform(0.5, 2, 6), rng.normal(size=6), rng.normal(size=(64, 6))
    _, cache = _bn(x @ W, gamma, beta)
    dz, _, _ = bnref.batchnorm_backward(dy, cache)
    dW = x.T @ dz
    cos = (W * dW).sum(axis=0) / (np.linalg.norm(W, axis=0) * np.linalg.norm(dW, axis=0))
    assert np.all(np.abs(cos) < 1e-5)


def _bn_torch(x, gamma, beta, eps):
    """BN's forward for one channel (m,) in torch float64, with mean and var as graph nodes."""
    import torch
    mean = x.mean()
    var = ((x - mean) ** 2).mean()
    x_hat = (x - mean) / torch.sqrt(var + eps)
    return gamma * x_hat + beta, mean, var, x_hat


def test_ch4_derivation_steps_match_autograd(rng):
    # Steps 1 to 5 of "The compact formula, step by step", each intermediate against torch
    import torch
    m, eps = 10, 1e-3
    x_np, dy = rng.normal(2.0, 3.0, size=m), rng.normal(size=m)
    gamma, beta = 1.7, 0.3
    x = torch.tensor(x_np, requires_grad=True)
    y, mean, var, x_hat = _bn_torch(x, gamma, beta, eps)
    for node in (mean, var, x_hat):
        node.retain_grad()
    (y * torch.tensor(dy)).sum().backward()
    mu, s2 = x_np.mean(), x_np.var()
    s_tilde = np.sqrt(s2 + eps)
    xh = (x_np - mu) / s_tilde
    np.testing.assert_allclose(x_hat.grad.numpy(), gamma * dy, rtol=1e-12)           # step 1
    dvar = -gamma / (2 * s_tilde ** 2) * np.sum(dy * xh)                             # step 2
    np.testing.assert_allclose(var.grad.item(), dvar, rtol=1e-10)
    # step 3: d var / d mu = 0 at the batch mean; d var / d x_j = 2 (x_j - mu) / m
    mu_t = torch.tensor(mu, requires_grad=True)
    xt = torch.tensor(x_np, requires_grad=True)
    ((xt - mu_t) ** 2).mean().backward()
    assert abs(mu_t.grad.item()) < 1e-12
    np.testing.assert_allclose(xt.grad.numpy(), 2 * (x_np - mu) / m, rtol=1e-12)
    # step 4: dL/dmu summed over both paths (torch's mean.grad) is -gamma / sigma~ * sum(dy)
    np.testing.assert_allclose(mean.grad.item(), -gamma / s_tilde * dy.sum(), rtol=1e-10)
    # step 5: the three routes, and the compact formula
    routes = gamma * dy / s_tilde + dvar * 2 * (x_np - mu) / m + mean.grad.item() / m
    compact = gamma / (m * s_tilde) * (m * dy - dy.sum() - xh * np.sum(dy * xh))
    np.testing.assert_allclose(routes, x.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(compact, x.grad.numpy(), rtol=1e-10)


def _bn_jacobian(x_col, gamma, eps):
    _, cache = _bn(x_col[:, None], np.array([gamma]), np.array([0.0]), eps=eps)
    m, xh, s_tilde = len(x_col), cache.x_hat[:, 0], 1 / cache.inv_std[0]
    J = gamma / (m * s_tilde) * (m * np.eye(m) - np.ones((m, m)) - np.outer(xh, xh))
    return J, xh, s_tilde, cache.var[0]


def test_ch4_jacobian_formula_matches_bnref_backward_column_by_column(rng):
    m, gamma, eps = 12, 1.3, 1e-5
    x_col = rng.normal(1.0, 2.0, size=m)
    J, _, _, _ = _bn_jacobian(x_col, gamma, eps)
    _, cache = _bn(x_col[:, None], np.array([gamma]), np.array([0.0]), eps=eps)
    # row i of J is dx for dy = e_i (dx = J^T dy)
    rows = np.stack([bnref.batchnorm_backward(np.eye(m)[:, i:i + 1], cache)[0][:, 0] for i in range(m)])
    np.testing.assert_allclose(rows, J, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(J, J.T, atol=1e-15)


def test_ch4_jacobian_null_space_and_eigenvalues_on_digits():
    from bnref.data import load_digits
    X_train = load_digits()[0]
    m, col, gamma, eps = 32, 42, 1.5, 1e-5
    x_col = X_train[:m, col].astype(np.float64)
    J, xh, s_tilde, var = _bn_jacobian(x_col, gamma, eps)
    h = 1e-5
    J_num = np.stack([(_bn((x_col + h * e)[:, None], np.array([gamma]), np.array([0.2]), eps=eps)[0]
                       - _bn((x_col - h * e)[:, None], np.array([gamma]), np.array([0.2]), eps=eps)[0])[:, 0]
                      / (2 * h) for e in np.eye(m)], axis=1)
    assert np.abs(J_num - J).max() < 1e-7
    assert np.linalg.norm(J @ np.ones(m)) < 1e-12                                   # J 1 = 0
    eps_term = gamma / s_tilde * eps / (var + eps)
    np.testing.assert_allclose(J @ xh, eps_term * xh, rtol=1e-6, atol=1e-13)       # J x_hat ~ 0
    eig = np.sort(np.linalg.eigvalsh(J))
    assert abs(eig[0]) < 1e-12 and abs(eig[1] - eps_term) < 1e-10
    np.testing.assert_allclose(eig[2:], gamma / s_tilde, rtol=1e-10)                # m - 2 of them
    J0, xh0, _, _ = _bn_jacobian(x_col, gamma, 1e-14)                               # eps -> 0: x_hat
    assert np.linalg.norm(J0 @ xh0) < 1e-10                                          # is in the null space


@pytest.mark.parametrize("gamma, dy, dx", [
    (1.0, [1.0, 0.0, 0.0], [0.2041, -0.4082, 0.2041]),     # self-check drill 2
    (2.0, [0.0, 1.0, 0.0], [-0.8165, 1.6330, -0.8165]),    # drill 3
    (0.7, [2.0, 5.0, 8.0], [0.0, 0.0, 0.0]),               # drill 4: dy in span(1, x_hat)
])
def test_ch4_self_check_drills_m3(gamma, dy, dx):
    x = np.array([[1.0], [2.0], [3.0]])
    _, cache = _bn(x, np.array([gamma]), np.array([0.0]), eps=1e-12)                 # the drills' eps = 0
    np.testing.assert_allclose(cache.x_hat[:, 0], [-1.2247, 0, 1.2247], atol=5e-5)
    got = bnref.batchnorm_backward(np.array(dy)[:, None], cache)[0][:, 0]
    np.testing.assert_allclose(got, dx, atol=5e-5)


def test_ch4_self_check_eval_mode_shortcut_is_wrong_in_training_mode():
    # self-check 5: drill 2 with the "gamma / sigma~ times dy" shortcut, against training mode
    x, dy = np.array([[1.0], [2.0], [3.0]]), np.array([[1.0], [0.0], [0.0]])
    _, cache = _bn(x, np.array([1.0]), np.array([0.0]), eps=1e-12)
    shortcut = dy * cache.inv_std                                                   # eval-mode backward
    np.testing.assert_allclose(shortcut[:, 0], [1.2247, 0, 0], atol=5e-5)
    dx = bnref.batchnorm_backward(dy, cache)[0]
    assert np.abs(shortcut - dx).max() > 1.0


def test_ch4_gradient_arriving_at_mean_is_minus_gamma_over_sigma_tilde_sum_dy(rng):
    # self-check 1: the widget's step 9; the path through var adds nothing to it
    x = rng.normal(2.0, 3.0, size=(8, 4))
    gamma, beta, dy = rng.uniform(0.5, 2, 4), rng.normal(size=4), rng.normal(size=(8, 4))
    values, grads, contribs = staged_backward(x, gamma, beta, dy)
    np.testing.assert_allclose(grads["mean"], -gamma * values["inv_std"] * dy.sum(axis=0), rtol=1e-10)
    from_sq = contribs[("sq", "x_centered")]
    assert np.abs(from_sq).max() > 1e-2 and np.abs(from_sq.sum(axis=0)).max() < 1e-10


# ------------------------------------------------------------------------- chapter 5

def test_ch5_layer_running_stats_follow_the_pytorch_convention(rng):
    batches = [rng.normal(2.0, 3.0, size=(16, 5)) for _ in range(30)]
    layer = bnref.BatchNorm(5)
    for b in batches:
        layer(b)
    means, variances = running_average(batches, "pytorch", 0.1)
    np.testing.assert_allclose(layer.running_mean, means[-1], rtol=1e-12)
    np.testing.assert_allclose(layer.running_var, variances[-1], rtol=1e-12)


def test_ch5_cs231n_and_keras_conversions(rng):
    m, p, n = 8, 0.1, 40
    batches = [rng.normal(1.0, 2.0, size=(m, 3)) for _ in range(n)]
    pt_mean, pt_var = running_average(batches, "pytorch", p)
    cs_mean, cs_var = running_average(batches, "cs231n", convert_momentum(p, "pytorch", "cs231n"))
    ke_mean, ke_var = running_average(batches, "keras", convert_momentum(p, "pytorch", "keras"))
    np.testing.assert_allclose(pt_mean, cs_mean, rtol=1e-12)
    np.testing.assert_allclose(pt_mean, ke_mean, rtol=1e-12)
    t = np.arange(1, n + 1)[:, None] * np.ones(3)
    # same recursion on var * m/(m-1), different start: the difference decays as (1-p)^t
    np.testing.assert_allclose(pt_var - m / (m - 1) * cs_var, (1 - p) ** t * (1.0 - 0.0), rtol=1e-9)
    np.testing.assert_allclose(pt_var - m / (m - 1) * ke_var, (1 - p) ** t * (1.0 - m / (m - 1)),
                               rtol=1e-9)


def test_ch5_convention_table_defaults():
    assert CONVENTIONS["pytorch"]["momentum"] == 0.1 and CONVENTIONS["pytorch"]["unbiased"]
    assert CONVENTIONS["cs231n"]["momentum"] == 0.9 and CONVENTIONS["cs231n"]["init_var"] == 0.0
    assert CONVENTIONS["keras"]["momentum"] == 0.99 and CONVENTIONS["keras"]["eps"] == 1e-3
    assert convert_momentum(0.99, "keras", "pytorch") == pytest.approx(0.01)
    assert convert_momentum(0.1, "pytorch", "cs231n") == pytest.approx(0.9)
    assert convert_momentum(0.9, "cs231n", "keras") == 0.9


def test_ch5_running_stats_match_torch_with_converted_momentum(rng):
    torch = pytest.importorskip("torch")
    batches = [rng.normal(1.0, 2.0, size=(8, 3)) for _ in range(20)]
    tbn = torch.nn.BatchNorm1d(3, momentum=convert_momentum(0.9, "cs231n", "pytorch"), dtype=torch.float64)
    for b in batches:
        tbn(torch.from_numpy(b))
    means, variances = running_average(batches, "pytorch", 0.1)
    np.testing.assert_allclose(tbn.running_mean.numpy(), means[-1], rtol=1e-12)
    np.testing.assert_allclose(tbn.running_var.numpy(), variances[-1], rtol=1e-12)


def test_ch5_biased_batch_variance_is_low_by_m_minus_1_over_m(rng):
    x = rng.normal(size=(200000, 2))
    for m in (2, 4, 8):
        b = x[: (len(x) // m) * m].reshape(-1, m, 2)
        ratio = b.var(axis=1).mean() / x.var()
        assert ratio == pytest.approx((m - 1) / m, rel=0.02)


def test_ch5_inference_is_the_affine_map_bn_affine(rng):
    x = rng.normal(size=(10, 4))
    gamma, beta, rm, rv = rng.normal(size=4), rng.normal(size=4), rng.normal(size=4), rng.uniform(0.5, 2, 4)
    scale, shift = bnref.bn_affine(gamma, beta, rm, rv)
    np.testing.assert_allclose(bnref.batchnorm_inference(x, gamma, beta, rm, rv), x * scale + shift,
                               rtol=1e-12, atol=1e-12)


def test_ch5_folding_into_x_at_W_layout_is_exact(rng):
    # an (in, out) weight (CS231n's x @ W, the exercises' layout): fold_linear wants (out, in)
    X = rng.normal(size=(50, 12))
    W = rng.normal(size=(12, 7))
    gamma, beta, rm, rv = rng.normal(size=7), rng.normal(size=7), rng.normal(size=7), rng.uniform(0.1, 3, 7)
    ref = bnref.batchnorm_inference(X @ W, gamma, beta, rm, rv)
    W_f, b_f = bnref.fold_linear(W.T, None, gamma, beta, rm, rv)
    np.testing.assert_allclose(X @ W_f.T + b_f, ref, rtol=1e-12, atol=1e-12)


def test_ch5_folding_into_conv_is_exact(rng):
    x = rng.normal(size=(2, 3, 6, 6))
    W, b = rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4)
    gamma, beta, rm, rv = rng.normal(size=4), rng.normal(size=4), rng.normal(size=4), rng.uniform(0.1, 3, 4)

    def conv(x, W, b):                         # valid cross-correlation, stride 1
        win = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))   # (N, C, 4, 4, 3, 3)
        return np.einsum("nchwij,ocij->nohw", win, W) + b[None, :, None, None]

    ref = bnref.batchnorm_inference(conv(x, W, b), gamma, beta, rm, rv)
    W_f, b_f = bnref.fold_conv2d(W, b, gamma, beta, rm, rv)
    np.testing.assert_allclose(conv(x, W_f, b_f), ref, rtol=1e-11, atol=1e-11)


def _conv(x, W, b, pad=0):
    """Cross-correlation, stride 1, zero padding ``pad``: (N, C, H, W) -> (N, O, H', W')."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(x, W.shape[2:], axis=(2, 3))   # (N, C, H', W', kh, kw)
    return np.einsum("nchwij,ocij->nohw", win, W) + b[None, :, None, None]


def test_ch5_bn_directly_before_a_linear_layer_folds_too(rng):
    # W (scale * x + shift) + b = (W * scale) x + (W shift + b): the scale goes into W's columns
    X = rng.normal(size=(50, 12))
    W, b = rng.normal(size=(7, 12)), rng.normal(size=7)                 # (out, in)
    gamma, beta, rm, rv = rng.normal(size=12), rng.normal(size=12), rng.normal(size=12), rng.uniform(0.1, 3, 12)
    ref = bnref.batchnorm_inference(X, gamma, beta, rm, rv) @ W.T + b
    scale, shift = bnref.bn_affine(gamma, beta, rm, rv)
    W_f, b_f = W * scale, W @ shift + b
    np.testing.assert_allclose(X @ W_f.T + b_f, ref, rtol=1e-12, atol=1e-12)


def test_ch5_bn_before_a_convolution_folds_except_at_a_zero_padded_border(rng):
    x = rng.normal(size=(2, 3, 6, 6))
    W, b = rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4)
    gamma, beta, rm, rv = rng.normal(size=3), rng.normal(size=3), rng.normal(size=3), rng.uniform(0.1, 3, 3)
    scale, shift = bnref.bn_affine(gamma, beta, rm, rv)
    W_f = W * scale[None, :, None, None]                                # scale each input channel
    b_f = b + np.einsum("ocij,c->o", W, shift)                          # the shift through every tap
    bn_x = bnref.batchnorm_inference(x, gamma, beta, rm, rv)
    np.testing.assert_allclose(_conv(x, W_f, b_f), _conv(bn_x, W, b), rtol=1e-11, atol=1e-11)
    # with zero padding the padded zeros are not BN's output (which would be `shift` there):
    # the interior still agrees, the border does not
    folded, ref = _conv(x, W_f, b_f, pad=1), _conv(bn_x, W, b, pad=1)
    np.testing.assert_allclose(folded[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], rtol=1e-11, atol=1e-11)
    assert np.abs(folded[..., 0, :] - ref[..., 0, :]).max() > 1e-3


def test_ch5_fine_tuning_with_bn_in_eval_mode_trains_against_fixed_statistics(rng):
    from bnref.mlp import MLP
    net = MLP([6, 8, 3], norm="batch", seed=0)
    X, y = rng.normal(1.0, 2.0, size=(32, 6)), rng.integers(0, 3, 32)
    for _ in range(3):                                                  # some running statistics first
        net.step(net.loss_and_grads(X, y)[1], 0.1)
    bn = net.bn[0]
    before = bn.running_mean.copy(), bn.running_var.copy(), bn.num_batches_tracked
    net.freeze_bn()
    loss, grads = net.loss_and_grads(X, y)
    assert np.array_equal(bn.running_mean, before[0]) and bn.num_batches_tracked == before[2]
    # the loss is the eval-mode loss, and its gradients are those of that loss
    logits = net.forward(X, training=False)
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    assert loss == pytest.approx(-logp[np.arange(32), y].mean(), rel=1e-12)

    def loss_of(name, value):
        saved = net.params[name].copy()
        net.params[name][...] = value
        out = net.loss_and_grads(X, y)[0]
        net.params[name][...] = saved
        return np.array(out)

    for name in ("gamma0", "beta0", "W0"):
        p = net.params[name]
        numeric = bnref.numerical_gradient(lambda v: loss_of(name, v), p.copy(), np.array(1.0))
        assert bnref.relative_error(grads[name], numeric) < 1e-6, name
    assert np.array_equal(bn.running_var, before[1])


def test_ch5_eps_matters_for_low_variance_channels():
    x = np.array([[0.01]])
    y5 = bnref.batchnorm_inference(x, None, None, np.zeros(1), np.array([1e-4]), eps=1e-5)
    y3 = bnref.batchnorm_inference(x, None, None, np.zeros(1), np.array([1e-4]), eps=1e-3)
    assert y5[0, 0] == pytest.approx(0.01 / np.sqrt(1.1e-4))
    assert y3[0, 0] == pytest.approx(0.01 / np.sqrt(1.1e-3))


def test_ch5_training_mode_with_one_example_is_an_error():
    with pytest.raises(ValueError):
        bnref.batchnorm_forward(np.ones((1, 3)), None, None)


# ------------------------------------------------------------------------- chapter 7

@pytest.mark.parametrize("m", [2, 4, 8, 32])
def test_ch7_variance_noise_formula_on_gaussian_data(m):
    rng = np.random.default_rng(m)
    b = rng.normal(size=(40000, m))
    s2 = b.var(axis=1, ddof=1)
    assert s2.std() == pytest.approx(float(variance_noise(m)), rel=0.03)
    assert b.mean(axis=1).std() == pytest.approx(1 / np.sqrt(m), rel=0.02)


@pytest.mark.parametrize("m", [4, 16])
def test_ch7_variance_noise_formula_with_kurtosis(m):
    rng = np.random.default_rng(m)
    b = rng.exponential(size=(200000, m))          # variance 1, excess kurtosis 6
    s2 = b.var(axis=1, ddof=1)
    assert s2.std() == pytest.approx(float(variance_noise(m, 6.0)), rel=0.05)
    assert variance_noise(m, 6.0) > variance_noise(m)


def test_ch7_batch_stat_spread_matches_theory_on_gaussian_data():
    x = np.random.default_rng(0).normal(size=(4000, 6))
    s = batch_stat_spread(x, [2, 8, 32], n_batches=3000)
    np.testing.assert_allclose(s["mean_spread"], 1 / np.sqrt([2, 8, 32]), rtol=0.05)
    np.testing.assert_allclose(s["var_spread"], variance_noise(np.array([2, 8, 32])), rtol=0.06)


def test_ch7_batch_of_two_normalises_to_plus_minus_one(rng):
    x = rng.normal(size=(2, 10)) * 5 + 3
    y, _ = _bn(x, None, None)
    np.testing.assert_allclose(np.abs(y), 1.0, rtol=1e-4)
    np.testing.assert_allclose(y[0], -y[1])


def test_ch7_bn_output_depends_on_batch_mates_layernorm_does_not(rng):
    x = rng.normal(size=(200, 5))
    outs, pop = batch_dependence(x, index=0, batch_size=8, n_trials=50)
    assert np.all(outs.std(axis=0) > 0.05)
    ln = [bnref.layernorm_forward(x[np.r_[0, rng.choice(np.arange(1, 200), 7, replace=False)]],
                                  None, None)[0][0] for _ in range(5)]
    assert np.ptp(np.array(ln), axis=0).max() == 0.0


@pytest.mark.parametrize("name", ["batch", "layer", "instance", "group"])
def test_ch7_which_values_share_statistics(name):
    x = np.random.default_rng(0).normal(size=(4, 6, 3, 3))
    f = {"batch": lambda x: bnref.batchnorm_forward(x, None, None)[0],
         "layer": lambda x: bnref.layernorm_forward(x, None, None, normalized_ndim=3)[0],
         "instance": lambda x: bnref.groupnorm_forward(x, None, None, num_groups=6)[0],
         "group": lambda x: bnref.groupnorm_forward(x, None, None, num_groups=2)[0]}[name]
    bump = np.zeros_like(x)
    bump[1, 2, 0, 0] = 1e-3
    changed = np.abs(f(x + bump) - f(x)).max(axis=(2, 3)) > 1e-9          # (N, C)
    expected = np.zeros((4, 6), bool)
    if name == "batch":
        expected[:, 2] = True
    elif name == "layer":
        expected[1, :] = True
    elif name == "instance":
        expected[1, 2] = True
    else:
        expected[1, 0:3] = True
    np.testing.assert_array_equal(changed, expected)


def test_ch5_folding_matches_torch_fuse_linear_bn(rng):
    torch = pytest.importorskip("torch")
    from torch.nn.utils.fusion import fuse_linear_bn_weights
    W, b = rng.normal(size=(5, 3)), rng.normal(size=5)
    gamma, beta, rm, rv = rng.normal(size=5), rng.normal(size=5), rng.normal(size=5), rng.uniform(0.1, 3, 5)
    t = [torch.from_numpy(a) for a in (W, b, rm, rv)]
    W_t, b_t = fuse_linear_bn_weights(t[0], t[1], t[2], t[3], 1e-5, torch.from_numpy(gamma), torch.from_numpy(beta))
    W_f, b_f = bnref.fold_linear(W, b, gamma, beta, rm, rv)
    np.testing.assert_allclose(W_f, W_t.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(b_f, b_t.detach().numpy(), rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------------- chapter 1

def test_ch1_on_a_whitened_quadratic_the_step_size_decides_and_the_best_is_two_over_the_eigenvalue_sum(rng):
    # H = I: each step of gradient descent multiplies the error by (1 - c)
    H = np.eye(2)
    err = lambda c, steps: np.abs(1 - c) ** steps                         # noqa: E731
    w = np.array([1.0, -2.0])
    for _ in range(8):
        w = w - 1.9 * (H @ w)
    np.testing.assert_allclose(np.abs(w), err(1.9, 8) * np.array([1.0, 2.0]))
    # the best fixed step 2 / (lambda_max + lambda_min) minimises the worst contraction factor
    lam = np.sort(rng.uniform(0.1, 5.0, 2))
    etas = np.linspace(0.01, 2 / lam[1], 2001)
    worst = np.max(np.abs(1 - etas[:, None] * lam[None, :]), axis=1)
    assert abs(etas[np.argmin(worst)] - 2 / lam.sum()) < 2 * (etas[1] - etas[0])


@pytest.mark.parametrize("G", [1, 2, 4])
def test_ch7_groupnorm_backward_is_bn_formula_per_example_and_group(rng, G):
    # "GroupNorm's backward": dx from the per-(example, group) formula with g = gamma_c * dy
    N, C, H, W = 3, 4, 5, 5
    x, dy = rng.normal(1.0, 2.0, size=(N, C, H, W)), rng.normal(size=(N, C, H, W))
    gamma, beta = rng.uniform(0.5, 2.0, C), rng.normal(size=C)
    _, cache = bnref.groupnorm_forward(x, gamma, beta, num_groups=G)
    dx, dgamma, dbeta = bnref.groupnorm_backward(dy, cache)
    K = C // G * H * W
    rows = x.reshape(N * G, K)                                                   # (N*G, K)
    inv_std = 1 / np.sqrt(rows.var(1, keepdims=True) + 1e-5)
    x_hat = (rows - rows.mean(1, keepdims=True)) * inv_std
    g = (dy * gamma[None, :, None, None]).reshape(N * G, K)
    expected = inv_std / K * (K * g - g.sum(1, keepdims=True) - x_hat * (g * x_hat).sum(1, keepdims=True))
    np.testing.assert_allclose(dx, expected.reshape(x.shape), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dgamma, (dy * x_hat.reshape(x.shape)).sum(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(dbeta, dy.sum(axis=(0, 2, 3)), rtol=1e-12)
    assert np.abs(dx.reshape(N * G, K).sum(1)).max() < 1e-10                    # zero sum per group
    num = bnref.numerical_gradient(lambda x_: bnref.groupnorm_forward(x_, gamma, beta, num_groups=G)[0],
                                   x.copy(), dy)
    assert bnref.relative_error(dx, num) < 1e-6
    if G == 1:                                                                   # LayerNorm over (C, H, W)
        gamma_ln = np.broadcast_to(gamma[:, None, None], (C, H, W)).copy()
        beta_ln = np.broadcast_to(beta[:, None, None], (C, H, W)).copy()
        _, cache_ln = bnref.layernorm_forward(x, gamma_ln, beta_ln, normalized_ndim=3)
        np.testing.assert_allclose(bnref.layernorm_backward(dy, cache_ln)[0], dx, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------- self-check drills
# Each drill's answer is read from the chapter's markdown and recomputed here.

def _self_check_answer(chapter, title_start):
    """The body of the self-check admonition of `chapter` whose title starts with `title_start`."""
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1] / "book" / chapter).read_text()
    start = text.index("````{admonition} " + title_start)
    return text[start:text.index("\n````\n", start)]


def test_ch3_self_check_drill_bn_of_1_2_3_6():
    body = _self_check_answer("03_bn_transform.md", "7. Drill")
    y, cache = bnref.batchnorm_forward(np.array([[1.0], [2.0], [3.0], [6.0]]), np.array([2.0]),
                                       np.array([1.0]), eps=1e-12)   # bnref refuses eps = 0
    assert cache.mean[0] == 3.0 and cache.var[0] == 3.5 and "3.5" in body
    assert "[" + ", ".join(f"{v:.4f}" for v in cache.x_hat[:, 0]) + "]" in body
    assert "[" + ", ".join(f"{v:.4f}" for v in y[:, 0]) + "]" in body


def test_ch5_self_check_drill_running_mean_after_10_updates():
    body = _self_check_answer("05_train_vs_test.md", "6. Drill")
    batches = [np.full((4, 1), 2.0)] * 10                     # every batch has mean 2
    means, _ = running_average(batches, "pytorch", 0.1)
    assert abs(means[-1, 0] - (1 - 0.9 ** 10) * 2) < 1e-12
    assert f"{means[-1, 0]:.4f}" in body


def test_ch5_self_check_drill_bessel_factor_for_m4_and_widget_prompt():
    body = _self_check_answer("05_train_vs_test.md", "7. Drill")
    x = np.random.default_rng(0).normal(size=(4, 3))
    layer_factor = x.var(axis=0, ddof=1) / x.var(axis=0)
    np.testing.assert_allclose(layer_factor, 4 / 3)
    assert f"{4 / 3:.4f}" in body
    prompt = _self_check_answer("05_train_vs_test.md", "Predict first")
    assert f"{100 * (1 - 0.99 ** 100):.0f}\\%" in prompt


def _drill_numbers(body):
    """The numbers a drill's answer states, in order: each written after math as `$...$ = 0.1818`
    or `$...$ ≈ 0.1818` (the page's convention for a result), returned as strings."""
    import re
    return re.findall(r"\$\s+(?:=|≈)\s+(-?\d+(?:\.\d+)?)", body)


def _assert_stated(body, expected):
    """The answer states exactly `expected`, in order, each to the precision it is printed with."""
    stated = _drill_numbers(body)
    assert len(stated) == len(expected), (stated, expected)
    for text, value in zip(stated, expected):
        decimals = len(text.split(".")[1]) if "." in text else 0
        assert abs(float(text) - value) <= 0.5 * 10 ** -decimals + 1e-12, (text, value)


def _gd_error(H, eta, steps, start):
    """Gradient descent on 0.5 e^T H e from error `start`: the error after `steps` steps."""
    e = np.array(start, dtype=float)
    for _ in range(steps):
        e = e - eta * (H @ e)
    return e


def test_ch1_self_check_drill_condition_number_and_best_step():
    body = _self_check_answer("01_covariate_shift.md", "6. Drill")
    H = np.diag([10.0, 1.0])
    lam = np.linalg.eigvalsh(H)                                            # ascending: (1, 10)
    kappa, limit, best = lam[-1] / lam[0], 2 / lam[-1], 2 / lam.sum()
    factor = np.abs(1 - best * lam)
    np.testing.assert_allclose(factor, (kappa - 1) / (kappa + 1))         # both directions alike
    # the best step minimises the worst factor; 2 / lambda_max is the edge of stability
    etas = np.linspace(0.001, limit, 20001)
    worst = np.abs(1 - etas[:, None] * lam[None, :]).max(axis=1)
    assert abs(etas[worst.argmin()] - best) < 2 * (etas[1] - etas[0])
    assert np.linalg.norm(_gd_error(H, 0.99 * limit, 2000, [1, 1])) < 1e-3
    assert np.linalg.norm(_gd_error(H, 1.01 * limit, 2000, [1, 1])) > 1e3
    np.testing.assert_allclose(np.abs(_gd_error(H, best, 1, [1, 1])), factor, rtol=1e-12)
    _assert_stated(body, [kappa, limit, best, factor[0]])


def test_ch1_self_check_drill_thousandfold_and_whitening(rng):
    body = _self_check_answer("01_covariate_shift.md", "7. Drill")
    H = np.diag([10.0, 1.0])
    best = 2 / 11
    n_real = np.log(1000) / np.log(11 / 9)
    n = int(np.ceil(n_real))
    assert np.abs(_gd_error(H, best, n, [1, 1])).max() <= 1e-3 < np.abs(_gd_error(H, best, n - 1, [1, 1])).max()
    # synthetic inputs whose second moments have eigenvalues (10, 1), whitened as in the chapter
    Q = np.linalg.qr(rng.normal(size=(2, 2)))[0]
    X = rng.normal(size=(20000, 2)) * np.sqrt([10.0, 1.0]) @ Q.T
    X -= X.mean(0)
    evals, evecs = np.linalg.eigh(np.cov(X, rowvar=False, bias=True))
    X_white = X @ evecs / np.sqrt(evals)
    lam_w = np.linalg.eigvalsh(X_white.T @ X_white / len(X))
    np.testing.assert_allclose(lam_w, 1.0, atol=1e-10)
    kappa_w, best_w = lam_w[-1] / lam_w[0], 2 / lam_w.sum()
    factor_w = np.abs(1 - best_w * lam_w).max()
    assert np.abs(_gd_error(X_white.T @ X_white / len(X), best_w, 1, rng.normal(size=2))).max() < 1e-9
    _assert_stated(body, [n_real, n, kappa_w, best_w, factor_w])


def test_ch1_widget_answer_whitened_error_factor_is_one_minus_c():
    body = _self_check_answer("01_covariate_shift.md", "Answer: what the widget shows")
    for c in (1.0, 1.9):
        e = _gd_error(np.eye(2), c, 1, [1.0, -2.0])                       # H = I, eta = c / 1
        np.testing.assert_allclose(e, (1 - c) * np.array([1.0, -2.0]), atol=1e-15)
    assert f"1 - 1.9 = {1 - 1.9:.1f}" in body


def test_ch7_self_check_drill_variance_noise_and_bias():
    body = _self_check_answer("07_flaws_and_alternatives.md", "7. Drill")
    sizes = (2, 4, 16)
    rng = np.random.default_rng(7)
    for m in sizes:                                                        # Gaussian batches
        b = rng.normal(size=(200000, m))
        assert b.var(axis=1, ddof=1).std() == pytest.approx(np.sqrt(2 / (m - 1)), rel=0.03)
        assert b.var(axis=1).mean() == pytest.approx((m - 1) / m, rel=0.01)
    _assert_stated(body, [float(variance_noise(m)) for m in sizes] + [(m - 1) / m for m in sizes])


def test_ch7_self_check_drill_how_many_values_share_statistics():
    body = _self_check_answer("07_flaws_and_alternatives.md", "8. Drill")
    N, C, H, W, G = 8, 32, 16, 16, 8
    x = np.random.default_rng(0).normal(size=(N, C, H, W))
    methods = {   # name: (forward, number of means it computes)
        "group": lambda x: bnref.groupnorm_forward(x, None, None, num_groups=G),
        "layer": lambda x: bnref.layernorm_forward(x, None, None, normalized_ndim=3),
        "batch": lambda x: bnref.batchnorm_forward(x, None, None),
        "instance": lambda x: bnref.groupnorm_forward(x, None, None, num_groups=C),
    }
    expected = []
    bump = np.zeros_like(x)
    bump[3, 5, 2, 7] = 1e-3
    for name, f in methods.items():
        y, cache = f(x)
        n_means = cache.mean.size
        shared = int((np.abs(f(x + bump)[0] - y) > 1e-12).sum())          # outputs one value moves
        assert n_means * shared == x.size, name
        expected += [n_means, shared]
    assert bnref.batchnorm_forward(x, None, None)[1].m == N * H * W
    _assert_stated(body, expected + [x.size])


def test_ch7_self_check_unbiased_variance_only_rescales_x_hat(rng):
    body = _self_check_answer("07_flaws_and_alternatives.md", "9. A common claim")
    for m in (2, 4, 16):
        x = rng.normal(size=(m, 5)) * 3 + 1
        biased = (x - x.mean(0)) / x.std(0)
        unbiased = (x - x.mean(0)) / x.std(0, ddof=1)
        np.testing.assert_allclose(unbiased, np.sqrt((m - 1) / m) * biased, rtol=1e-12)
    x2 = rng.normal(size=(2, 5))
    x_hat2 = (x2 - x2.mean(0)) / x2.std(0, ddof=1)
    np.testing.assert_allclose(np.abs(x_hat2), np.sqrt(1 / 2), rtol=1e-12)
    _assert_stated(body, [np.sqrt(1 / 2)])


def test_ch7_self_check_drill_rnn_per_step_statistics():
    body = _self_check_answer("07_flaws_and_alternatives.md", "10. Drill")
    T, hidden = 50, 128
    lengths = np.repeat([10, 20, 30, 40], 8)                               # a batch of 32
    running_means = np.zeros((T, hidden))                                  # one set per time step
    m_at = lambda t: int((lengths >= t).sum())                            # noqa: E731 sequences still running
    assert m_at(5) == 32
    _assert_stated(body, [running_means.size, m_at(35), float(variance_noise(m_at(35))),
                          float(variance_noise(m_at(5)))])


def test_ch3_widget_answer_matches_the_frames():
    # the gamma/beta widget's titles: share of y = gamma x_hat + beta with |y| < 1 and |y| > 4
    import re
    from bnref.data import load_digits
    body = _self_check_answer("03_bn_transform.md", "Answer: what the widget shows")
    X_train = load_digits()[0]
    W = np.random.default_rng(0).normal(0, 0.3, size=(64, 8))              # the chapter's first draw
    feature = (X_train[:256] @ W + 1.0)[:, 3]
    f_hat = (feature - feature.mean()) / np.sqrt(feature.var() + 1e-5)
    shares = []
    for gamma, beta, what in [(1.0, 0.0, "both"), (4.0, 0.0, "both"), (1.0, 3.0, "both"), (0.25, 0.0, "linear")]:
        y = gamma * f_hat + beta
        shares.append(np.mean(np.abs(y) < 1))
        if what == "both":
            shares.append(np.mean(np.abs(y) > 4))
    stated = [int(s) for s in re.findall(r"(\d+)%", body)]
    assert stated == [round(100 * s) for s in shares]


def test_ch2_self_check_drill_sigmoid_compounding_and_saturation():
    body = _self_check_answer("02_internal_covariate_shift.md", "5. Drill")
    sigmoid = lambda z: 1 / (1 + np.exp(-z))                                # noqa: E731
    slope = lambda z: sigmoid(z) * (1 - sigmoid(z))                         # noqa: E731
    torch = pytest.importorskip("torch")
    # 4 sigmoid layers whose weights pass the gradient on unchanged (weight 1), each input at z:
    # autograd's gradient is the product of the four sigma'(z)
    for z, per_layer in [(0.0, 0.25), (2.0, slope(2.0)), (4.0, slope(4.0))]:
        x = torch.tensor(z, dtype=torch.float64, requires_grad=True)
        y = x
        for _ in range(4):
            y = torch.sigmoid(y) - float(sigmoid(z)) + z                    # the next input is z again
        y.backward()
        assert x.grad.item() == pytest.approx(per_layer ** 4, rel=1e-12)
    assert slope(0.0) == max(slope(np.linspace(-8, 8, 16001)))
    _assert_stated(body, [0.25 ** 4, slope(2.0), slope(4.0), 0.25 / slope(4.0), (0.25 / slope(4.0)) ** 4])


def test_ch2_self_check_drill_gaussian_share_in_the_tails(rng):
    from math import erf, sqrt

    body = _self_check_answer("02_internal_covariate_shift.md", "7. Drill")
    share = lambda s: 2 * (1 - 0.5 * (1 + erf(4 / s / sqrt(2))))             # noqa: E731
    for s in (1.5, 2.0):                                                    # the formula, sampled
        z = rng.normal(0, s, 2_000_000)
        assert np.mean(np.abs(z) > 4) == pytest.approx(share(s), rel=0.05)
    assert 600 < share(2.0) / share(1.0) < 800                              # "about 700"
    _assert_stated(body, [share(1.0), share(1.5), share(2.0)])


def test_ch6_self_check_drill_yang_growth_per_layer():
    from bnref.experiments.depth import YANG_RELU_BN_GROWTH

    body = _self_check_answer("06_what_bn_does.md", "10. Drill")
    g = np.sqrt(np.pi / (np.pi - 1))
    assert YANG_RELU_BN_GROWTH == pytest.approx(g)
    stated = _drill_numbers(body)
    assert [float(v) for v in stated[:2]] == [round(g ** 2, 4), round(g, 4)]
    _assert_stated(body, [g ** 2, g, g ** 20, g ** 50])                    # 20 and 50 layers


def test_ch8_self_check_drill_conv_bn_parameters(rng):
    body = _self_check_answer("08_convnets.md", "2. Drill")
    C_in, C_out, k = 8, 16, 3
    W = rng.normal(size=(C_out, C_in, k, k))
    b, gamma, beta = rng.normal(size=C_out), rng.uniform(0.5, 2, C_out), rng.normal(size=C_out)
    mean, var = rng.normal(size=C_out), rng.uniform(0.5, 2, C_out)
    W_f, b_f = bnref.fold_conv2d(W, b, gamma, beta, mean, var)
    assert W_f.shape == W.shape and b_f.shape == b.shape
    # the conv bias is redundant before BN in training mode: any b gives the same output
    z = rng.normal(size=(4, C_out, 5, 5))
    shifted = z + rng.normal(size=C_out)[None, :, None, None]
    np.testing.assert_allclose(bnref.batchnorm_forward(z, gamma, beta)[0],
                               bnref.batchnorm_forward(shifted, gamma, beta)[0], atol=1e-10)
    _assert_stated(body, [W.size, W.size + b.size + gamma.size + beta.size, W_f.size + b_f.size])
