"""Input checks shared by the public functions: clear errors instead of silent wrong answers.

Every message names the argument, what it got, and what was expected.
"""
import math
import numbers
from math import prod

import numpy as np

from .backend import is_cupy_array

_CPU_DTYPES = (np.float32, np.float64)


def _dtype_name(a):
    return str(getattr(a, "dtype", type(a).__name__))


def _full_name(t):
    module = t.__module__
    return t.__qualname__ if module == "builtins" else f"{module}.{t.__qualname__}"


def _conversion(name, a):
    """How to turn ``a``, which is not a NumPy or CuPy array, into one."""
    top = type(a).__module__.partition(".")[0]
    if top == "torch":
        return (f"{name}.detach().cpu().numpy() (or cupy.asarray({name}.detach()) to stay on the GPU); "
                "bnref does not track gradients, its backward functions compute them")
    if isinstance(a, np.matrix):
        return f"np.asarray({name}) (np.matrix is always 2-D and its * is a matrix product)"
    if isinstance(a, np.ma.MaskedArray):
        return (f"{name}.filled(np.nan) to make the masked values NaN, or drop them first "
                "(the kernels would otherwise use the hidden values as data)")
    if top == "pandas":
        return f"{name}.to_numpy(dtype=np.float64)"
    if top in ("tensorflow", "keras"):
        return f"{name}.numpy()"
    if top == "xarray":
        return f"{name}.values"
    if top == "dask":
        return f"{name}.compute()"
    return f"np.asarray({name}, dtype=np.float64)"


def check_array(name, a):
    """``a`` must be a ``numpy.ndarray`` or a ``cupy.ndarray``: anything else, a clear TypeError.

    Lists, torch tensors, ``np.matrix``, masked arrays and other array-likes are refused, with
    the conversion to use, rather than converted silently or failing deep inside NumPy.
    """
    if is_cupy_array(a):
        return
    if isinstance(a, np.ndarray) and not isinstance(a, (np.matrix, np.ma.MaskedArray)):
        return
    raise TypeError(f"{name} must be a numpy.ndarray or a cupy.ndarray, got {_full_name(type(a))}; "
                    f"convert it first: {_conversion(name, a)}")


def check_float_array(name, a, xp, min_ndim=1):
    """``a`` must be a floating array of the backend ``xp`` with at least ``min_ndim`` axes."""
    check_array(name, a)
    kind = a.dtype.kind                 # (NumPy and CuPy arrays' dtypes are numpy.dtype objects)
    if kind != "f" and not (xp is not np and "bfloat16" in str(a.dtype)):
        raise TypeError(
            f"{name} must have a floating dtype (float32 or float64), got dtype {_dtype_name(a)}; "
            f"convert integer, bool or complex data first, e.g. {name}.astype(np.float32)"
        )
    if xp is np and a.dtype not in _CPU_DTYPES:
        raise TypeError(
            f"{name} has dtype {a.dtype}; on the CPU bnref supports float32 and float64 "
            "(float16/bfloat16 are supported on the GPU backend, which accumulates in float32)"
        )
    if a.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions, got shape {tuple(a.shape)}")


def channel_axis(x, axis):
    """Normalise ``axis`` (may be negative) for ``x``; the channel axis cannot be axis 0."""
    if type(axis) is not int and (not isinstance(axis, numbers.Integral) or isinstance(axis, bool)):
        raise TypeError(f"axis must be an int, got {axis!r}")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis={axis} is out of range for x of shape {tuple(x.shape)} ({x.ndim} dimensions)")
    axis = axis % x.ndim
    if axis == 0:
        raise ValueError(
            f"axis=0 would make the batch axis the channel axis for x of shape {tuple(x.shape)}; "
            "expected the channel axis after the batch axis (axis=1 for (N, C, ...), axis=-1 for channels-last)"
        )
    return axis


def check_vector(name, v, C, x, xp, allow_none=False):
    """``v`` must be a floating array of shape (C,) on the same device as ``x``."""
    if v is None:
        if allow_none:
            return
        raise TypeError(f"{name} must be an array of shape ({C},), got None")
    check_float_array(name, v, xp)
    if tuple(v.shape) != (C,):
        raise ValueError(f"{name} must have shape ({C},) (one value per channel of x {tuple(x.shape)}), got shape {tuple(v.shape)}")


def check_eps(eps):
    """``eps`` must be a finite number > 0 (it keeps 1/sqrt(var + eps) finite)."""
    # (type(eps) is float first: the ABC check costs a microsecond on every GPU call's path)
    if type(eps) is not float and (isinstance(eps, bool) or not isinstance(eps, numbers.Real)):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    if not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")


def check_momentum(momentum):
    """``momentum`` must be None (cumulative average) or a number in [0, 1]."""
    if momentum is None:
        return
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not 0 <= momentum <= 1:
        raise ValueError(
            f"momentum must be in [0, 1] (PyTorch's convention: weight of the new batch) or None "
            f"for a cumulative average, got {momentum!r}"
        )


def check_training_batch(x, axis):
    """PyTorch's rule: training needs more than one value per channel to estimate a variance."""
    m = prod(n for i, n in enumerate(x.shape) if i != axis)     # not x.size // C: C may be 0
    if m <= 1:
        raise ValueError(
            f"expected more than 1 value per channel when training, got x of shape {tuple(x.shape)} "
            f"with channel axis {axis} ({m} value per channel); use a larger batch or inference mode"
        )
    return m
