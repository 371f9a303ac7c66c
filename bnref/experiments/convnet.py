"""Chapter 8: a small convolutional network on the 8x8 digits, with BN in several places.

Plain NumPy, NCHW, float64, every backward written by hand. The pieces:

- :func:`conv_forward` / :func:`conv_backward`: 3x3 convolution, stride 1, zero padding 1,
  by im2col (one matrix product);
- spatial BN through :func:`bnref.batchnorm_forward` with ``axis=1`` (statistics over N, H
  and W: one mean and one variance per channel), running statistics in PyTorch's convention;
- :func:`lrn_forward` / :func:`lrn_backward`: AlexNet's local response normalisation across
  channels;
- :func:`init_params`, :func:`forward`, :func:`backward`: the network of one
  :data:`PLACEMENTS` entry; :func:`train_convnet` trains it with SGD and
  :func:`placement_sweep` runs placements x learning rates x seeds.

The network (``C`` channels throughout, 16 by default)::

    x (N, 1, 8, 8) -> conv1 -> block1 -> avgpool 2x2 -> conv2 -> block2 -> conv3 -> block3
      -> global average pool (N, C) -> linear (N, 10) -> softmax cross-entropy

where each ``conv -> block`` is ``conv -> ReLU`` (``"none"``), ``conv -> BN -> ReLU``
(``"before"``), ``conv -> ReLU -> BN`` (``"after"``) or ``conv -> ReLU -> LRN`` (``"lrn"``,
AlexNet's order). ``"preact"`` uses the same three convolutions as a pre-activation residual
network (He et al. 2016, "Identity Mappings in Deep Residual Networks"): conv1, pool, then
``x + conv3(ReLU(BN(conv2(ReLU(BN(x))))))`` and a final BN -> ReLU.
"""
from contextlib import nullcontext

import numpy as np

from ..functional import batchnorm_backward, batchnorm_forward, batchnorm_inference

try:                                   # a dependency of scikit-learn, which bnref.data needs
    from threadpoolctl import threadpool_limits
except ImportError:                    # pragma: no cover
    threadpool_limits = None

__all__ = ["PLACEMENTS", "ALEXNET_LRN", "conv_forward", "conv_backward", "lrn_forward", "lrn_backward",
           "init_params", "forward", "backward", "accuracy", "layer_outputs", "train_convnet", "placement_sweep"]

#: The networks compared, by name.
PLACEMENTS = {
    "none": "conv → ReLU (no normalisation)",
    "before": "conv → BN → ReLU",
    "after": "conv → ReLU → BN",
    "preact": "pre-activation residual (BN → ReLU → conv)",
    "lrn": "conv → ReLU → LRN",
}

#: AlexNet's LRN constants (Krizhevsky et al. 2012, section 3.3), in the paper's form
#: ``x / (k + alpha * sum x**2) ** beta`` (no division of alpha by n).
ALEXNET_LRN = dict(n=5, k=2.0, alpha=1e-4, beta=0.75)


# ----------------------------------------------------------------------------- convolution

def _im2col(x):
    """(N, C, H, W) -> (N*H*W, 9*C): the zero-padded 3x3 patch around every pixel as one row.

    Columns are ordered (i, j, c), channels fastest: the nine shifted copies below then move
    contiguous runs of C values, several times faster than copying a transposed 6-D view."""
    N, C, H, W = x.shape
    padded = np.zeros((N, H + 2, W + 2, C))                                 # channels-last, zero border
    padded[:, 1:-1, 1:-1, :] = x.transpose(0, 2, 3, 1)                      # (N, C, H, W) -> (N, H, W, C)
    cols = np.empty((N, H, W, 3, 3, C))
    for i in range(3):
        for j in range(3):
            # patch entry (i, j) of output pixel (h, w) is input pixel (h + i - 1, w + j - 1)
            cols[:, :, :, i, j, :] = padded[:, i:i + H, j:j + W, :]
    return cols.reshape(N * H * W, 9 * C)                                   # (N*H*W, 9*C)


