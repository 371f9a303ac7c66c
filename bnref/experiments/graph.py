r"""Chapter 4: BN's computational graph, and its backward pass one node at a time.

:data:`BN_STAGES` lists the nodes (the book draws the graph and its table from it);
:func:`staged_backward` runs the forward pass node by node and then walks the graph back,
recording the upstream gradient at every node and what each node sends to each input.

Node names follow the vocabulary of :mod:`bnref` (``mean``, ``var``, ``inv_std``, ``x_hat``),
for one channel of ``m`` values:

- ``mean``: the batch mean, :math:`\mu` (one per channel);
- ``x_centered``: :math:`x_\mu = x - \mu`;
- ``sq``: :math:`s = x_\mu^2`;
- ``var``: the biased batch variance, :math:`\sigma^2` (one per channel);
- ``std``: :math:`\tilde\sigma = \sqrt{\sigma^2 + \epsilon}` (one per channel);
- ``inv_std``: :math:`1/\tilde\sigma` (one per channel);
- ``x_hat``: :math:`\hat x = x_\mu/\tilde\sigma`;
- ``gamma_x_hat``: :math:`\tilde y = \gamma\hat x`;
- ``y``: :math:`y = \tilde y + \beta`.
"""
import numpy as np

__all__ = ["BN_STAGES", "staged_backward"]

#: The nodes of BN's computational graph in forward order: ``(name, inputs, forward formula,
#: local derivative)``. The formulas are LaTeX; ``m`` is the number of values per channel,
#: :math:`\tilde\sigma = \sqrt{\sigma^2 + \epsilon}` (so :math:`\sigma` alone is never
#: the square root, as in chapter 4's notation table) and :math:`\tilde y = \gamma\hat x`.
BN_STAGES = [
    ("mean", ("x",), r"\mu = \frac{1}{m}\sum_i x_i",
     r"\partial\mu/\partial x_i = 1/m"),
    ("x_centered", ("x", "mean"), r"x_\mu = x - \mu",
     r"\partial x_\mu/\partial x = 1,\ \partial x_\mu/\partial\mu = -1"),
    ("sq", ("x_centered",), r"s = x_\mu^2",
     r"\partial s/\partial x_\mu = 2x_\mu"),
    ("var", ("sq",), r"\sigma^2 = \frac{1}{m}\sum_i s_i",
     r"\partial\sigma^2/\partial s_i = 1/m"),
    ("std", ("var",), r"\tilde\sigma = \sqrt{\sigma^2 + \epsilon}",
     r"\partial\tilde\sigma/\partial\sigma^2 = \frac{1}{2\tilde\sigma}"),
    ("inv_std", ("std",), r"\tilde\sigma^{-1} = 1/\tilde\sigma",
     r"\partial\tilde\sigma^{-1}/\partial\tilde\sigma = -1/\tilde\sigma^2"),
    ("x_hat", ("x_centered", "inv_std"), r"\hat x = x_\mu\,\tilde\sigma^{-1}",
     r"\partial\hat x/\partial x_\mu = \tilde\sigma^{-1},\ \partial\hat x/\partial\tilde\sigma^{-1} = x_\mu"),
    ("gamma_x_hat", ("gamma", "x_hat"), r"\tilde y = \gamma\,\hat x",
     r"\partial\tilde y/\partial\hat x = \gamma,\ \partial\tilde y/\partial\gamma = \hat x"),
    ("y", ("gamma_x_hat", "beta"), r"y = \tilde y + \beta",
     r"\partial y/\partial\tilde y = 1,\ \partial y/\partial\beta = 1"),
]


