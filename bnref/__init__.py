"""bnref: a readable, tested reference Batch Normalization (NumPy on the CPU, CuPy on the GPU).

Conventions are PyTorch's: ``y = gamma * (x - mean) / sqrt(var + eps) + beta`` with the biased
batch variance, ``eps = 1e-5``, statistics over every axis except the channel ``axis``, and
running statistics ``new = (1 - momentum) * old + momentum * batch`` with the unbiased variance.

Where things are:

- the formulas, line by line (the forward pass on one screen): ``bnref/reference.py``
- the kernel interface and the fast kernels (tuned NumPy, Numba, CuPy): ``bnref/kernels/``
- which kernels run (Numba by default where installed): ``bnref/backend.py``
- the public functions (validation and dispatch): ``bnref/functional.py`` (BatchNorm),
  ``bnref/norms.py`` (LayerNorm, GroupNorm)
- the stateful layers (``BatchNorm``, ``BatchNorm1d/2d/3d``): ``bnref/layer.py``; folding:
  ``bnref/fold.py``
- course support: ``bnref.data`` (digits), ``bnref.mlp`` (a tiny MLP), ``bnref.widgets``,
  ``bnref.experiments`` (what the chapters run); the autograder: ``bnref.grading``
"""
from .backend import get_array_module, get_cpu_kernels, set_cpu_kernels, use_cpu_kernels
from .fold import bn_affine, fold_conv2d, fold_linear
from .functional import (BatchNormCache, batch_statistics, batchnorm_backward, batchnorm_forward,
                         batchnorm_inference, running_stats_update)
from .gradcheck import numerical_gradient, relative_error
from .layer import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d
from .norms import (GroupNormCache, LayerNormCache, groupnorm_backward, groupnorm_forward,
                    layernorm_backward, layernorm_forward)

__version__ = "0.2.0"

__all__ = [
    "BatchNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "BatchNormCache", "LayerNormCache", "GroupNormCache",
    "batchnorm_forward", "batchnorm_backward", "batchnorm_inference",
    "batch_statistics", "running_stats_update",
    "layernorm_forward", "layernorm_backward", "groupnorm_forward", "groupnorm_backward",
    "fold_linear", "fold_conv2d", "bn_affine",
    "numerical_gradient", "relative_error", "get_array_module", "set_cpu_kernels", "get_cpu_kernels",
    "use_cpu_kernels",
]
