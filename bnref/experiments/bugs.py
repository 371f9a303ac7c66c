"""The common BN implementation mistakes, each as a buggy student function beside the measured effect.

Used by the book's bug gallery. ``BUGGY`` maps each bug to ``(exercise, function)``: the
autograder exercise that checks it and a learner's function with exactly that mistake;
:func:`grader_message` runs the real grading code on it (in-process, as the learner-visible
checks do) and returns the message the learner sees.

Example
-------
>>> from bnref.experiments import bugs
>>> "momentum" in bugs.grader_message("flipped_momentum")
True
"""
import numpy as np

__all__ = ["BUGGY", "grader_message"]  # reached as bnref.experiments.bugs.<name>

from ..grading.exercise import LocalExecutor, evaluate
from ..grading.exercises import EXERCISES


# --- the learner's functions, each with one mistake -------------------------------------
def forward_bessel(x, gamma, beta, eps=1e-5):
    mean = x.mean(axis=0)
    var = x.var(axis=0, ddof=1)                    # BUG: unbiased variance in normalisation
    return gamma * (x - mean) / np.sqrt(var + eps) + beta, None


def forward_wrong_axis(x, gamma, beta, eps=1e-5):
    mean = x.mean(axis=1, keepdims=True)           # BUG: over the features of each example
    var = x.var(axis=1, keepdims=True)
    return gamma * (x - mean) / np.sqrt(var + eps) + beta, None


def inference_batch_stats(x, gamma, beta, running_mean, running_var, eps=1e-5):
    mean, var = x.mean(axis=0), x.var(axis=0)      # BUG: the batch's statistics in eval mode
    return gamma * (x - mean) / np.sqrt(var + eps) + beta


def update_flipped(running_mean, running_var, x, momentum=0.1):
    mean, var = x.mean(axis=0), x.var(axis=0, ddof=1)
    # BUG: momentum weighs the OLD value (Keras' convention) in a PyTorch-convention update
    return (momentum * running_mean + (1 - momentum) * mean,
            momentum * running_var + (1 - momentum) * var)


def update_stale(running_mean, running_var, x, momentum=0.1):
    return running_mean, running_var               # BUG: buffers never updated


def fold_rows(W, b, gamma, beta, running_mean, running_var, eps=1e-5):
    # W: (D, H), z = x @ W + b; BUG: the scale multiplies W's rows (its input dimension)
    scale = gamma / np.sqrt(running_var + eps)
    W_folded = W * scale[:, None]
    b0 = b if b is not None else 0.0
    return W_folded, (b0 - running_mean) * scale + beta


BUGGY = {
    "eval_mode": ("batchnorm_inference", inference_batch_stats),
    "bessel": ("batchnorm_forward", forward_bessel),
    "flipped_momentum": ("running_stats_update", update_flipped),
    "wrong_axis": ("batchnorm_forward", forward_wrong_axis),
    "stale_buffers": ("running_stats_update", update_stale),
    "fold_wrong_axis": ("fold_batchnorm", fold_rows),
}


def grader_message(bug, nonce=0):
    """The first failure message the autograder gives for ``bug`` (its cases in order)."""
    name, fn = BUGGY[bug]
    ex = EXERCISES[name]
    names = {ex.functions[0]: "learner_fn"}
    for case in ex.cases:
        v = evaluate(ex, case, names, LocalExecutor({"learner_fn": fn}), nonce=nonce)
        if not v.passed:
            return v.message
    return "pass"
