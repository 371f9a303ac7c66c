"""Numerical gradients by central differences, and the course's relative error."""
from typing import Callable

import numpy as np

__all__ = ["numerical_gradient", "relative_error"]


def numerical_gradient(f: Callable[[np.ndarray], np.ndarray], x: np.ndarray, df: np.ndarray,
                       h: float = 1e-5) -> np.ndarray:
    """Numerical gradient of ``sum(f(x) * df)`` with respect to ``x`` (central differences).

    ``df`` is the upstream gradient, so the result is the vector-Jacobian product that a
    backward pass returns. ``x`` is perturbed in place and restored. Use float64.

    Parameters
    ----------
    f : callable
        ``f(x) -> ndarray`` (re-reads ``x`` on every call).
    x : ndarray (float64)
    df : ndarray, shape of ``f(x)``
    h : float, default 1e-5

    Returns
    -------
    grad : ndarray, shape of ``x``

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([1.0, 2.0])
    >>> numerical_gradient(lambda x: x ** 2, x, np.ones(2)).round(6)
    array([2., 4.])
    """
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + h
        pos = np.sum(f(x) * df)
        x[i] = old - h
        neg = np.sum(f(x) * df)
        x[i] = old
        grad[i] = (pos - neg) / (2 * h)
    return grad


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """``max |a - b| / max(1e-8, |a| + |b|)`` elementwise (CS231n's): ~1e-7 or less is a match.

    Examples
    --------
    >>> import numpy as np
    >>> float(relative_error(np.array([1.0]), np.array([1.0 + 1e-9]))) < 1e-9
    True
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b)))
