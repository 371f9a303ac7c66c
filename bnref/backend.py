"""Choose the kernels for an array: NumPy on the CPU, CuPy on the GPU.

CuPy is imported lazily and only when a CuPy array is actually seen, so a CPU-only machine
never needs it installed.
"""
import importlib.util
import os
import sys
from types import ModuleType
from typing import Optional, Sequence

import numpy as np

__all__ = ["get_array_module", "get_kernels", "is_cupy_array", "set_cpu_kernels", "get_cpu_kernels"]

CPU_KERNELS = ("numpy", "numba")


def _kernel_name(name, what):
    """``name`` as one of CPU_KERNELS (any case), or a clear error naming ``what`` was wrong."""
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, one of {CPU_KERNELS}; got {type(name).__name__} {name!r}")
    key = name.strip().lower()
    if key not in CPU_KERNELS:
        raise ValueError(f"{what} must be one of {CPU_KERNELS} (any case), got {name!r}")
    if key == "numba" and importlib.util.find_spec("numba") is None:
        raise ModuleNotFoundError(f"{what} = {name!r} needs numba, which is not installed: "
                                  'pip install "bnref[numba]"', name="numba")
    return key


def set_cpu_kernels(name: str) -> str:
    """Choose the CPU kernels: ``"numpy"`` (readable reference, default) or ``"numba"`` (compiled, fused).

    Both implement the same kernel API and give the same results to rounding; the test suite
    runs both against PyTorch. The environment variable ``BNREF_CPU_KERNELS`` sets the default
    when bnref is imported. The name is case-insensitive; an unknown name is a ``ValueError``,
    and ``"numba"`` without numba installed a ``ModuleNotFoundError`` saying what to install,
    here rather than at the first call.

    Examples
    --------
    >>> set_cpu_kernels("numpy")
    'numpy'
    """
    global _CPU_KERNELS
    _CPU_KERNELS = _kernel_name(name, "set_cpu_kernels(name)")
    return _CPU_KERNELS


_CPU_KERNELS = _kernel_name(os.environ.get("BNREF_CPU_KERNELS", "numpy"), "the environment variable BNREF_CPU_KERNELS")


def get_cpu_kernels() -> str:
    """The name of the CPU kernels in use (see :func:`set_cpu_kernels`)."""
    return _CPU_KERNELS


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
    if "cupy" not in sys.modules:       # fast path: no CuPy array can exist in this process
        return np
    names = list(names) if names is not None else [f"argument {i}" for i in range(len(arrays))]
    on_gpu = [(n, is_cupy_array(a)) for n, a in zip(names, arrays) if a is not None]
    if any(g for _, g in on_gpu):
        if not all(g for _, g in on_gpu):
            cpu = [n for n, g in on_gpu if not g]
            gpu = [n for n, g in on_gpu if g]
            raise TypeError(
                f"cannot mix NumPy and CuPy arrays: {', '.join(gpu)} on the GPU (cupy.ndarray) but "
                f"{', '.join(cpu)} on the CPU; expected all on one device "
                "(move them with cupy.asarray or cupy.asnumpy)"
            )
        from ._optional import require

        return require("cupy", "computing on CuPy arrays")
    return np


def get_kernels(xp: ModuleType) -> ModuleType:
    """Return the kernel module for array library ``xp`` (see ``bnref.kernels``)."""
    if xp is np:
        if _CPU_KERNELS == "numba":
            from .kernels import numba_bn  # compiled on first use, cached on disk

            return numba_bn
        from .kernels import numpy_bn

        return numpy_bn
    from .kernels import cupy_bn  # imports CuPy; only reached for CuPy arrays

    return cupy_bn
