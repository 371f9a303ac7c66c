"""The bug gallery (book/bug_gallery.md) and ch05's d2l-convention section.

The buggy functions differ from bnref by their stated mechanism; the autograder rejects each
with a diagnosis naming that mistake; each mistake's measured effect on the digits network has
the direction and rough size the page states; d2l's running average is PyTorch's (for the
mean), and its is_grad_enabled switch misfires as ch05 states.
"""
import numpy as np
import pytest

import bnref
from bnref.experiments import bugs

rng = np.random.default_rng(0)
x = rng.normal(2.0, 3.0, size=(8, 5))
gamma, beta = rng.uniform(0.5, 2, 5), rng.normal(size=5)
rm, rv = rng.normal(size=5), rng.uniform(0.5, 2, 5)


def test_bessel_scales_x_hat_by_sqrt_of_m_minus_1_over_m():
    ref = bnref.batchnorm_forward(x, np.ones(5), np.zeros(5), eps=1e-12)[0]
    got = bugs.forward_bessel(x, np.ones(5), np.zeros(5), eps=1e-12)[0]
    np.testing.assert_allclose(got, ref * np.sqrt(7 / 8))


def test_wrong_axis_normalises_each_example():
    got = bugs.forward_wrong_axis(x, np.ones(5), np.zeros(5))[0]
    np.testing.assert_allclose(got.mean(axis=1), 0, atol=1e-12)
    assert not np.allclose(got.mean(axis=0), 0)


def test_inference_with_batch_stats_depends_on_batch_mates():
    full = bugs.inference_batch_stats(x, gamma, beta, rm, rv)
    half = bugs.inference_batch_stats(x[:4], gamma, beta, rm, rv)
    assert not np.allclose(full[:4], half)


def test_flipped_and_stale_updates():
    m, v = bugs.update_flipped(rm, rv, x, momentum=0.1)
    np.testing.assert_allclose(m, 0.1 * rm + 0.9 * x.mean(0))
    m, v = bugs.update_stale(rm, rv, x)
    assert m is rm and v is rv


@pytest.mark.parametrize("bug, words", [
    ("eval_mode", "batch's own mean and variance"), ("bessel", "unbiased"),
    ("flipped_momentum", "momentum convention is flipped"), ("wrong_axis", "wrong axis"),
    ("stale_buffers", "never updated"), ("fold_wrong_axis", "rows of W"),
])
def test_grader_rejects_each_bug(bug, words):
    msg = bugs.grader_message(bug)
    assert msg.startswith("Likely mistake:") and words in msg     # the diagnosis, not a failure


# ---------------------------------------------------------------- the folding grader
FOLD_ROWS_SRC = """
def fold_batchnorm(W, b, gamma, beta, running_mean, running_var, eps=1e-5):
    scale = gamma / np.sqrt(running_var + eps)
    b = np.zeros_like(running_mean) if b is None else b
    return W * scale[:, None], (b - running_mean) * scale + beta
"""


@pytest.mark.parametrize("nonce", [0, 7, 123456])
def test_fold_rows_gets_its_diagnosis_in_every_case_with_a_non_square_W(nonce):
    from bnref.grading.exercise import LocalExecutor, _rng_factory, evaluate
    from bnref.grading.exercises import EXERCISES

    ns = {"np": np}
    exec(FOLD_ROWS_SRC, ns)
    ex = EXERCISES["fold_batchnorm"]
    non_square = [c for c in ex.cases.values()
                  if any(t["W"].shape[0] != t["W"].shape[1] for t in c.build(_rng_factory(nonce)))]
    assert len(non_square) >= 4
    for case in non_square:
        v = evaluate(ex, case.name, {"fold_batchnorm": "f"}, LocalExecutor({"f": ns["fold_batchnorm"]}),
                     nonce=nonce)
        assert not v.passed and v.message.startswith("Likely mistake:"), (case.name, v.message)
        assert "rows of W" in v.message and "raised ValueError" not in v.message
    # and the learner's code does crash on those shapes: the diagnosis is not for free
    with pytest.raises(ValueError, match="broadcast"):
        bugs.fold_rows(np.ones((4, 3)), None, np.ones(3), np.zeros(3), np.zeros(3), np.ones(3))


