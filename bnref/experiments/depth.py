"""Chapter 6: deep plain BN networks at initialisation (gradients and activation scales).

- :func:`deep_mlp`: a plain ``Linear -> [BN] -> activation`` network of any depth, its
  weights a multiple (``gain``) of the standard initialisation;
- :func:`init_gradient_norms`: the gradient norm of every hidden layer's weights at
  initialisation, on one digits batch; :func:`growth_per_layer` turns it into a per-layer
  growth factor (Yang et al. 2019 predict ``sqrt(pi / (pi - 1))`` for ReLU with BN:
  :data:`YANG_RELU_BN_GROWTH`);
- :func:`activation_scales`: the standard deviation of each layer's pre-activation before
  and after BN, for a too-small or too-large initialisation.
"""
import numpy as np

from ..mlp import MLP
from ._util import _norm, _np

__all__ = ["YANG_RELU_BN_GROWTH", "deep_mlp", "init_gradient_norms", "growth_per_layer",
           "gradient_profiles", "activation_scales"]

#: Yang et al. (2019): with BN before ReLU, the squared gradient norm of the weights grows by
#: pi / (pi - 1) per layer towards the input (wide network, large batch), the norm by its root.
YANG_RELU_BN_GROWTH = float(np.sqrt(np.pi / (np.pi - 1)))


def deep_mlp(depth, width=64, activation="relu", norm="batch", gain=1.0, seed=0, n_in=64,
             n_classes=10, xp=np):
    """A plain MLP with ``depth`` hidden layers of ``width`` units, weights ``gain`` times the standard init.

    The standard init is that of :class:`bnref.mlp.MLP`: weights of standard deviation
    ``sqrt(2 / fan_in)`` for ReLU (He) and ``sqrt(1 / fan_in)`` otherwise (for tanh, Xavier's
    ``sqrt(2 / (fan_in + fan_out))`` when fan_in = fan_out). ``gain`` multiplies every
    hidden layer's weights (not the classifier's).

    Parameters
    ----------
    depth : int
        Number of hidden layers (each ``Linear -> [BN] -> activation``).
    width : int, default 64
    activation : {"relu", "tanh", "sigmoid", "linear"}
    norm : {"batch", None}
    gain : float, default 1.0
    seed : int
    n_in, n_classes : int
        64 pixels and 10 classes for the digits.
    xp : module, default numpy

    Returns
    -------
    MLP

    Examples
    --------
    >>> net = deep_mlp(3, width=8, gain=0.5)
    >>> net.sizes
    [64, 8, 8, 8, 10]
    >>> round(float(net.params["W1"].std() / np.sqrt(2 / 8)), 1)     # half of He's std
    0.5
    """
    net = MLP([n_in] + [width] * depth + [n_classes], activation=activation, norm=norm,
              seed=seed, xp=xp)
    for l in range(depth):
        net.params[f"W{l}"] *= gain             # in place: W's column-major layout stays
    return net


def _batch(data, batch_size, seed):
    """A random training batch (X, y) of ``batch_size`` examples, drawn with ``seed``."""
    X_train, y_train = data[0], data[1]
    idx = np.random.default_rng(seed).choice(len(X_train), batch_size, replace=False)
    return X_train[idx], y_train[idx]


def init_gradient_norms(data, depth, width=64, activation="relu", norm="batch", batch_size=128,
                        gain=1.0, seed=0, xp=np):
    """The gradient norm ``||dL/dW_l||`` of every hidden layer at initialisation, on one batch.

    One forward and backward pass in training mode (BN with batch statistics) of
    :func:`deep_mlp` on ``batch_size`` training examples drawn with ``seed`` (which also
    seeds the weights); the network is not updated.

    Returns
    -------
    ndarray (depth,)
        Frobenius norm of the gradient of the mean cross-entropy with respect to the weight
        matrix of hidden layer 1, 2, ..., ``depth`` (the Linear before each BN).

    Examples
    --------
    >>> from bnref.data import load_digits
    >>> g = init_gradient_norms(load_digits(), depth=20, norm="batch")
    >>> g.shape, bool(g[1] > 10 * g[-1])                  # larger towards the input
    ((20,), True)
    """
    net = deep_mlp(depth, width, activation, norm, gain, seed, xp=xp)
    X, y = _batch(data, batch_size, seed)
    _, grads = net.loss_and_grads(xp.asarray(X), xp.asarray(y), update_running_stats=False)
    return np.array([_norm(grads[f"W{l}"], xp) for l in range(depth)])


