"""The BN playground page (book/playground.md) in headless Chromium, checked against bnref.

The page computes BN in JavaScript; every shown number carries its full float64 value in a
``data-value`` attribute, which must agree with bnref.functional (float64) to 1e-12. Also: no
console errors, no request to another host, and nothing wider than a 390 px phone screen.

Site root from ``BOOK_SITE`` (default ``_build/html``), page path from ``BOOK_PLAYGROUND``
(default ``book/playground.html``), so a single-page build can be tested too.
"""

import os
from pathlib import Path

import numpy as np
import pytest

from bnref.functional import (batchnorm_backward, batchnorm_forward, batchnorm_inference,
                              running_stats_update)
from test_book_browser import browser, open_page, server  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(os.environ.get("BOOK_SITE", ROOT / "_build" / "html"))
PAGE = os.environ.get("BOOK_PLAYGROUND", "book/playground.html")
N, C = 8, 4
TOL = 1e-12

pytestmark = [pytest.mark.slow, pytest.mark.book]


@pytest.fixture(scope="module")
def site():
    if not (SITE / PAGE).exists():
        message = f"{SITE / PAGE} is missing: build the book first (make book)"
        if os.environ.get("BOOK_OPTIONAL") == "1":
            pytest.skip(message)
        pytest.fail(message)
    return SITE


def set_value(page, id_, value):
    page.fill(f"#{id_}", str(value))          # fires the input event, as typing does


def read(page, prefix, shape):
    """Full-precision values of the cells prefix-i-c (or prefix-c for a vector)."""
    if len(shape) == 1:
        return np.array([float(page.get_attribute(f"#{prefix}-{c}", "data-value")) for c in range(shape[0])])
    return np.array([[float(page.get_attribute(f"#{prefix}-{i}-{c}", "data-value")) for c in range(shape[1])]
                     for i in range(shape[0])])


def inputs(page, prefix, shape):
    if len(shape) == 1:
        return np.array([float(page.input_value(f"#{prefix}-{c}")) for c in range(shape[0])])
    return np.array([[float(page.input_value(f"#{prefix}-{i}-{c}")) for c in range(shape[1])]
                     for i in range(shape[0])])


def close(a, b):
    return np.max(np.abs(a - b) / np.maximum(1.0, np.abs(b)))


