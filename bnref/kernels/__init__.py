"""The kernel interface: what every kernel set implements, written down once.

Kernel sets (chosen by ``bnref.backend``):

- ``bnref.reference``: the book's formulas, on any array module (the one the others are
  tested against);
- ``bnref.kernels.numpy_bn``: tuned NumPy (BLAS sums, a shifted one-pass variance);
- ``bnref.kernels.numba_bn``: compiled, fused, multithreaded (the CPU default where numba is
  installed);
- ``bnref.kernels.cupy_bn``: CUDA kernels for CuPy arrays.

Each one defines the functions of ``API`` with exactly these signatures and returns
(``tests/test_kernel_interface.py`` checks it). The public functions in
``bnref.functional`` and ``bnref.norms`` validate the arguments, view the data in the
canonical layout and convert the parameters before calling them, so a kernel may assume:

- ``x3`` (and ``dy3``) is C-contiguous of shape ``(A, C, B)``: BatchNorm's channel axis in the
  middle (``(N, C)`` is ``(N, C, 1)``, ``(N, C, H, W)`` is ``(N, C, H*W)``, channels-last
  ``(N, H, W, C)`` is ``(N*H*W, C, 1)``); for GroupNorm ``(N, C, L)``;
- ``x2`` (and ``dy2``) is C-contiguous ``(M, K)``: LayerNorm normalises each of the M rows;
- every parameter and statistic (``gamma``, ``beta``, ``mean``, ``inv_std``,
  ``running_mean``, ``running_var``) is a contiguous 1-D array, or ``(N, G)`` for GroupNorm's
  statistics, of ``stat_dtype`` of ``x``: the one dtype rule;
- ``eps`` is a float > 0, ``num_groups`` an int that divides C.

And must return:

- ``bn_stats(x3)``: ``(mean, var)``, each (C,); var biased (divided by m);
- ``bn_forward_train(x3, gamma, beta, eps)``: ``(y3, mean, var, inv_std)``;
- ``bn_backward(dy3, x3, mean, inv_std, gamma)``: ``(dx3, dgamma, dbeta)``;
- ``bn_inference(x3, gamma, beta, running_mean, running_var, eps)``: ``y3``;
- ``ln_forward(x2, gamma, beta, eps)``: ``(y2, mean, inv_std)``, statistics (M,);
- ``ln_backward(dy2, x2, mean, inv_std, gamma)``: ``(dx2, dgamma, dbeta)``, gradients (K,);
- ``gn_forward(x3, gamma, beta, num_groups, eps)``: ``(y3, mean, inv_std)``, statistics (N, G);
- ``gn_backward(dy3, x3, mean, inv_std, gamma, num_groups)``: ``(dx3, dgamma, dbeta)``, gradients (C,).

``y3``, ``dx3``, ``y2``, ``dx2``: the shape and dtype of ``x3`` (``x2``), new arrays; every
other result in ``stat_dtype``. A kernel never modifies its inputs.
"""
import numpy as np

__all__ = ["API", "stat_dtype"]

#: The functions every kernel set defines, with these parameter names in this order.
API = {
    "bn_stats": ("x3",),
    "bn_forward_train": ("x3", "gamma", "beta", "eps"),
    "bn_backward": ("dy3", "x3", "mean", "inv_std", "gamma"),
    "bn_inference": ("x3", "gamma", "beta", "running_mean", "running_var", "eps"),
    "ln_forward": ("x2", "gamma", "beta", "eps"),
    "ln_backward": ("dy2", "x2", "mean", "inv_std", "gamma"),
    "gn_forward": ("x3", "gamma", "beta", "num_groups", "eps"),
    "gn_backward": ("dy3", "x3", "mean", "inv_std", "gamma", "num_groups"),
}


def stat_dtype(dtype) -> np.dtype:
    """The dtype of statistics and parameters for inputs of ``dtype``: float32 for 16-bit floats.

    float16 and bfloat16 (GPU only) have too few mantissa bits to accumulate a sum of many
    values, so their statistics, parameters and parameter gradients are float32, as in
    PyTorch; float32 and float64 inputs keep their own dtype.

    Examples
    --------
    >>> stat_dtype(np.float16), stat_dtype(np.float64)
    (dtype('float32'), dtype('float64'))
    """
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if dtype.itemsize < 4 else dtype