def test_right_fold_still_passes_every_case():
    from bnref.grading.exercise import LocalExecutor, evaluate
    from bnref.grading.exercises import EXERCISES

    ex = EXERCISES["fold_batchnorm"]
    for case in ex.cases:
        for nonce in (0, 99):
            v = evaluate(ex, case, {"fold_batchnorm": "f"}, LocalExecutor({"f": bugs.fold_right}), nonce=nonce)
            assert v.passed, (case, v.message)


# ---------------------------------------------------------------- measured effects (the page's)
@pytest.fixture(scope="module")
def digits():
    from bnref.data import load_digits
    return load_digits()


@pytest.fixture(scope="module")
def net(digits):
    return bugs.train_digits(digits)[0]


def test_eval_logits_are_the_network_s_own(net, digits):
    X = digits[2]
    np.testing.assert_allclose(bugs.eval_logits(net, X), net.forward(X, training=False), rtol=1e-12, atol=1e-12)


def test_forgetting_eval_mode_costs_more_the_smaller_the_test_batch(net, digits):
    _, _, X, y = digits
    right = net.accuracy(X, y)
    acc = {B: bugs.eval_mode_forgotten(net, X, y, B)[0] for B in (1, 8, 64, len(X))}
    logits1 = bugs.eval_mode_forgotten(net, X, y, 1)[1]
    assert len(np.unique(logits1.argmax(1))) == 1           # batches of one: one answer for all
    assert acc[1] < 0.2                                      # about one class's share
    assert acc[1] < acc[8] < acc[64] - 0.05                  # the page: 8 well below, 64 close
    assert acc[8] < right - 0.05
    assert abs(acc[64] - right) < 0.02 and abs(acc[len(X)] - right) < 0.02
    err = {B: bugs.relative_error(bugs.eval_mode_forgotten(net, X, y, B)[1], bugs.eval_logits(net, X))
           for B in (64, len(X))}
    assert 0.1 < err[64] and 0.02 < err[len(X)] < err[64]   # logits still off by 20% and 6%


