"""bnref: a readable, tested reference Batch Normalization (NumPy on the CPU, CuPy on the GPU).

Conventions are PyTorch's: ``y = gamma * (x - mean) / sqrt(var + eps) + beta`` with the biased
batch variance, ``eps = 1e-5``, statistics over every axis except the channel ``axis``, and
running statistics ``new = (1 - momentum) * old + momentum * batch`` with the unbiased variance.

Where things are:

- the NumPy kernels (the forward pass on one screen): ``bnref/kernels/numpy_bn.py``
- the public functions (validation and dispatch): ``bnref/functional.py``
- the stateful layer: ``bnref/layer.py``; folding: ``bnref/fold.py``
- course support: ``bnref.data`` (digits), ``bnref.mlp`` (a tiny MLP), ``bnref.widgets``
"""
from .backend import get_array_module, get_cpu_kernels, set_cpu_kernels
from .fold import bn_affine, fold_conv2d, fold_linear
from .functional import (BatchNormCache, GroupNormCache, LayerNormCache, batch_statistics,
                         batchnorm_backward, batchnorm_forward, batchnorm_inference,
                         groupnorm_backward, groupnorm_forward, layernorm_backward,
                         layernorm_forward, running_stats_update)
from .gradcheck import numerical_gradient, relative_error
from .layer import BatchNorm

__version__ = "0.1.0"

__all__ = [
    "BatchNorm", "BatchNormCache", "LayerNormCache", "GroupNormCache",
    "batchnorm_forward", "batchnorm_backward", "batchnorm_inference",
    "batch_statistics", "running_stats_update",
    "layernorm_forward", "layernorm_backward", "groupnorm_forward", "groupnorm_backward",
    "fold_linear", "fold_conv2d", "bn_affine",
    "numerical_gradient", "relative_error", "get_array_module", "set_cpu_kernels", "get_cpu_kernels",
]
