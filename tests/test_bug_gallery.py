"""The bug gallery's buggy functions: each differs from bnref by its stated mechanism, and the
autograder rejects it with a diagnosis naming that mistake."""
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
    ("stale_buffers", "never updated"), ("fold_wrong_axis", "broadcast"),
])
def test_grader_rejects_each_bug(bug, words):
    assert words in bugs.grader_message(bug)
