"""From the public functions' arguments to what the kernels assume (:mod:`bnref.kernels`).

Shared by :mod:`bnref.functional` (BatchNorm) and :mod:`bnref.norms` (LayerNorm, GroupNorm):
the checks every forward and backward starts with, the canonical views, and the parameters
in the statistics' dtype.
"""
import contextlib
import sys
from math import prod

from . import _validate as v
from .backend import get_array_module, is_cupy_array
from .kernels import cupy_bn, stat_dtype


def check_devices(names, arrays):
    """CuPy arrays must all be on one GPU: a kernel reading another device's memory is an
    illegal address, which breaks the CUDA context. The error names each argument's device."""
    cupy = sys.modules.get("cupy")
    if cupy is None:                    # no CuPy array can exist in this process
        return
    # on every GPU call's path: the device ids read once (a.device makes a Device object)
    ndarray = cupy.ndarray
    if len({a.data.device_id for a in arrays if isinstance(a, ndarray)}) < 2:
        return
    on = {n: a.device.id for n, a in zip(names, arrays) if a is not None and is_cupy_array(a)}
    if len(set(on.values())) > 1:
        first = next(iter(on))
        others = ", ".join(f"{n} on GPU {i}" for n, i in on.items() if i != on[first])
        raise ValueError(f"{others}, but {first} on GPU {on[first]}; expected every array on "
                         f"{first}'s device (copy one over inside `with cupy.cuda.Device({on[first]}):` "
                         "with cupy.asarray)")


_HOST = contextlib.nullcontext()     # reusable: entering and leaving it does nothing


def on_device(x, others=None, x_name="x"):
    """``with on_device(x):`` runs the block on x's GPU, so that the arrays it makes (views,
    copies, parameters, results) and the kernels it launches are where x lives, whatever device
    is current. CuPy arrays in ``others`` (name -> array) on another GPU are refused by name
    (:func:`bnref.kernels.cupy_bn.device_scope`). Nothing is switched when x is a NumPy array
    or its GPU is current already (the common case costs one device query: ``x.device``, a
    ``cupy.cuda.Device``, would call ``cudaSetDevice`` on every exit)."""
    return cupy_bn.device_scope(x, others, x_name) if is_cupy_array(x) else _HOST


def on_cache_device(cache):
    """``with on_cache_device(cache):`` a backward's :func:`on_device`: on the GPU of the
    forward's x, refusing by name (``cache.mean``) a saved statistic or gamma that has moved to
    another GPU. Anything not a cache is refused inside the scope by :func:`backward_inputs`,
    which also checks ``dy``."""
    saved = {"cache.mean": getattr(cache, "mean", None), "cache.inv_std": getattr(cache, "inv_std", None),
             "cache.gamma": getattr(cache, "gamma", None)}
    return on_device(getattr(cache, "x", None), saved, "cache.x")


def prepare(x, gamma, beta, eps, axis, extra=(), extra_names=()):
    """Check a forward's ``x``, ``gamma``, ``beta``, ``eps`` and ``axis``; return ``(xp, axis, C)``."""
    names = ("x", "gamma", "beta") + tuple(extra_names)
    # (what is not an array is refused below, by the per-argument checks, by name)
    xp = get_array_module(x, gamma, beta, *extra, names=names)
    check_devices(names, (x, gamma, beta, *extra))
    v.check_float_array("x", x, xp, min_ndim=2)
    axis = v.channel_axis(x, axis)
    C = x.shape[axis]
    v.check_vector("gamma", gamma, C, x, xp, allow_none=True)
    v.check_vector("beta", beta, C, x, xp, allow_none=True)
    v.check_eps(eps)
    return xp, axis, C


def backward_inputs(dy, cache, cache_type, forward):
    """The start of every backward: ``cache`` is ``forward``'s and ``dy`` has the shape of its x.

    Returns ``(xp, x, dy)`` with ``dy`` in the dtype of ``x``.
    """
    if not isinstance(cache, cache_type):
        raise TypeError(f"cache must be the {cache_type.__name__} returned by {forward}, "
                        f"got {type(cache).__name__}")
    x = cache.x
    xp = get_array_module(dy, x, names=("dy", "cache.x"))
    check_devices(("cache.x", "dy"), (x, dy))
    v.check_float_array("dy", dy, xp)
    if tuple(dy.shape) != tuple(x.shape):
        raise ValueError(f"dy must have the shape of the forward's x {tuple(x.shape)}, got {tuple(dy.shape)}")
    return xp, x, dy.astype(x.dtype, copy=False)


def as_acb(x, axis):
    """View ``x`` as the kernels' contiguous (A, C, B) array (a copy only if ``x`` is strided)."""
    A = prod(x.shape[:axis])                                    # the axes before the channel
    B = prod(x.shape[axis + 1:])                                # the axes after it
    if not x.flags.c_contiguous:
        x = get_array_module(x).ascontiguousarray(x)
    return x.reshape(A, x.shape[axis], B)                       # (A, C, B)


def as_rows(x, K):
    """View ``x`` as contiguous rows of ``K`` values: (M, K), M = x.size // K."""
    return get_array_module(x).ascontiguousarray(x).reshape(-1, K)   # (M, K)


def param(p, C, fill, x, xp):
    """A parameter or statistic as a (C,) array in the statistics' dtype; ``None`` becomes ``fill``."""
    dtype = stat_dtype(x.dtype)
    if p is None:
        return xp.full(C, fill, dtype=dtype)
    if p.shape != (C,):                 # (the public functions have checked it is (C,) already)
        p = p.reshape(C)
    return p.astype(dtype, copy=False)
