"""The experiments that chapters 4 to 8 of the book run at build time, one module per topic.

==============================  =========  ====================================================
module                          chapter    what is in it
==============================  =========  ====================================================
:mod:`.graph`                   4          :data:`BN_STAGES` (BN's graph, node by node) and
                                           :func:`staged_backward` (its backward pass)
:mod:`.running_stats`           5          :func:`running_average`, :func:`convert_momentum`,
                                           :data:`CONVENTIONS` (PyTorch, CS231n, Keras)
:mod:`.training`                6          :func:`train_curves`; :func:`sweep` and its two
                                           uses :func:`lr_sweep`, :func:`init_scale_sweep`;
                                           :func:`unit_percentiles`; Santurkar et al.'s
                                           :func:`ics_gradient_change`,
                                           :func:`landscape_along_gradient` and, through
                                           :func:`measure_during_training`,
                                           :func:`ics_during_training`,
                                           :func:`landscape_during_training`
:mod:`.noise`                   6          "noisy BN": :func:`centered_noise`,
                                           :func:`nonstationary_noise`
:mod:`.lp_batchnorm`            6          l_p-BN: :func:`lp_batchnorm_forward`,
                                           :func:`lp_batchnorm_backward`,
                                           :class:`LpBatchNormCache` (``norm="batch_l1"``)
:mod:`.depth`                   6          deep plain MLPs at initialisation:
                                           :func:`deep_mlp`, :func:`activation_scales`,
                                           :func:`gradient_profiles`, :func:`growth_per_layer`
                                           against :data:`YANG_RELU_BN_GROWTH`
:mod:`.dropout`                 6          dropout before BN and its variance shift:
                                           :func:`dropout_runs`, :func:`variance_shift`,
                                           :func:`predicted_variance_shift`,
                                           :func:`reestimate_bn`, :class:`DropoutMLP`
:mod:`.bugs`                    gallery    the common BN mistakes as learner functions
                                           (:data:`BUGGY`) and :func:`grader_message`, the
                                           autograder's message for each
:mod:`.small_batches`           7          :func:`variance_noise`, :func:`batch_stat_spread`,
                                           :func:`small_batch_accuracy`,
                                           :func:`batch_dependence`, :func:`non_iid_accuracy`
:mod:`.convnet`                 8          a small convolutional network in NumPy (im2col,
                                           spatial BN from bnref, LRN): :func:`train_convnet`,
                                           :func:`placement_sweep` over :data:`PLACEMENTS`
==============================  =========  ====================================================

The public names of the chapter-4 to chapter-7 modules above are importable from here
(``from bnref import experiments as E; E.lr_sweep(...)``), as the chapters do. Four modules
are reached by name instead (``from bnref.experiments import convnet``;
``convnet.forward(...)``), because their names only make sense next to the module's:
:mod:`.bugs`, :mod:`.depth`, :mod:`.dropout` and :mod:`.convnet` (``forward``, ``accuracy``,
``deep_mlp``). Each function is small, seeded and fast on the CPU
(seconds on the digits set); those that compute take ``xp=numpy``, so that a reader with a GPU
can pass ``cupy`` (the MLP and the BN kernels then run on the device; results come back as
Python floats or NumPy arrays).

The names follow bnref's vocabulary: ``mean``, ``var``, ``inv_std`` (``1/sqrt(var + eps)``),
``x_hat`` and ``dy`` (the upstream gradient).
"""
from . import bugs, convnet, depth, dropout
from .graph import BN_STAGES, staged_backward
from .lp_batchnorm import LpBatchNormCache, lp_batchnorm_backward, lp_batchnorm_forward
from .noise import centered_noise, nonstationary_noise
from .running_stats import CONVENTIONS, convert_momentum, running_average
from .small_batches import (batch_dependence, batch_stat_spread, non_iid_accuracy,
                            small_batch_accuracy, variance_noise)
from .training import (ics_during_training, ics_gradient_change, init_scale_sweep,
                       landscape_along_gradient, landscape_during_training, lr_sweep,
                       measure_during_training, sweep, train_curves, unit_percentiles)

__all__ = [
    "bugs", "convnet", "depth", "dropout",
    "staged_backward", "BN_STAGES",
    "running_average", "convert_momentum", "CONVENTIONS",
    "train_curves", "sweep", "lr_sweep", "init_scale_sweep",
    "ics_gradient_change", "ics_during_training",
    "landscape_along_gradient", "landscape_during_training", "measure_during_training",
    "batch_stat_spread", "variance_noise", "small_batch_accuracy", "batch_dependence",
    "non_iid_accuracy",
    "nonstationary_noise", "centered_noise", "unit_percentiles",
    "lp_batchnorm_forward", "lp_batchnorm_backward", "LpBatchNormCache",
]
