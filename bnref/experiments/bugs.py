"""The common BN implementation mistakes, each as a buggy student function beside the measured effect.

Used by the book's bug gallery. ``BUGGY`` maps each bug to ``(exercise, function)``: the
autograder exercise that checks it and a learner's function with exactly that mistake;
:func:`grader_message` runs the real grading code on it (in-process, as the learner-visible
checks do) and returns the message the learner sees.

The rest measures each mistake on the chapter-5 digits network (:func:`train_digits`,
:func:`eval_mode_forgotten`, :func:`fold_network`, ...), and gives ch05's d2l-convention
section d2l.ai's ``batch_norm``, whose mode follows ``torch.is_grad_enabled()``
(:func:`d2l_batch_norm`, :func:`d2l_forward`, :func:`input_gradient`).

Example
-------
>>> from bnref.experiments import bugs
>>> "momentum" in bugs.grader_message("flipped_momentum")
True
"""
import numpy as np

import bnref

__all__ = ["BUGGY", "grader_message", "forward_with", "eval_mode_forgotten", "eval_logits",
           "BesselBatchNorm", "train_digits", "population_statistics", "running_stats_error",
           "fold_network", "fold_right", "relative_error", "d2l_batch_norm", "d2l_forward",
           "input_gradient", "cosine"]  # reached as bnref.experiments.bugs.<name>

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


# --- measuring each mistake on the digits network ----------------------------------------
# The gallery trains the chapter-5 network (64 -> 32 -> 32 -> 10, BN before each ReLU) once
# with each mistake and once without, and measures the difference.
SIZES = [64, 32, 32, 10]


def forward_with(net, X, norm):
    """Logits of ``net`` on ``X`` with every BN layer replaced by ``norm(l, z) -> z_normalised``.

    ``z`` is the hidden layer's pre-activation ``(N, H)``; the weights are ``net``'s. Nothing
    in ``net`` changes.
    """
    p = net.params
    a = X
    for l in range(net.n_hidden):
        a = np.maximum(norm(l, a @ p[f"W{l}"].T), 0.0)          # ReLU networks only
    L = net.n_hidden
    return a @ p[f"W{L}"].T + p[f"b{L}"]


def eval_mode_forgotten(net, X, y, batch_size):
    """``(accuracy, logits)`` with BN normalising each test batch of ``batch_size`` by its own
    statistics (:func:`inference_batch_stats`, the learner's eval function with the mistake).

    The last incomplete batch is kept (it is a batch too). A batch of one normalises every
    value to 0, so every example gets the same answer.
    """
    p = net.params

    def norm(l, z):
        bn = net.bn[l]
        return inference_batch_stats(z, p[f"gamma{l}"], p[f"beta{l}"], bn.running_mean, bn.running_var,
                                     bn.eps)

    logits = np.concatenate([forward_with(net, X[i:i + batch_size], norm)
                             for i in range(0, len(X), batch_size)])
    return float((logits.argmax(1) == y).mean()), logits


def eval_logits(net, X):
    """The right eval-mode logits (running statistics), as :func:`forward_with` computes them."""
    p = net.params

    def norm(l, z):
        bn = net.bn[l]
        return bnref.batchnorm_inference(z, p[f"gamma{l}"], p[f"beta{l}"], bn.running_mean,
                                         bn.running_var, bn.eps)

    return forward_with(net, X, norm)


class BesselBatchNorm(bnref.BatchNorm):
    """``bnref.BatchNorm`` whose training forward normalises with the unbiased variance.

    Exactly :func:`forward_bessel` in training mode (with its true gradient: the mistake is
    ``gamma * sqrt((m - 1) / m) * x_hat`` with ``eps * (m - 1) / m``); the running statistics
    and eval mode are right.
    """

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        m = x.shape[0]
        self._c = np.sqrt((m - 1) / m)
        g, e = self.gamma, self.eps
        self.gamma, self.eps = g * self._c, e * (m - 1) / m
        try:
            return super().forward(x)
        finally:
            self.gamma, self.eps = g, e

    def backward(self, dy):
        dx = super().backward(dy)
        if self._cache[0] == "train":
            self.dgamma = self.dgamma * self._c
        return dx