def staged_backward(x, gamma, beta, dy, eps=1e-5):
    """BN forward and backward for ``x`` (N, D), one node of the graph at a time.

    The loss is ``sum(y * dy)``, so ``dy`` is the upstream gradient that arrives at ``y``.
    NumPy only: this is for reading, not speed (``bnref.batchnorm_backward`` is the fast,
    compact version and gives the same ``dx``, ``dgamma`` and ``dbeta``).

    Parameters
    ----------
    x, dy : ndarray (N, D)
    gamma, beta : ndarray (D,)
    eps : float, default 1e-5

    Returns
    -------
    values : dict
        Each node's forward value, for every node of :data:`BN_STAGES` and the leaves ``x``,
        ``gamma`` and ``beta``.
    grads : dict
        ``grads[name]`` = dL/d(name): the *upstream* gradient that arrives at the node in the
        backward pass. Where a node feeds two others (``x`` and ``x_centered``) the
        contributions of both paths are added, as the chain rule says.
    contribs : dict
        ``contribs[(node, input)]``: what ``node`` sends back to one of its inputs, its
        local derivative applied to its upstream gradient (summed over the batch where the
        input was broadcast, spread over the batch where the node is a mean).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x, dy = rng.normal(size=(8, 3)), rng.normal(size=(8, 3))
    >>> values, grads, contribs = staged_backward(x, np.ones(3), np.zeros(3), dy)
    >>> np.allclose(grads["x"], contribs[("x_centered", "x")] + contribs[("mean", "x")])
    True
    >>> values["inv_std"].shape, grads["x_hat"].shape     # per channel, per value
    ((3,), (8, 3))
    """
    m = x.shape[0]
    v = {"x": x, "gamma": gamma, "beta": beta}
    v["mean"] = x.sum(axis=0) / m                              # (D,): sum over the batch
    v["x_centered"] = x - v["mean"]                            # (N, D)
    v["sq"] = v["x_centered"] ** 2                             # (N, D)
    v["var"] = v["sq"].sum(axis=0) / m                         # (D,): biased
    v["std"] = np.sqrt(v["var"] + eps)                         # (D,)
    v["inv_std"] = 1.0 / v["std"]                              # (D,)
    v["x_hat"] = v["x_centered"] * v["inv_std"]                # (N, D)
    v["gamma_x_hat"] = gamma * v["x_hat"]                      # (N, D)
    v["y"] = v["gamma_x_hat"] + beta                           # (N, D)

    # Backward in reverse order of BN_STAGES. g[node] is complete before the node sends
    # anything back, because every consumer of a node comes after it in the forward order.
    g, c = {"y": dy}, {}
    c["y", "gamma_x_hat"] = dy
    c["y", "beta"] = dy.sum(axis=0)                            # (D,): beta was broadcast over the batch
    g["gamma_x_hat"], g["beta"] = c["y", "gamma_x_hat"], c["y", "beta"]
    c["gamma_x_hat", "x_hat"] = g["gamma_x_hat"] * gamma
    c["gamma_x_hat", "gamma"] = (g["gamma_x_hat"] * v["x_hat"]).sum(axis=0)   # (D,)
    g["x_hat"], g["gamma"] = c["gamma_x_hat", "x_hat"], c["gamma_x_hat", "gamma"]
    c["x_hat", "x_centered"] = g["x_hat"] * v["inv_std"]
    c["x_hat", "inv_std"] = (g["x_hat"] * v["x_centered"]).sum(axis=0)  # (D,): inv_std was broadcast
    g["inv_std"] = c["x_hat", "inv_std"]
    c["inv_std", "std"] = -g["inv_std"] / v["std"] ** 2
    g["std"] = c["inv_std", "std"]
    c["std", "var"] = g["std"] * 0.5 / v["std"]                # d sqrt(var + eps) = 1 / (2 std)
    g["var"] = c["std", "var"]
    c["var", "sq"] = np.ones_like(x) * g["var"] / m            # (N, D): the mean spreads dvar over the m rows
    g["sq"] = c["var", "sq"]
    c["sq", "x_centered"] = 2.0 * v["x_centered"] * g["sq"]
    # x_centered feeds x_hat and sq: add both paths
    g["x_centered"] = c["x_hat", "x_centered"] + c["sq", "x_centered"]
    c["x_centered", "x"] = g["x_centered"]
    c["x_centered", "mean"] = -g["x_centered"].sum(axis=0)     # (D,): mean was broadcast
    g["mean"] = c["x_centered", "mean"]
    c["mean", "x"] = np.ones_like(x) * g["mean"] / m           # (N, D)
    g["x"] = c["x_centered", "x"] + c["mean", "x"]             # x feeds x_centered and mean: add both paths
    return v, g, c
