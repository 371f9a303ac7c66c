"""Choose the kernels for an array: CuPy on the GPU; on the CPU Numba, tuned NumPy or the reference.

CuPy is imported lazily and only when a CuPy array is actually seen, so a CPU-only machine
never needs it installed.

The CPU kernel sets (all implement the interface written down in :mod:`bnref.kernels`):

- ``"numba"``: compiled and fused, the fastest; the default where numba is installed (the
  course's requirements install it). The first call in a new environment compiles every
  kernel at once, under a lock (about 20 s); the compiled code is cached on disk, so later
  processes load it in about a second (``benchmarks/results/cpu.md`` has the measured costs).
- ``"numpy"``: the same algorithms as plain NumPy array operations, tuned (BLAS sums, a
  shifted one-pass variance, buffers reused in place); the default without numba.
- ``"reference"``: :mod:`bnref.reference`, the book's formulas line by line. The slowest, and
  the one the others are tested against; the autograder computes its answers with it.

The environment variable ``BNREF_CPU_KERNELS`` chooses at import (any case, ``Numba`` works;
unset or empty means the default). It is checked like an argument of
:func:`set_cpu_kernels`: an unknown value is a ``ValueError``, and ``numba`` without numba
installed a ``ModuleNotFoundError`` naming the extra to install; both messages name the
variable. An error, not a warning: a misspelt choice would otherwise fall back to other
kernels, and every timing would silently measure those.
"""
import contextlib
import importlib.util
import os
import sys
import threading
from types import ModuleType
from typing import Iterator, Optional, Sequence

import numpy as np

__all__ = ["get_array_module", "get_kernels", "is_cupy_array", "set_cpu_kernels", "get_cpu_kernels",
           "default_cpu_kernels", "use_cpu_kernels", "CPU_KERNELS"]

CPU_KERNELS = ("numba", "numpy", "reference")


def default_cpu_kernels() -> str:
    """``"numba"`` where numba is installed, else ``"numpy"``: the fastest set available.

    Examples
    --------
    >>> default_cpu_kernels() in ("numba", "numpy")
    True
    """
    # find_spec, not an import: importing numba takes a second, and bnref's import would pay it
    return "numba" if importlib.util.find_spec("numba") is not None else "numpy"


def _kernel_name(name, what, unset=""):
    """``name`` as one of CPU_KERNELS (any case), or a clear error naming ``what`` was wrong.

    ``unset`` is appended to the errors: how to get the default instead.
    """
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, one of {CPU_KERNELS}; got {type(name).__name__} {name!r}")
    key = name.strip().lower()
    if key not in CPU_KERNELS:
        raise ValueError(f"{what} must be one of {CPU_KERNELS} (any case), got {name!r}{unset}")
    if key == "numba" and importlib.util.find_spec("numba") is None:
        raise ModuleNotFoundError(f"{what} = {name!r} needs numba, which is not installed: "
                                  f'pip install "bnref[numba]"{unset}', name="numba")
    return key


def _from_environment():
    """The kernels that ``BNREF_CPU_KERNELS`` asks for; the default when it is unset or empty."""
    value = os.environ.get("BNREF_CPU_KERNELS", "")
    if not value.strip():            # `export BNREF_CPU_KERNELS=` means "not set", as in most tools
        return default_cpu_kernels()
    return _kernel_name(value, "the environment variable BNREF_CPU_KERNELS",
                        unset=" (or unset it for the default)")


def set_cpu_kernels(name: str) -> str:
    """Choose the CPU kernels for this process: ``"numba"``, ``"numpy"`` or ``"reference"``.

    All three implement the same kernel interface (:mod:`bnref.kernels`) and give the same
    results to rounding; the test suite runs each against PyTorch and the fast ones against
    the reference. The default is :func:`bnref.backend.default_cpu_kernels`; the environment variable
    ``BNREF_CPU_KERNELS`` sets another when bnref is imported (see ``bnref.backend``).

    Parameters
    ----------
    name : {"numba", "numpy", "reference"}
        Case-insensitive.

    Returns
    -------
    str
        The name now in use, in lower case.

    Raises
    ------
    ValueError
        If ``name`` is not one of the three (``TypeError`` if it is not a str).
    ModuleNotFoundError
        For ``"numba"`` when numba is not installed (``pip install "bnref[numba]"``): here,
        rather than at the first call.

    Examples
    --------
    >>> set_cpu_kernels("NumPy")
    'numpy'
    >>> set_cpu_kernels("fast")
    Traceback (most recent call last):
        ...
    ValueError: set_cpu_kernels(name) must be one of ('numba', 'numpy', 'reference') (any case), got 'fast'
    >>> set_cpu_kernels(default_cpu_kernels()) == default_cpu_kernels()
    True
    """
    global _CPU_KERNELS
    _CPU_KERNELS = _kernel_name(name, "set_cpu_kernels(name)")
    return _CPU_KERNELS