def test_playground_agrees_with_bnref(browser, server):
    page, problems = open_page(browser, f"{server}/{PAGE}")
    worst = {}
    try:
        # learner edits: two x values (one huge), gamma, beta, eps
        set_value(page, "bnpg-x-2-1", 100)
        set_value(page, "bnpg-x-5-3", -0.3)
        set_value(page, "bnpg-gamma-0", 2.5)
        set_value(page, "bnpg-gamma-2", -0.7)
        set_value(page, "bnpg-beta-1", 0.4)
        set_value(page, "bnpg-beta-3", -1.25)
        set_value(page, "bnpg-eps", 0.01)
        # the huge value changed every output of its column, not only its own
        changed = [page.get_attribute(f"#bnpg-y-{i}-3", "data-changed") for i in range(N)]
        assert changed == ["1"] * N, f"one edit of column 3 should change all its outputs: {changed}"

        x, gamma, beta = inputs(page, "bnpg-x", (N, C)), inputs(page, "bnpg-gamma", (C,)), inputs(page, "bnpg-beta", (C,))
        eps = float(page.input_value("#bnpg-eps"))
        assert x[2, 1] == 100 and eps == 0.01
        y, cache = batchnorm_forward(x, gamma, beta, eps)
        for name, ref in [("mean", cache.mean), ("var", cache.var), ("inv_std", cache.inv_std)]:
            worst[name] = close(read(page, f"bnpg-{name}", (C,)), ref.ravel())
        worst["x_hat"] = close(read(page, "bnpg-xhat", (N, C)), (x - cache.mean) * cache.inv_std)
        worst["y"] = close(read(page, "bnpg-y", (N, C)), y)

        for mode in ["onehot", "y", "random", "custom"]:
            page.select_option("#bnpg-dymode", mode)
            if mode == "onehot":
                set_value(page, "bnpg-oh-i", 3)
                set_value(page, "bnpg-oh-c", 2)
            if mode == "random":
                set_value(page, "bnpg-seed", 7)
            if mode == "custom":
                set_value(page, "bnpg-dyin-0-0", 3.5)
            dy = inputs(page, "bnpg-dyin", (N, C))
            if mode == "onehot":
                expected = np.zeros((N, C)); expected[2, 1] = 1
                assert np.array_equal(dy, expected)
            if mode == "y":
                assert close(dy, y) < TOL
            if mode == "random":
                assert np.all(np.abs(dy) <= 1) and len(np.unique(dy)) == N * C
            if mode == "custom":
                assert dy[0, 0] == 3.5
            dx, dgamma, dbeta = batchnorm_backward(dy, cache)
            worst[f"dx ({mode})"] = close(read(page, "bnpg-dx", (N, C)), dx)
            worst[f"dgamma ({mode})"] = close(read(page, "bnpg-dgamma", (C,)), dgamma)
            worst[f"dbeta ({mode})"] = close(read(page, "bnpg-dbeta", (C,)), dbeta)
            # the page's own checks: shown as ✓, and the sums it shows are rounding-sized
            x_hat = (x - cache.mean) * cache.inv_std
            scale = max(1.0, np.abs(dx).max())
            # with eps > 0 the second sum is inv_std*eps/(var+eps)*gamma*dgamma, not 0
            eps_term = (cache.inv_std * eps / (cache.var + eps)).ravel() * gamma * dgamma
            assert close(read(page, "bnpg-epsterm", (C,)), eps_term) < TOL
            for prefix, expected in [("bnpg-sumdx", 0), ("bnpg-sumdxxhat", eps_term)]:
                sums = read(page, prefix, (C,))
                assert np.all(np.abs(sums - expected) < 1e-12 * scale), (mode, prefix, sums)
                for c in range(C):
                    assert page.get_attribute(f"#{prefix}-{c}", "data-ok") == "1"
                    assert "✓" in page.inner_text(f"#{prefix}-{c}")
            assert np.allclose(dx.sum(axis=0), 0, atol=1e-12 * scale)
            assert np.allclose((dx * x_hat).sum(axis=0), eps_term, atol=1e-12 * scale)

        # train vs eval: two updates of the running statistics with momentum 0.3
        rm, rv = inputs(page, "bnpg-rm", (C,)), inputs(page, "bnpg-rv", (C,))
        set_value(page, "bnpg-momentum", 0.3)
        for _ in range(2):
            page.click("#bnpg-update")
            rm, rv = running_stats_update(rm, rv, x, momentum=0.3)
        worst["running_mean"] = close(inputs(page, "bnpg-rm", (C,)), rm)
        worst["running_var"] = close(inputs(page, "bnpg-rv", (C,)), rv)
        y_eval = batchnorm_inference(x, gamma, beta, rm, rv, eps)
        worst["y_eval"] = close(read(page, "bnpg-yev", (N, C)), y_eval)
        worst["y (train, beside eval)"] = close(read(page, "bnpg-ytr", (N, C)), y)
        print("worst relative difference to bnref:", {k: f"{v:.1e}" for k, v in worst.items()})
        assert max(worst.values()) < TOL, worst
        assert problems["foreign"] == [], problems["foreign"]
        assert problems["console"] == [], problems["console"]
    finally:
        page.context.close()


def test_playground_inputs_are_labelled_and_fit_a_phone(browser, server):
    page, problems = open_page(browser, f"{server}/{PAGE}")
    try:
        page.set_viewport_size({"width": 390, "height": 844})
        unlabelled = page.evaluate("""[...document.querySelectorAll('#bnpg input, #bnpg select')]
            .filter(e => !e.getAttribute('aria-label') && !document.querySelector(`label[for="${e.id}"]`))
            .map(e => e.id)""")
        assert unlabelled == []
        assert page.locator("#bnpg input").count() == 2 * N * C + 4 * C + 5
        # keyboard: Tab reaches an x input, typing changes the outputs
        page.focus("#bnpg-x-0-0")
        before = page.get_attribute("#bnpg-y-1-0", "data-value")
        page.keyboard.press("ArrowUp")
        assert page.get_attribute("#bnpg-y-1-0", "data-value") != before
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"page is {width} px wide at 390 px"
        # only the scroll containers may hold something wider than the screen
        wide = page.evaluate("""[...document.querySelectorAll('#bnpg *')]
            .filter(e => !e.closest('.bnpg-scroll') || e.classList.contains('bnpg-scroll'))
            .filter(e => e.getBoundingClientRect().right > 390.5).map(e => e.tagName + '#' + e.id)""")
        assert wide == []
        assert problems["console"] == [] and problems["foreign"] == []
    finally:
        page.context.close()