def _col2im(cols, shape):
    """Adjoint of :func:`_im2col`: (N*H*W, 9*C) -> (N, C, H, W), overlapping patches summed."""
    N, C, H, W = shape
    patches = cols.reshape(N, H, W, 3, 3, C)                                # (N, H, W, 3, 3, C)
    dpadded = np.zeros((N, H + 2, W + 2, C))
    for i in range(3):
        for j in range(3):
            dpadded[:, i:i + H, j:j + W, :] += patches[:, :, :, i, j, :]
    return dpadded[:, 1:-1, 1:-1, :].transpose(0, 3, 1, 2)                  # drop the border; -> (N, C, H, W)


def _w_matrix(w):
    """(C_out, C_in, 3, 3) -> (C_out, 9*C_in), columns in :func:`_im2col`'s (i, j, c) order."""
    return w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1)


def conv_forward(x, w, b):
    """3x3 convolution (cross-correlation, as in PyTorch), stride 1, zero padding 1.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, H, W)
    w : ndarray, shape (C_out, C_in, 3, 3)
    b : ndarray, shape (C_out,)

    Returns
    -------
    y : ndarray, shape (N, C_out, H, W)
    cache : tuple
        What :func:`conv_backward` needs (the im2col matrix and ``w``).

    Examples
    --------
    >>> y, _ = conv_forward(np.ones((2, 1, 8, 8)), np.ones((4, 1, 3, 3)), np.zeros(4))
    >>> y.shape, float(y[0, 0, 0, 0]), float(y[0, 0, 3, 3])   # a corner sees 4 pixels, the inside 9
    ((2, 4, 8, 8), 4.0, 9.0)
    """
    x, w, b = np.asarray(x, dtype=np.float64), np.asarray(w), np.asarray(b)
    if x.ndim != 4:
        raise ValueError(f"x must be (N, C, H, W), got shape {x.shape}")
    if w.ndim != 4 or w.shape[2:] != (3, 3) or w.shape[1] != x.shape[1]:
        raise ValueError(f"w must be (C_out, {x.shape[1]}, 3, 3) for x of shape {x.shape}, got {w.shape}")
    if b.shape != (w.shape[0],):
        raise ValueError(f"b must have shape ({w.shape[0]},), got {b.shape}")
    N, _, H, W = x.shape
    cols = _im2col(x)                                                       # (N*H*W, 9*C_in)
    y = cols @ _w_matrix(w).T + b                                           # (N*H*W, C_out)
    y = y.reshape(N, H, W, -1).transpose(0, 3, 1, 2)                        # (N, C_out, H, W)
    return np.ascontiguousarray(y), (cols, x.shape, w)


def conv_backward(dy, cache, need_dx=True):
    """Gradients of :func:`conv_forward`.

    Parameters
    ----------
    dy : ndarray, shape (N, C_out, H, W)
        Upstream gradient.
    cache : tuple
        From :func:`conv_forward`.
    need_dx : bool
        False skips ``dx`` (returned as None): the first layer's input is the data.

    Returns
    -------
    dx : ndarray, shape (N, C_in, H, W), or None
    dw : ndarray, shape (C_out, C_in, 3, 3)
    db : ndarray, shape (C_out,)

    Examples
    --------
    >>> x, w = np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3))
    >>> y, cache = conv_forward(x, w, np.zeros(1))
    >>> dx, dw, db = conv_backward(np.ones_like(y), cache)
    >>> float(db[0]), float(dw[0, 0, 1, 1]), float(dw[0, 0, 0, 0])  # centre tap sees all 16 pixels
    (16.0, 16.0, 9.0)
    """
    cols, shape, w = cache
    C_out, C_in = w.shape[:2]
    dy_rows = dy.transpose(0, 2, 3, 1).reshape(-1, C_out)                   # (N*H*W, C_out)
    dw = (dy_rows.T @ cols).reshape(C_out, 3, 3, C_in).transpose(0, 3, 1, 2)  # (C_out, 9*C_in) -> w's shape
    db = dy_rows.sum(axis=0)                                                # (C_out,): over N, H, W
    dx = _col2im(dy_rows @ _w_matrix(w), shape) if need_dx else None        # (N*H*W, 9*C_in) -> (N, C_in, H, W)
    return dx, np.ascontiguousarray(dw), db