def growth_per_layer(grad_norms, skip_first=True):
    """Growth factor of the gradient norm per layer, going from the output towards the input.

    ``exp(-slope)`` of the least-squares line through ``log ||dW_l||`` against ``l``: above 1
    the gradient explodes towards the input, below 1 it vanishes.

    Parameters
    ----------
    grad_norms : array (depth,)
        As :func:`init_gradient_norms` returns it, layer 1 first.
    skip_first : bool, default True
        Leave layer 1 out of the fit: its input is the raw pixels, not a hidden layer's
        output, so its gradient has a different scale.

    Returns
    -------
    float

    Examples
    --------
    >>> round(growth_per_layer(3.0 * 1.2 ** -np.arange(10.0)), 6)
    1.2
    """
    g = np.log(np.asarray(grad_norms, dtype=float))
    l = np.arange(len(g))
    if skip_first:
        g, l = g[1:], l[1:]
    slope = np.polyfit(l, g, 1)[0]
    return float(np.exp(-slope))


def gradient_profiles(data, depths, activations=("relu", "tanh"), norms=(None, "batch"),
                      seeds=(0, 1, 2), **kwargs):
    """:func:`init_gradient_norms` for every depth, activation and norm, averaged over seeds.

    The average over seeds is geometric (the mean of the logarithms), as the quantities are
    compared on a log scale.

    Parameters
    ----------
    data : tuple
    depths : sequence of int
    activations, norms, seeds : sequences
    **kwargs
        ``width``, ``batch_size``, ``gain``: see :func:`init_gradient_norms`.

    Returns
    -------
    dict
        ``{(activation, norm, depth): ndarray (depth,)}`` of gradient norms, layer 1 first.

    Examples
    --------
    >>> from bnref.data import load_digits
    >>> r = gradient_profiles(load_digits(), [3], activations=("relu",), seeds=(0,), width=8)
    >>> sorted(r, key=str), r["relu", "batch", 3].shape
    ([('relu', 'batch', 3), ('relu', None, 3)], (3,))
    """
    out = {}
    for act in activations:
        for norm in norms:
            for depth in depths:
                logs = [np.log(init_gradient_norms(data, depth, activation=act, norm=norm,
                                                   seed=s, **kwargs)) for s in seeds]
                out[act, norm, depth] = np.exp(np.mean(logs, axis=0))
    return out


def activation_scales(data, depth, gain, activation="relu", norm=None, width=64, batch_size=128,
                      seed=0, xp=np):
    """Standard deviation of each hidden layer's pre-activation, before and after BN, at init.

    One training-mode forward pass of :func:`deep_mlp` (weights ``gain`` times the standard
    init) on a batch of digits. The scale of a layer is the root mean square over its units
    of each unit's standard deviation over the batch, ``sqrt(mean_j var_j)``: what BN divides
    by, unit by unit.

    Returns
    -------
    dict
        ``preact`` (depth,): the scale of ``z = W a`` (what enters BN, or the activation
        without BN); ``normed`` (depth,): the scale of what enters the activation (after BN,
        ``gamma`` = 1 at init; the same as ``preact`` without BN).

    Examples
    --------
    >>> from bnref.data import load_digits
    >>> s = activation_scales(load_digits(), depth=10, gain=0.5, norm=None)
    >>> bool(s["preact"][-1] < 0.01 * s["preact"][0])          # shrinks layer after layer
    True
    >>> s = activation_scales(load_digits(), depth=10, gain=0.5, norm="batch")
    >>> np.round(s["normed"], 2).tolist() == [1.0] * 10         # reset to gamma = 1
    True
    """
    net = deep_mlp(depth, width, activation, norm, gain, seed, xp=xp)
    X, _ = _batch(data, batch_size, seed)
    net.train(True)
    net.forward(xp.asarray(X))

    def scale(z):
        return float(np.sqrt(_np(z).var(axis=0).mean()))     # var over the batch, mean over units

    return dict(preact=np.array([scale(z) for z in net.preacts]),
                normed=np.array([scale(z) for z in net.normed]))