def train_digits(data, bug=None, batch_size=64, steps=400, lr=0.1, seed=0):
    """The chapter-5 digits network trained with one mistake (or none); returns ``(net, extra)``.

    ``bug``: None, ``"bessel"`` (unbiased variance in the training forward),
    ``"flipped_momentum"`` (PyTorch momentum 0.1 applied as the weight of the old value, i.e.
    0.9 on the new batch), ``"stale_buffers"`` (running statistics never updated) or
    ``"wrong_axis"`` (statistics over each example's features: LayerNorm in disguise;
    ``extra`` then holds the running statistics a BN layer would have kept of the same
    pre-activations, ``[(running_mean, running_var), ...]``). Otherwise ``extra`` is None.
    """
    from ..mlp import MLP, train

    if bug == "wrong_axis":
        net = MLP(SIZES, activation="relu", norm="layer", seed=seed)
        stats = [(np.zeros(H), np.ones(H)) for H in SIZES[1:-1]]

        def track(step, net):                # net.preacts: this batch's pre-activations
            for l, z in enumerate(net.preacts):
                stats[l] = bnref.running_stats_update(*stats[l], z, momentum=0.1)

        train(net, data, steps=steps, batch_size=batch_size, lr=lr, seed=seed, callback=track)
        return net, stats
    momentum = {None: 0.1, "bessel": 0.1, "flipped_momentum": 0.9, "stale_buffers": 0.0}[bug]
    net = MLP(SIZES, activation="relu", norm="batch", seed=seed, momentum=momentum)
    if bug == "bessel":
        net.bn = [BesselBatchNorm(H) for H in SIZES[1:-1]]
    train(net, data, steps=steps, batch_size=batch_size, lr=lr, seed=seed)
    return net.eval(), None


def population_statistics(net, X):
    """Per hidden layer, the mean and (biased) variance of BN's input over ``X``, the weights fixed."""
    p = net.params
    out = []

    def norm(l, z):
        out.append((z.mean(axis=0), z.var(axis=0)))
        bn = net.bn[l]
        return bnref.batchnorm_inference(z, p[f"gamma{l}"], p[f"beta{l}"], bn.running_mean,
                                         bn.running_var, bn.eps)

    forward_with(net, X, norm)
    return out


def running_stats_error(net, X):
    """Mean over units of |running_mean - mean| / std and |running_var / var - 1| (first BN layer).

    ``mean`` and ``var`` are the population statistics of the layer's input over ``X`` (the
    training set) with the final weights: what the running estimates should have converged to.
    """
    mean, var = population_statistics(net, X)[0]
    bn = net.bn[0]
    return (float(np.mean(np.abs(bn.running_mean - mean) / np.sqrt(var))),
            float(np.mean(np.abs(bn.running_var / var - 1))))


def fold_network(net, fold_hidden):
    """Logit function of ``net`` with its BN layers folded by ``fold_hidden[l]`` (exercise layout).

    ``fold_hidden[l](W, b, gamma, beta, running_mean, running_var)`` takes ``W`` as ``(in, out)``
    (the exercise's ``z = x @ W + b``) and returns ``(W_folded, b_folded)``.
    """
    p = net.params
    layers = []
    for l, bn in enumerate(net.bn):
        W_f, b_f = fold_hidden[l](p[f"W{l}"].T, None, p[f"gamma{l}"], p[f"beta{l}"], bn.running_mean,
                                  bn.running_var)
        layers.append((W_f, b_f))
    L = net.n_hidden

    def logits(X):
        a = X
        for W_f, b_f in layers:
            a = np.maximum(a @ W_f + b_f, 0.0)
        return a @ p[f"W{L}"].T + p[f"b{L}"]

    return logits