# ----------------------------------------------------------------------------- LRN

def _window(C, n):
    """(C, C) band matrix: ``window[c, c'] = 1`` where channel ``c'`` is in the LRN window of ``c``,
    i.e. ``c - n//2 <= c' <= c + (n-1)//2`` (PyTorch's and AlexNet's window; the edges simply
    have fewer neighbours). A sum over the window is then one small matrix product."""
    offset = np.arange(C)[None, :] - np.arange(C)[:, None]                 # (C, C): c' - c
    return ((offset >= -(n // 2)) & (offset <= (n - 1) // 2)).astype(np.float64)


def lrn_forward(x, n=5, k=2.0, alpha=1e-4, beta=0.75):
    """Local response normalisation across channels, as in AlexNet (Krizhevsky et al. 2012).

    ``y[:, c] = x[:, c] / (k + alpha * sum_{c'} x[:, c']**2) ** beta``, the sum over the ``n``
    channels ``c - n//2 .. c + (n-1)//2`` (zeros beyond the edges), at every example and
    pixel separately: no batch statistics, no mean subtracted, nothing learned. ``beta`` is
    LRN's exponent here, not BN's shift.

    ``torch.nn.functional.local_response_norm(x, n, alpha, beta, k)`` divides its ``alpha``
    by ``n``: it equals ``lrn_forward(x, n, k, alpha / n, beta)``.

    Parameters
    ----------
    x : ndarray, shape (N, C, ...)
    n : int
        Number of channels in the window.
    k, alpha, beta : float
        AlexNet used k = 2, alpha = 1e-4, beta = 0.75 (:data:`ALEXNET_LRN`).

    Returns
    -------
    y : ndarray, shape of ``x``
    cache : tuple
        For :func:`lrn_backward`.

    Examples
    --------
    >>> y, _ = lrn_forward(np.ones((1, 3, 1, 1)), n=3, k=1.0, alpha=1.0, beta=1.0)
    >>> y.ravel()                  # the edge channels have one neighbour, the middle two
    array([0.33333333, 0.25      , 0.33333333])
    """
    x = np.asarray(x)
    if x.ndim < 3:
        raise ValueError(f"x must be (N, C, ...) with spatial axes, got shape {x.shape}")
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    n, N, C = int(n), x.shape[0], x.shape[1]
    window = _window(C, n)
    sq = (x * x).reshape(N, C, -1)                                          # (N, C, H*W)
    d = k + alpha * (window @ sq).reshape(x.shape)                          # (N, C, H, W): sum over the window
    scale = d ** -beta                                                      # the only power: pow is slow
    return x * scale, (x, d, scale, window, alpha, beta)


def lrn_backward(dy, cache):
    """Gradient of :func:`lrn_forward` with respect to its input.

    ``y[c] = x[c] * d[c]**-beta`` and ``d[c]`` depends on ``x[c']`` for every ``c'`` in the
    window of ``c``, so ``dx[c'] = dy[c'] * d[c']**-beta + 2 alpha x[c'] * sum_c g[c]`` with
    ``g = -beta * dy * x * d**(-beta - 1)``, the sum over the channels ``c`` whose window
    contains ``c'`` (the transposed window).

    Examples
    --------
    >>> x = np.random.default_rng(0).normal(size=(2, 6, 3, 3))
    >>> y, cache = lrn_forward(x, n=3, alpha=0.5)
    >>> dx = lrn_backward(np.ones_like(y), cache)
    >>> e = np.zeros_like(x); e[0, 2, 1, 1] = 1e-6          # central difference at one entry
    >>> fd = (lrn_forward(x + e, n=3, alpha=0.5)[0].sum() - lrn_forward(x - e, n=3, alpha=0.5)[0].sum()) / 2e-6
    >>> bool(np.isclose(dx[0, 2, 1, 1], fd))
    True
    """
    x, d, scale, window, alpha, beta = cache
    N, C = x.shape[:2]
    g = (-beta * dy * x * scale / d).reshape(N, C, -1)                      # dL/dd = dy x (-beta) d**(-beta-1)
    # d[c] = k + alpha sum_c' window[c, c'] x[c']**2: the adjoint sums over c with window transposed
    return dy * scale + 2 * alpha * x * (window.T @ g).reshape(x.shape)


# ----------------------------------------------------------------------------- the network

def _ops(placement):
    """The layer list: ("conv", name), ("bn", name), ("relu",), ("lrn",), ("pool",), ("res", ops)."""
    blocks = {"none": lambda i: [("conv", f"conv{i}"), ("relu",)],
              "before": lambda i: [("conv", f"conv{i}"), ("bn", f"bn{i}"), ("relu",)],
              "after": lambda i: [("conv", f"conv{i}"), ("relu",), ("bn", f"bn{i}")],
              "lrn": lambda i: [("conv", f"conv{i}"), ("relu",), ("lrn",)]}
    if placement in blocks:
        b = blocks[placement]
        return b(1) + [("pool",)] + b(2) + b(3)
    if placement == "preact":
        # He et al. 2016b, full pre-activation unit: x + conv3(relu(bn2(conv2(relu(bn1(x))))))
        unit = [("bn", "bn1"), ("relu",), ("conv", "conv2"), ("bn", "bn2"), ("relu",), ("conv", "conv3")]
        return [("conv", "conv1"), ("pool",), ("res", unit), ("bn", "bn3"), ("relu",)]
    raise ValueError(f"placement must be one of {sorted(PLACEMENTS)}, got {placement!r}")


def _label(op):
    return op[1] if op[0] in ("conv", "bn") else op[0]


def layer_outputs(params, state, placement, X, lrn=None, train=False):
    """The output of every layer, in order: a list of ``(label, array)``.

    Labels are ``"conv1"``, ``"bn1"``, ``"relu"``, ``"lrn"``, ``"pool"``, ``"res"`` (the sum
    of skip and unit); what a chapter plots, e.g. the input of each ReLU. ``train=True``
    normalises with the statistics of ``X`` itself (``state`` is left as it was), False with
    the running statistics.

    Examples
    --------
    >>> params, state = init_params("before", channels=4)
    >>> [label for label, _ in layer_outputs(params, state, "before", np.zeros((2, 64)))][:4]
    ['conv1', 'bn1', 'relu', 'pool']
    """
    outputs = []
    _run(_ops(placement), _images(X), params, dict(state), train, 0.1, dict(ALEXNET_LRN, **(lrn or {})), [], outputs)
    return outputs


def init_params(placement, seed=0, channels=16):
    """He-initialised convolutions, a linear head, and BN's gamma = 1, beta = 0.

    Every placement has the same three convolutions (1 -> C, C -> C, C -> C) and head, drawn
    from the same ``seed`` in the same order, so all placements start from the same weights.

    Returns
    -------
    params : dict of ndarray
        ``conv1.w`` (C, 1, 3, 3), ``conv1.b`` (C,), ..., ``bn1.gamma``, ``bn1.beta`` (C,),
        ``head.w`` (C, 10), ``head.b`` (10,).
    state : dict of ndarray
        ``bn1.running_mean`` (zeros), ``bn1.running_var`` (ones), ...: PyTorch's start.

    Examples
    --------
    >>> params, state = init_params("before", channels=8)
    >>> params["conv2.w"].shape, params["bn2.gamma"].shape, state["bn2.running_var"][:3]
    ((8, 8, 3, 3), (8,), array([1., 1., 1.]))
    """
    ops = _ops(placement)
    C = int(channels)
    rng = np.random.default_rng(seed)
    params, state = {}, {}
    for name, c_in in (("conv1", 1), ("conv2", C), ("conv3", C)):
        # He et al. 2015: variance 2 / fan_in keeps the scale of ReLU activations through depth
        params[name + ".w"] = rng.normal(0.0, np.sqrt(2.0 / (9 * c_in)), size=(C, c_in, 3, 3))
        params[name + ".b"] = np.zeros(C)
    params["head.w"] = rng.normal(0.0, np.sqrt(1.0 / C), size=(C, 10))
    params["head.b"] = np.zeros(10)
    for op in ops + [o for op in ops if op[0] == "res" for o in op[1]]:
        if op[0] == "bn":
            params[op[1] + ".gamma"], params[op[1] + ".beta"] = np.ones(C), np.zeros(C)
            state[op[1] + ".running_mean"], state[op[1] + ".running_var"] = np.zeros(C), np.ones(C)
    return params, state


def _run(ops, x, params, state, train, momentum, lrn, caches, outputs=None):
    """Forward through ``ops``, appending one cache per op to ``caches`` (and, if given, a
    ``(label, output)`` pair per op to ``outputs``)."""
    for op in ops:
        kind, c = op[0], None
        if kind == "conv":
            x, c = conv_forward(x, params[op[1] + ".w"], params[op[1] + ".b"])
        elif kind == "bn":
            gamma, beta = params[op[1] + ".gamma"], params[op[1] + ".beta"]
            rm, rv = op[1] + ".running_mean", op[1] + ".running_var"
            if train:
                x, c = batchnorm_forward(x, gamma, beta, axis=1)            # statistics over N, H, W
                # PyTorch's update, with the unbiased variance of the m = N*H*W values per channel
                m = c.m
                state[rm] = (1 - momentum) * state[rm] + momentum * c.mean
                state[rv] = (1 - momentum) * state[rv] + momentum * c.var * m / (m - 1)
            else:
                x = batchnorm_inference(x, gamma, beta, state[rm], state[rv], axis=1)
        elif kind == "relu":
            c = x > 0
            x = x * c
        elif kind == "lrn":
            x, c = lrn_forward(x, **lrn)
        elif kind == "pool":
            # 2x2 average pool, as four strided slices: a mean over axes of a 6-D view is slow
            x = (x[:, :, 0::2, 0::2] + x[:, :, 0::2, 1::2] + x[:, :, 1::2, 0::2] + x[:, :, 1::2, 1::2]) / 4  # (N, C, H/2, W/2)
        elif kind == "res":
            c = []
            x = x + _run(op[1], x, params, state, train, momentum, lrn, c, outputs)  # identity skip
        caches.append(c)
        if outputs is not None:
            outputs.append((_label(op), x))
    return x


def forward(params, x, y=None, placement="before", state=None, train=True, momentum=0.1, lrn=None):
    """Logits, and the mean softmax cross-entropy if labels ``y`` are given.

    Parameters
    ----------
    params, state : dict
        From :func:`init_params`. In training mode ``state``'s running statistics are
        replaced by their updates (``new = (1 - momentum) * old + momentum * batch``); in eval
        mode they normalise. ``state`` may be None for placements without BN.
    x : ndarray, shape (N, 1, 8, 8)
    y : ndarray of int, shape (N,), optional
    placement : str
        A key of :data:`PLACEMENTS`.
    train : bool
        Batch statistics (True) or running statistics (False) in every BN.
    lrn : dict, optional
        ``n, k, alpha, beta`` of :func:`lrn_forward`; default :data:`ALEXNET_LRN`.

    Returns
    -------
    logits : ndarray, shape (N, 10)
    loss : float or None
    cache : tuple
        For :func:`backward`.

    Examples
    --------
    >>> params, state = init_params("after", channels=4)
    >>> logits, loss, _ = forward(params, np.full((4, 1, 8, 8), 0.5), np.arange(4), "after", state)
    >>> logits.shape, bool(np.isfinite(loss))
    ((4, 10), True)
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 4 or x.shape[1:] != (1, 8, 8):
        raise ValueError(f"x must be (N, 1, 8, 8) images, got shape {x.shape}")
    ops = _ops(placement)
    if state is None:
        if any(op[0] in ("bn", "res") for op in ops):
            raise ValueError(f"placement {placement!r} has BN: pass its state (running statistics)")
        state = {}
    caches = []
    h = _run(ops, x, params, state, train, momentum, dict(ALEXNET_LRN, **(lrn or {})), caches)  # (N, C, 4, 4)
    pooled = h.reshape(h.shape[0], h.shape[1], -1).mean(axis=2)             # (N, C): global average pool over H, W
    logits = pooled @ params["head.w"] + params["head.b"]                   # (N, 10)
    loss = probs = None
    if y is not None:
        y = np.asarray(y)
        if y.shape != (x.shape[0],):
            raise ValueError(f"y must have shape ({x.shape[0]},), got {y.shape}")
        z = logits - logits.max(axis=1, keepdims=True)                      # shift: exp cannot overflow
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))             # (N, 10) log-softmax
        loss = float(-logp[np.arange(len(y)), y].mean())
        probs = np.exp(logp)
    return logits, loss, (ops, caches, h.shape, pooled, probs, y, train)


def _back(ops, caches, dx, params, grads, input_grad):
    """Backward through ``ops`` (reverse order), filling ``grads``."""
    for op, c in zip(reversed(ops), reversed(caches)):
        kind = op[0]
        if kind == "conv":
            # conv1's input is the data: its dx is only wanted when asked for (input_grad)
            need = op[1] != "conv1" or input_grad
            dx, grads[op[1] + ".w"], grads[op[1] + ".b"] = conv_backward(dx, c, need_dx=need)
        elif kind == "bn":
            dx, grads[op[1] + ".gamma"], grads[op[1] + ".beta"] = batchnorm_backward(dx, c)
        elif kind == "relu":
            dx = dx * c
        elif kind == "lrn":
            dx = lrn_backward(dx, c)
        elif kind == "pool":
            # each input pixel contributed 1/4 to one output: spread dy back evenly
            dx = np.repeat(np.repeat(dx, 2, axis=2), 2, axis=3) / 4         # (N, C, H, W)
        elif kind == "res":
            dx = dx + _back(op[1], c, dx, params, grads, input_grad)       # skip + unit
    return dx


def backward(params, cache, input_grad=True):
    """Gradients of the loss of :func:`forward` (training mode, labels given).

    Parameters
    ----------
    params : dict
    cache : tuple
        From :func:`forward`.
    input_grad : bool
        False skips the gradient with respect to the images (training does not need it).

    Returns
    -------
    grads : dict of ndarray
        One entry per parameter, same shapes.
    dx : ndarray, shape (N, 1, 8, 8), or None
        Gradient with respect to the input images.

    Examples
    --------
    >>> params, state = init_params("before", channels=4)
    >>> x, y = np.random.default_rng(0).random((8, 1, 8, 8)), np.arange(8)
    >>> grads, dx = backward(params, forward(params, x, y, "before", state)[2])
    >>> sorted(grads) == sorted(params), float(np.abs(grads["conv1.b"]).max()) < 1e-12  # BN cancels the bias
    (True, True)
    """
    ops, caches, h_shape, pooled, probs, y, train = cache
    if probs is None or not train:
        raise ValueError("backward needs a training-mode forward called with labels y")
    N = len(y)
    dlogits = probs.copy()
    dlogits[np.arange(N), y] -= 1
    dlogits /= N                                                            # (N, 10): d mean loss / d logits
    grads = {"head.w": pooled.T @ dlogits, "head.b": dlogits.sum(axis=0)}
    dpooled = dlogits @ params["head.w"].T                                  # (N, C)
    dh = np.broadcast_to(dpooled[:, :, None, None] / (h_shape[2] * h_shape[3]), h_shape)  # (N, C, H, W)
    dx = _back(ops, caches, np.ascontiguousarray(dh), params, grads, input_grad)
    return grads, dx


# ----------------------------------------------------------------------------- training

def _images(X):
    return np.asarray(X, dtype=np.float64).reshape(-1, 1, 8, 8)            # (N, 64) -> (N, 1, 8, 8)


def accuracy(params, state, placement, X, y, lrn=None):
    """Accuracy in eval mode (running statistics in every BN) on images ``X`` (N, 64) or (N, 1, 8, 8)."""
    logits, _, _ = forward(params, _images(X), None, placement, state, train=False, lrn=lrn)
    return float(np.mean(logits.argmax(axis=1) == np.asarray(y)))


def _one_thread():
    # The matrices are small (4096 x 144 at most): BLAS threads cost more than they give, and
    # on a shared 2-core machine they oversubscribe it (measured: backward 20x slower).
    return threadpool_limits(1) if threadpool_limits is not None else nullcontext()


def train_convnet(placement, data, lr=0.1, steps=300, batch_size=64, seed=0, channels=16,
                  eval_every=25, lrn=None, momentum=0.1, snapshot_steps=()):
    """Train one network with plain SGD (no weight decay, no momentum).

    The initial weights come from ``seed`` and the batch order from ``seed + 1000``: every
    placement with the same seed starts from the same weights and sees the same batches.

    Parameters
    ----------
    placement : str
        A key of :data:`PLACEMENTS`.
    data : tuple
        ``X_train, y_train, X_test, y_test`` from :func:`bnref.data.load_digits`.
    lr, steps, batch_size, seed, channels : as named
    eval_every : int
        Test accuracy (eval mode) is measured every this many steps and at the end.
    lrn : dict, optional
        LRN constants (placement ``"lrn"``); default :data:`ALEXNET_LRN`.
    momentum : float
        Of the running statistics (PyTorch's convention).
    snapshot_steps : sequence of int
        Keep a copy of ``params`` and ``state`` before these steps (``steps`` for the end).

    Returns
    -------
    dict
        ``loss`` (training loss at every step, NaN after a divergence), ``eval_steps`` and
        ``test_acc_curve``, ``test_acc`` (final, eval mode; NaN if the loss diverged),
        ``params``, ``state`` (final), ``snapshots`` (``{step: (params, state)}``).

    Examples
    --------
    >>> from bnref.data import load_digits
    >>> run = train_convnet("before", load_digits(), steps=3, channels=4, eval_every=2)
    >>> run["loss"].shape, run["eval_steps"].tolist()
    ((3,), [0, 2, 3])
    """
    X_train, y_train, X_test, y_test = data
    params, state = init_params(placement, seed, channels)
    order = np.random.default_rng(seed + 1000)
    images, y_train = _images(X_train), np.asarray(y_train)
    losses = np.full(steps, np.nan)
    eval_steps, curve, snapshots = [], [], {}
    diverged = False

    def snapshot(step):
        if step in snapshot_steps:
            snapshots[step] = ({k: v.copy() for k, v in params.items()}, {k: v.copy() for k, v in state.items()})

    with _one_thread():
        for step in range(steps):
            snapshot(step)
            if step % eval_every == 0:
                eval_steps.append(step)
                curve.append(accuracy(params, state, placement, X_test, y_test, lrn))
            idx = order.choice(len(images), batch_size, replace=False)
            _, loss, cache = forward(params, images[idx], y_train[idx], placement, state,
                                     momentum=momentum, lrn=lrn)
            if not np.isfinite(loss):
                diverged = True
                break
            losses[step] = loss
            grads, _ = backward(params, cache, input_grad=False)
            for name, g in grads.items():
                params[name] -= lr * g
        snapshot(steps)
        test_acc = np.nan if diverged else accuracy(params, state, placement, X_test, y_test, lrn)
    eval_steps.append(steps)
    curve.append(test_acc)
    return {"loss": losses, "eval_steps": np.array(eval_steps), "test_acc_curve": np.array(curve),
            "test_acc": test_acc, "params": params, "state": state,
            "snapshots": snapshots}


def placement_sweep(data, placements=tuple(PLACEMENTS), lrs=(0.1,), seeds=(0, 1, 2), **kwargs):
    """Every placement x learning rate x seed; returns ``{(placement, lr, seed): run}``.

    ``run`` is the dict of :func:`train_convnet`; ``kwargs`` go to it.

    Examples
    --------
    >>> from bnref.data import load_digits
    >>> runs = placement_sweep(load_digits(), ["none", "before"], seeds=[0], steps=2, channels=4)
    >>> sorted(runs)
    [('before', 0.1, 0), ('none', 0.1, 0)]
    """
    return {(p, lr, s): train_convnet(p, data, lr=lr, seed=s, **kwargs)
            for p in placements for lr in lrs for s in seeds}