def test_bessel_layer_is_forward_bessel_and_its_gradient_is_exact(digits):
    rng = np.random.default_rng(3)
    x = rng.normal(1.0, 2.0, (6, 4))
    g, b = rng.uniform(0.5, 2, 4), rng.normal(size=4)
    bn = bugs.BesselBatchNorm(4)
    bn.gamma, bn.beta = g.copy(), b.copy()
    np.testing.assert_allclose(bn(x), bugs.forward_bessel(x, g, b)[0], rtol=1e-12)
    dy = rng.normal(size=x.shape)
    dx = bn.backward(dy)
    dx_num = bnref.numerical_gradient(lambda x_: bugs.forward_bessel(x_, g, b)[0], x.copy(), dy)
    dg_num = bnref.numerical_gradient(lambda g_: bugs.forward_bessel(x, g_, b)[0], g.copy(), dy)
    np.testing.assert_allclose(dx, dx_num, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(bn.dgamma, dg_num, rtol=1e-5, atol=1e-8)


def _train_at(digits, bug, m):
    return bugs.train_digits(digits, bug, batch_size=m, steps=400 * 64 // m, lr=0.1 * m / 64)[0]


@pytest.fixture(scope="module")
def trained(digits):
    return {(bug, m): _train_at(digits, bug, m)
            for bug in (None, "bessel", "flipped_momentum", "stale_buffers") for m in (4, 64)}


def test_bessel_in_the_forward_pass_does_not_cost_accuracy(trained, digits):
    _, _, X, y = digits
    for m in (4, 64):
        assert abs(trained["bessel", m].accuracy(X, y) - trained[None, m].accuracy(X, y)) < 0.015


def test_flipped_momentum_costs_little_at_64_and_a_lot_at_4(trained, digits):
    X_train, _, X, y = digits
    drop = {m: trained[None, m].accuracy(X, y) - trained["flipped_momentum", m].accuracy(X, y) for m in (4, 64)}
    assert 0 <= drop[64] < 0.03 and drop[4] > 0.08
    for m in (4, 64):     # the running variance is several times further from the population's
        assert (bugs.running_stats_error(trained["flipped_momentum", m], X_train)[1]
                > 3 * bugs.running_stats_error(trained[None, m], X_train)[1])


def test_flipped_and_stale_are_bnref_momenta_09_and_0():
    r = np.random.default_rng(5)
    x8, rm_, rv_ = r.normal(size=(8, 5)), r.normal(size=5), r.uniform(0.5, 2, 5)
    np.testing.assert_allclose(bugs.update_flipped(rm_, rv_, x8), bnref.running_stats_update(rm_, rv_, x8, momentum=0.9))
    m, v = bnref.running_stats_update(rm_, rv_, x8, momentum=0.0)
    assert np.array_equal(m, rm_) and np.array_equal(v, rv_)


def test_stale_buffers_cost_accuracy_at_every_batch_size_with_the_right_weights(trained, digits):
    X_train, _, X, y = digits
    for m in (4, 64):
        stale, right = trained["stale_buffers", m], trained[None, m]
        assert all(np.array_equal(stale.params[k], right.params[k]) for k in right.params)
        assert stale.accuracy(X, y) < right.accuracy(X, y) - 0.15
    pop_var = bugs.population_statistics(trained["stale_buffers", 64], X_train)[0][1]
    assert np.median(trained["stale_buffers", 64].bn[0].running_var / pop_var) > 3


def test_wrong_axis_is_layernorm_fine_alone_bad_with_running_statistics(digits):
    _, _, X, y = digits
    z = np.random.default_rng(1).normal(2, 3, (16, 8))
    np.testing.assert_allclose(bugs.forward_wrong_axis(z, np.ones(8), np.zeros(8))[0],
                               bnref.layernorm_forward(z, np.ones(8), np.zeros(8))[0], rtol=1e-12)
    ln_net, running = bugs.train_digits(digits, "wrong_axis")
    assert ln_net.accuracy(X, y) > 0.93
    p = ln_net.params
    mixed = bugs.forward_with(ln_net, X, lambda l, z: bnref.batchnorm_inference(
        z, p[f"gamma{l}"], p[f"beta{l}"], *running[l]))
    assert float((mixed.argmax(1) == y).mean()) < ln_net.accuracy(X, y) - 0.15


def test_folding_rows_crashes_on_the_first_layer_and_hurts_on_the_square_one(net, digits):
    _, _, X, y = digits
    with pytest.raises(ValueError, match="broadcast"):
        bugs.fold_network(net, [bugs.fold_rows, bugs.fold_right])
    right = bugs.eval_logits(net, X)
    exact = bugs.fold_network(net, [bugs.fold_right, bugs.fold_right])(X)
    assert bugs.relative_error(exact, right) < 1e-12
    wrong = bugs.fold_network(net, [bugs.fold_right, bugs.fold_rows])(X)
    assert bugs.relative_error(wrong, right) > 0.1
    assert float((wrong.argmax(1) == y).mean()) < net.accuracy(X, y)


# ---------------------------------------------------------------- ch05: d2l's convention
def _torch():
    """PyTorch (the test extras), or a skip of this test only."""
    return pytest.importorskip("torch")


def test_d2l_moving_mean_is_pytorch_momentum_01_over_several_steps():
    torch = _torch()
    import torch.nn.functional as F

    r = np.random.default_rng(11)
    m, C = 16, 6
    rm_t, rv_t = torch.zeros(C, dtype=torch.float64), torch.ones(C, dtype=torch.float64)
    mean, var = np.zeros(C), np.ones(C)
    batches = [r.normal(r.uniform(-2, 2, C), r.uniform(0.5, 3, C), (m, C)) for _ in range(25)]
    for b in batches:
        F.batch_norm(torch.from_numpy(b), rm_t, rv_t, training=True, momentum=0.1, eps=1e-5)
        y, mean, var = bugs.d2l_batch_norm(b, 1.0, 0.0, mean, var, 1e-5, 0.9, grad_enabled=True)
        np.testing.assert_allclose(mean, rm_t.numpy(), rtol=1e-12, atol=1e-14)
    # the variance: d2l averages the biased one (Keras' convention at 0.9), PyTorch the unbiased
    _, keras_var = bnref.experiments.running_average(batches, "keras", 0.9)
    np.testing.assert_allclose(var, keras_var[-1], rtol=1e-12)
    assert np.all(var < rv_t.numpy())
    np.testing.assert_allclose(var / rv_t.numpy(), (m - 1) / m, rtol=0.02)   # after 25 steps: ~0.9^25 left of the start
    assert bnref.experiments.convert_momentum(0.9, "cs231n", "pytorch") == pytest.approx(0.1)


def test_d2l_training_branch_output_is_torch_training_mode():
    torch = _torch()
    import torch.nn.functional as F

    r = np.random.default_rng(12)
    x, g, b = r.normal(1, 2, (8, 3)), r.uniform(0.5, 2, 3), r.normal(size=3)
    y = bugs.d2l_batch_norm(x, g, b, np.zeros(3), np.ones(3), 1e-5, 0.9, grad_enabled=True)[0]
    y_t = F.batch_norm(torch.from_numpy(x), None, None, torch.from_numpy(g), torch.from_numpy(b), training=True)
    np.testing.assert_allclose(y, y_t.numpy(), rtol=1e-10)
    y = bugs.d2l_batch_norm(x, g, b, np.full(3, 0.5), np.full(3, 2.0), 1e-5, 0.9, grad_enabled=False)[0]
    np.testing.assert_allclose(y, bnref.batchnorm_inference(x, g, b, np.full(3, 0.5), np.full(3, 2.0)), rtol=1e-12)


def test_pytorch_recalibrates_bn_under_no_grad_in_train_mode():
    # the cell where d2l's switch misfires: torch's own update_bn runs forward passes with
    # gradients off and the model in train mode, and relies on BN updating its buffers
    torch = _torch()
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    seen = []
    model[1].register_forward_pre_hook(lambda mod, inp: seen.append((torch.is_grad_enabled(), mod.training)))
    loader = [torch.randn(16, 4) * 3 + 1 for _ in range(4)]
    torch.optim.swa_utils.update_bn(loader, model)
    assert seen and all(g is False and t is True for g, t in seen)
    assert not torch.allclose(model[1].running_var, torch.ones(3))   # updated


def test_d2l_switch_no_grad_eval_is_right_but_test_time_gradients_and_recalibration_are_not(net, digits):
    X_train, y_train, X, y = digits
    moving = [(bn.running_mean.copy(), bn.running_var.copy()) for bn in net.bn]
    logits, _ = bugs.d2l_forward(net, X, moving, grad_enabled=False)
    np.testing.assert_allclose(logits, net.forward(X, training=False), rtol=1e-10, atol=1e-10)
    # input gradients on test batches of 8: different from eval mode's, and the averages move
    after, cos = moving, []
    for i in range(0, len(X), 8):
        _, after = bugs.d2l_forward(net, X[i:i + 8], after, grad_enabled=True)
        cos.append(bugs.cosine(bugs.input_gradient(net, X[i:i + 8], y[i:i + 8], True),
                               bugs.input_gradient(net, X[i:i + 8], y[i:i + 8], False)))
    assert np.median(np.concatenate(cos)) < 0.5
    assert np.median(np.abs(after[0][1] / moving[0][1] - 1)) > 0.05
    # a recalibration pass under no_grad changes nothing
    recal = moving
    for i in range(0, len(X_train), 128):
        _, recal = bugs.d2l_forward(net, X_train[i:i + 128], recal, grad_enabled=False)
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(recal, moving))


def test_eval_mode_input_gradient_is_the_numerical_one(net, digits):
    X, y = digits[2][:5], digits[3][:5]

    def loss(X_):
        L = bugs.eval_logits(net, X_)
        L = L - L.max(1, keepdims=True)
        return -(L - np.log(np.exp(L).sum(1, keepdims=True)))[np.arange(len(y)), y].mean()

    g = bugs.input_gradient(net, X, y, batch_statistics=False)
    h = 1e-6
    for idx in [(0, 10), (2, 30), (4, 50)]:
        Xp, Xm = X.copy(), X.copy()
        Xp[idx] += h
        Xm[idx] -= h
        assert g[idx] == pytest.approx((loss(Xp) - loss(Xm)) / (2 * h), rel=1e-4, abs=1e-9)


def test_the_gallery_table_quotes_each_grader_message():
    """Each 'Grader says' cell of the summary table is a phrase of that bug's real message."""
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "book" / "bug_gallery.md").read_text()
    table = page[page.index("```{list-table}"):]
    table = table[:table.index("\n```\n")]
    rows = [r for r in table.split("\n* - ")[2:]]                 # after the header row
    cells = [[c.strip() for c in r.split("\n  - ")] for r in rows]
    order = ["eval_mode", "bessel", "flipped_momentum", "wrong_axis", "stale_buffers", "fold_wrong_axis"]
    assert len(cells) == len(order)
    for bug, (_, acc, says) in zip(order, cells):
        assert acc.startswith("{glue:text}`sum_" + bug), (bug, acc)   # computed, not pasted
        assert says.replace("’", "'") in bugs.grader_message(bug), (bug, says)
