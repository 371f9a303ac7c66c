"""Small helpers shared by the experiment modules (private)."""
import numpy as np


def _np(a):
    """A NumPy copy of a NumPy or CuPy array (results leave the device as NumPy)."""
    return a.get() if hasattr(a, "get") else np.asarray(a)


def _norm(a, xp):
    """The Euclidean norm of all of ``a``'s entries, as a Python float."""
    return float(xp.sqrt(xp.sum(a * a)))