def fold_right(W, b, gamma, beta, running_mean, running_var, eps=1e-5):
    """The right fold in the exercise's layout (W of shape (D, H), ``z = x @ W + b``)."""
    W_f, b_f = bnref.fold_linear(W.T, b, gamma, beta, running_mean, running_var, eps=eps)
    return W_f.T, b_f


def relative_error(got, ref):
    """RMS of ``got - ref`` over RMS of ``ref``."""
    return float(np.sqrt(np.mean((got - ref) ** 2) / np.mean(ref ** 2)))


# --- d2l.ai's convention: the mode chosen by whether gradients are enabled ------------------
def d2l_batch_norm(X, gamma, beta, moving_mean, moving_var, eps, momentum, grad_enabled):
    """d2l.ai's ``batch_norm`` (2-D input) in NumPy, ``torch.is_grad_enabled()`` as a flag.

    Returns ``(Y, moving_mean, moving_var)``. With gradients off it normalises with the moving
    averages; with gradients on, with the batch's (biased) statistics, and it updates the
    moving averages with ``momentum`` on the OLD value (0.9 in d2l's ``BatchNorm`` layer).
    """
    if not grad_enabled:                            # "prediction mode"
        X_hat = (X - moving_mean) / np.sqrt(moving_var + eps)
    else:                                           # "training mode"
        mean = X.mean(axis=0)
        var = ((X - mean) ** 2).mean(axis=0)        # biased
        X_hat = (X - mean) / np.sqrt(var + eps)
        moving_mean = momentum * moving_mean + (1.0 - momentum) * mean
        moving_var = momentum * moving_var + (1.0 - momentum) * var
    Y = gamma * X_hat + beta
    return Y, moving_mean, moving_var


def d2l_forward(net, X, stats, grad_enabled, momentum=0.9, eps=1e-5):
    """``(logits, new_stats)`` of ``net``'s weights with d2l's BN layers; ``stats``: ``[(mean, var)]``
    per BN layer (d2l's moving averages), not changed in place."""
    p = net.params
    new = list(stats)

    def norm(l, z):
        y, new[l] = (lambda Y, m, v: (Y, (m, v)))(*d2l_batch_norm(
            z, p[f"gamma{l}"], p[f"beta{l}"], *stats[l], eps, momentum, grad_enabled))
        return y

    return forward_with(net, X, norm), new


def input_gradient(net, X, y, batch_statistics):
    """d(mean cross-entropy)/dX, ``(N, 64)``: through BN with the batch's statistics (what
    autograd gives in a training-mode forward) or with the running statistics (eval mode).

    Nothing in ``net`` changes (the running statistics included).
    """
    p = net.params
    if batch_statistics:
        net.loss_and_grads(X, y, update_running_stats=False)
        return net.grad_preacts[0] @ p["W0"]
    # eval mode: BN is the fixed affine map scale * z + shift, so backprop is plain
    acts, scales = [], []
    a = X
    for l, bn in enumerate(net.bn):
        scale = p[f"gamma{l}"] / np.sqrt(bn.running_var + bn.eps)
        a = np.maximum(bnref.batchnorm_inference(a @ p[f"W{l}"].T, p[f"gamma{l}"], p[f"beta{l}"],
                                                 bn.running_mean, bn.running_var, bn.eps), 0.0)
        acts.append(a)
        scales.append(scale)
    L = net.n_hidden
    logits = a @ p[f"W{L}"].T + p[f"b{L}"]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    d = e / e.sum(axis=1, keepdims=True)
    d[np.arange(len(y)), y] -= 1
    d /= len(y)
    da = d @ p[f"W{L}"]
    for l in reversed(range(L)):
        dz = da * (acts[l] > 0) * scales[l]
        da = dz @ p[f"W{l}"]
    return da


def cosine(a, b):
    """Per-row cosine similarity of two arrays of shape (N, D)."""
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