_CPU_KERNELS = _from_environment()


_local = threading.local()           # .kernels: the choice of use_cpu_kernels in this thread


def get_cpu_kernels() -> str:
    """The name of the CPU kernels in use in this thread (see :func:`set_cpu_kernels`)."""
    return getattr(_local, "kernels", None) or _CPU_KERNELS


@contextlib.contextmanager
def use_cpu_kernels(name: str) -> Iterator[str]:
    """Use other CPU kernels inside a ``with`` block, in this thread only.

    For code that must not depend on the process-wide choice, or be disturbed by it: the
    autograder computes its answers with ``use_cpu_kernels("reference")`` in several threads
    at once, whatever kernels the instructor's session uses.

    Examples
    --------
    >>> import numpy as np, bnref
    >>> with use_cpu_kernels("reference"):
    ...     y, cache = bnref.batchnorm_forward(np.arange(6.0).reshape(3, 2), None, None)
    ...     get_cpu_kernels()
    'reference'
    """
    key = _kernel_name(name, "use_cpu_kernels(name)")
    outer = getattr(_local, "kernels", None)
    _local.kernels = key
    try:
        yield key
    finally:
        _local.kernels = outer


def is_cupy_array(a: object) -> bool:
    """True if ``a`` is a ``cupy.ndarray`` (checked without importing CuPy)."""
    # If CuPy was never imported, no CuPy array can exist in this process.
    cupy = sys.modules.get("cupy")
    return cupy is not None and isinstance(a, cupy.ndarray)


def get_array_module(*arrays: object, names: Optional[Sequence[str]] = None) -> ModuleType:
    """Return ``numpy`` or ``cupy``: the array library of ``arrays`` (``None`` entries ignored).

    Parameters
    ----------
    *arrays : array_like or None
        Arrays that must all live on the same device.
    names : sequence of str, optional
        Argument names, used in the error message when NumPy and CuPy arrays are mixed.

    Raises
    ------
    TypeError
        If NumPy and CuPy arrays are mixed.

    Examples
    --------
    >>> import numpy as np
    >>> get_array_module(np.zeros(3), None).__name__
    'numpy'
    """
    cupy = sys.modules.get("cupy")
    if cupy is None:                    # fast path: no CuPy array can exist in this process
        return np
    # (on every GPU call's path: the common cases, all CuPy or all NumPy, decided in one pass)
    ndarray = cupy.ndarray
    kinds = {isinstance(a, ndarray) for a in arrays if a is not None}
    if kinds == {True}:
        return cupy                     # what require("cupy") would import: it is imported
    if True in kinds:                   # and False: both kinds
        names = list(names) if names is not None else [f"argument {i}" for i in range(len(arrays))]
        on_gpu = [(n, is_cupy_array(a)) for n, a in zip(names, arrays) if a is not None]
        cpu = [n for n, g in on_gpu if not g]
        gpu = [n for n, g in on_gpu if g]
        raise TypeError(
            f"cannot mix NumPy and CuPy arrays: {', '.join(gpu)} on the GPU (cupy.ndarray) but "
            f"{', '.join(cpu)} on the CPU; expected all on one device "
            "(move them with cupy.asarray or cupy.asnumpy)"
        )
    return np


def get_kernels(xp: ModuleType) -> ModuleType:
    """Return the kernel module for array library ``xp`` (see ``bnref.kernels``)."""
    if xp is np:
        name = getattr(_local, "kernels", None) or _CPU_KERNELS
        if name == "numba":
            if "bnref.kernels.numba_bn" not in sys.modules:     # once: this is on every call's path
                # checked at the switch; this still names the extra if numba went missing since
                from ._optional import require

                require("numba", 'bnref.set_cpu_kernels("numba")')
            from .kernels import numba_bn  # compiled on first use, cached on disk

            if not numba_bn._READY:
                numba_bn.ensure_compiled()             # every specialisation at once, under a lock
            return numba_bn
        if name == "reference":
            from . import reference

            return reference
        from .kernels import numpy_bn

        return numpy_bn
    cupy_bn = sys.modules.get("bnref.kernels.cupy_bn")      # (a `from` import costs a microsecond)
    if cupy_bn is None:
        from .kernels import cupy_bn  # (CuPy itself is imported by cupy_bn on first use)
    return cupy_bn
