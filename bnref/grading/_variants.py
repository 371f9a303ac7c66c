"""Reference outputs (from bnref) and the known wrong variants, used only by the judge process.

Each check has a ``reference(t)`` computed with bnref's public API, and a list of
``(name, function, message)`` variants: NumPy re-implementations of the mistakes learners
make. When a learner's output matches a variant, the judge reports that variant's message.
All computations are in float64 from the trial's inputs.
"""
import numpy as np

import bnref

__all__ = ["REFERENCE", "VARIANTS"]

EPS = 1e-5


def _f64(t):
    return {k: (v.astype(np.float64) if isinstance(v, np.ndarray) else v) for k, v in t.items()}


def _eps(t):
    return t.get("eps", EPS)


# ---------------------------------------------------------------- generic normalisation
def _norm(x, gamma, beta, axes, eps, ddof=0, mode="ok", gshape=None):
    """``gamma * (x - mean) / sqrt(var + eps) + beta`` with a selectable mistake ``mode``."""
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True, ddof=ddof)
    if mode == "no_eps":
        x_hat = (x - mean) / np.sqrt(var)
    elif mode == "eps_outside":
        x_hat = (x - mean) / (np.sqrt(var) + eps)
    elif mode == "var_not_sqrt":
        x_hat = (x - mean) / (var + eps)
    elif mode == "not_centred":
        x_hat = x / np.sqrt(var + eps)
    else:
        x_hat = (x - mean) / np.sqrt(var + eps)
    if gshape is not None:
        gamma, beta = gamma.reshape(gshape), beta.reshape(gshape)
    if mode == "no_gamma":
        return x_hat + beta
    if mode == "no_beta":
        return gamma * x_hat
    if mode == "swapped":
        return beta * x_hat + gamma
    if mode == "x_hat_only":
        return x_hat
    return gamma * x_hat + beta


def _with_nan_guard(f):
    def g(t):
        with np.errstate(all="ignore"):
            return f(t)
    return g


# ---------------------------------------------------------------- BN forward, (N, D)
def _fwd_ref(t):
    t = _f64(t)
    return {"out": bnref.batchnorm_forward(t["x"], t["gamma"], t["beta"], eps=_eps(t))[0]}


def _fwd(mode="ok", ddof=0, axes=0, eps=None):
    def f(t):
        t = _f64(t)
        e = _eps(t) if eps is None else eps
        return {"out": _norm(t["x"], t["gamma"], t["beta"], axes, e, ddof, mode)}
    return _with_nan_guard(f)


_FWD_COMMON = [
    ("unbiased_var", _fwd(ddof=1),
     "the variance looks unbiased (divided by N - 1). BN uses the biased batch variance: divide "
     "by N, e.g. x.var(axis=0) or ((x - mean) ** 2).mean(axis=0)."),
    ("no_eps", _fwd("no_eps"),
     "eps is missing: normalise with np.sqrt(var + eps), not np.sqrt(var)."),
    ("eps_ignored", _fwd(eps=EPS),
     "the eps argument is ignored: you use 1e-5 whatever eps the caller passes. Use the eps "
     "parameter."),
    ("eps_outside", _fwd("eps_outside"),
     "eps is added to the standard deviation, (x - mean) / (np.sqrt(var) + eps); it belongs inside "
     "the square root: np.sqrt(var + eps)."),
    ("var_not_sqrt", _fwd("var_not_sqrt"),
     "you divide by the variance (var + eps) instead of the standard deviation np.sqrt(var + eps)."),
    ("wrong_axis", _fwd(axes=1),
     "the statistics are computed over the wrong axis (over the features of each example, axis=1). "
     "BN computes one mean and one variance per feature, over the batch: axis=0."),
    ("not_centred", _fwd("not_centred"),
     "the mean is not subtracted: x_hat = (x - mean) / np.sqrt(var + eps)."),
    ("no_gamma", _fwd("no_gamma"), "gamma is not applied: out = gamma * x_hat + beta."),
    ("no_beta", _fwd("no_beta"), "beta is not added: out = gamma * x_hat + beta."),
    ("swapped", _fwd("swapped"), "gamma and beta are swapped: out = gamma * x_hat + beta."),
    ("x_hat_only", _fwd("x_hat_only"),
     "you return x_hat: the scale gamma and shift beta are missing (out = gamma * x_hat + beta)."),
    ("unbiased_no_eps", _fwd("no_eps", ddof=1),
     "two mistakes: the variance is unbiased (divide by N, not N - 1) and eps is missing "
     "(np.sqrt(var + eps))."),
]


# ---------------------------------------------------------------- running statistics
def _run_ref(t):
    t = _f64(t)
    rm, rv = t["running_mean"], t["running_var"]
    means, vars_ = [], []
    for x in t["xs"]:
        rm, rv = bnref.running_stats_update(rm, rv, x, momentum=t.get("momentum", 0.1), axis=1)
        means.append(rm)
        vars_.append(rv)
    if len(means) == 1:
        return {"running_mean": means[0], "running_var": vars_[0]}
    return {"running_mean": np.stack(means), "running_var": np.stack(vars_)}


def _run(flip=False, ddof=1, momentum=None, std=False):
    def f(t):
        t = _f64(t)
        m = t.get("momentum", 0.1) if momentum is None else momentum
        w_new = 1 - m if flip else m
        rm, rv = t["running_mean"], t["running_var"]
        means, vars_ = [], []
        for x in t["xs"]:
            v = x.std(axis=0, ddof=ddof) if std else x.var(axis=0, ddof=ddof)
            rm = (1 - w_new) * rm + w_new * x.mean(axis=0)
            rv = (1 - w_new) * rv + w_new * v
            means.append(rm)
            vars_.append(rv)
        if len(means) == 1:
            return {"running_mean": means[0], "running_var": vars_[0]}
        return {"running_mean": np.stack(means), "running_var": np.stack(vars_)}
    return f


def _run_batch_only(t):
    t = _f64(t)
    outs = [(x.mean(axis=0), x.var(axis=0, ddof=1)) for x in t["xs"]]
    if len(outs) == 1:
        return {"running_mean": outs[0][0], "running_var": outs[0][1]}
    return {"running_mean": np.stack([o[0] for o in outs]), "running_var": np.stack([o[1] for o in outs])}


_RUN = [
    ("momentum_flipped", _run(flip=True),
     "the momentum convention is flipped: in PyTorch's convention momentum is the weight of the "
     "NEW batch, new = (1 - momentum) * old + momentum * batch (CS231n's momentum=0.9 weighs the old "
     "value instead)."),
    ("biased_running_var", _run(ddof=0),
     "the running variance averages the biased batch variance (divided by N). PyTorch stores the "
     "unbiased one: var * N / (N - 1), or x.var(axis=0, ddof=1)."),
    ("flipped_and_biased", _run(flip=True, ddof=0),
     "two mistakes: the momentum convention is flipped (momentum weighs the new batch: "
     "(1 - momentum) * old + momentum * batch) and the running variance must use the unbiased "
     "batch variance (ddof=1)."),
    ("momentum_ignored", _run(momentum=0.1),
     "the momentum argument is ignored (you always use 0.1). Use the momentum parameter."),
    ("running_std", _run(std=True),
     "the running variance averages the standard deviation, not the (unbiased) variance."),
    ("batch_only", _run_batch_only,
     "you return the batch statistics; the running statistics must be moving averages that "
     "blend in the old values: (1 - momentum) * old + momentum * batch."),
]


# ---------------------------------------------------------------- inference
def _inf_ref(t):
    t = _f64(t)
    return {"out": bnref.batchnorm_inference(t["x"], t["gamma"], t["beta"], t["running_mean"],
                                             t["running_var"], eps=_eps(t))}


def _inf(mode="ok", eps=None, batch=False, ddof=0):
    def f(t):
        t = _f64(t)
        e = _eps(t) if eps is None else eps
        x = t["x"]
        if batch:
            if x.shape[0] < 2 and ddof:
                return {"out": np.full_like(x, np.nan)}
            mean, var = x.mean(axis=0), x.var(axis=0, ddof=ddof)
        else:
            mean, var = t["running_mean"], t["running_var"]
        if mode == "no_eps":
            x_hat = (x - mean) / np.sqrt(var)
        elif mode == "eps_outside":
            x_hat = (x - mean) / (np.sqrt(var) + e)
        elif mode == "var_not_sqrt":
            x_hat = (x - mean) / (var + e)
        else:
            x_hat = (x - mean) / np.sqrt(var + e)
        return {"out": t["gamma"] * x_hat + t["beta"]}
    return _with_nan_guard(f)


_INF = [
    ("batch_stats", _inf(batch=True),
     "you normalise with the batch's own mean and variance. In inference mode BN uses the running "
     "statistics (running_mean, running_var): the output of an example must not depend on its "
     "batch-mates."),
    ("batch_stats_unbiased", _inf(batch=True, ddof=1),
     "you normalise with the batch's own statistics; inference uses running_mean and running_var."),
    ("no_eps", _inf("no_eps"), "eps is missing: use np.sqrt(running_var + eps)."),
    ("eps_ignored", _inf(eps=EPS), "the eps argument is ignored (you always use 1e-5)."),
    ("eps_outside", _inf("eps_outside"),
     "eps is added to the standard deviation; it belongs inside the square root: "
     "np.sqrt(running_var + eps)."),
    ("var_not_sqrt", _inf("var_not_sqrt"),
     "you divide by the running variance instead of its square root np.sqrt(running_var + eps)."),
]


# ---------------------------------------------------------------- backward
def _bwd_ref(t):
    t = _f64(t)
    out, cache = bnref.batchnorm_forward(t["x"], t["gamma"], t["beta"], eps=_eps(t))
    dx, dgamma, dbeta = bnref.batchnorm_backward(t["dout"], cache)
    return {"out": out, "dx": dx, "dgamma": dgamma, "dbeta": dbeta}


def _bwd_parts(x, gamma, dout, axes, eps, cshape):
    """x_hat, inv_std, m and the correct grads for stats over ``axes`` (gamma shaped ``cshape``)."""
    m = int(np.prod([x.shape[a] for a in np.atleast_1d(axes)]))
    mean = x.mean(axis=axes, keepdims=True)
    inv_std = 1 / np.sqrt(x.var(axis=axes, keepdims=True) + eps)
    x_hat = (x - mean) * inv_std
    g = gamma.reshape(cshape)
    return x_hat, inv_std, m, g


def _bwd(mode, axes=0, cshape=(1, -1)):
    def f(t):
        t = _f64(t)
        x, dout = t["x"], t["dout"]
        x_hat, inv_std, m, g = _bwd_parts(x, t["gamma"], dout, axes, _eps(t), cshape)
        dbeta = dout.sum(axis=axes)
        dgamma = (dout * x_hat).sum(axis=axes)
        dxh = dout * g
        mean_d = dxh.mean(axis=axes, keepdims=True)
        mean_dx = (dxh * x_hat).mean(axis=axes, keepdims=True)
        dx = inv_std * (dxh - mean_d - x_hat * mean_dx)
        out = {"out": g * x_hat + t["beta"].reshape(cshape), "dx": dx, "dgamma": dgamma, "dbeta": dbeta}
        if mode == "not_summed":
            out.update(dgamma=dout * x_hat, dbeta=dout)
        elif mode == "mean_not_sum":
            out.update(dgamma=(dout * x_hat).mean(axis=axes), dbeta=dout.mean(axis=axes))
        elif mode == "dgamma_no_xhat":
            out.update(dgamma=dbeta)
        elif mode == "swapped":
            out.update(dgamma=dbeta, dbeta=dgamma)
        elif mode == "no_mean_path":
            out.update(dx=inv_std * (dxh - x_hat * mean_dx))
        elif mode == "no_var_path":
            out.update(dx=inv_std * (dxh - mean_d))
        elif mode == "no_stats_path":
            out.update(dx=inv_std * dxh)
        elif mode == "no_gamma":
            out.update(dx=inv_std * (dout - dout.mean(axis=axes, keepdims=True)
                                     - x_hat * (dout * x_hat).mean(axis=axes, keepdims=True)))
        elif mode == "m_minus_1":
            k = m / (m - 1) if m > 1 else np.nan
            out.update(dx=inv_std * (dxh - mean_d * k - x_hat * mean_dx * k))
        elif mode == "var_sign":
            out.update(dx=inv_std * (dxh - mean_d + x_hat * mean_dx))
        return out
    return _with_nan_guard(f)


def _bwd_variants(axes=0, cshape=(1, -1), what="the batch (axis 0)"):
    return [
        ("not_summed", _bwd("not_summed", axes, cshape),
         f"dgamma and dbeta are not summed over {what}: gamma and beta are shared by every "
         "example, so their gradients add up: dbeta = dout.sum(...), dgamma = (dout * x_hat).sum(...)."),
        ("mean_not_sum", _bwd("mean_not_sum", axes, cshape),
         f"dgamma and dbeta are averaged over {what}; they must be summed (gamma and beta are "
         "shared, so the gradients add up)."),
        ("dgamma_no_xhat", _bwd("dgamma_no_xhat", axes, cshape),
         "dgamma is missing the factor x_hat: out = gamma * x_hat + beta, so dgamma = sum(dout * x_hat)."),
        ("swapped", _bwd("swapped", axes, cshape), "dgamma and dbeta are swapped."),
        ("no_mean_path", _bwd("no_mean_path", axes, cshape),
         "dx is missing the gradient path through the batch mean: the mean depends on every x_i, "
         "which adds the term -mean(dout * gamma) (dx must sum to zero over the batch)."),
        ("no_var_path", _bwd("no_var_path", axes, cshape),
         "dx is missing the gradient path through the batch variance: the term "
         "-x_hat * mean(dout * gamma * x_hat)."),
        ("no_stats_path", _bwd("no_stats_path", axes, cshape),
         "dx treats the mean and variance as constants (dx = dout * gamma * inv_std); both depend on "
         "x, so two more terms appear: -mean(dx_hat) and -x_hat * mean(dx_hat * x_hat)."),
        ("no_gamma", _bwd("no_gamma", axes, cshape),
         "dx is missing the factor gamma (out = gamma * x_hat + beta, so dx_hat = dout * gamma)."),
        ("m_minus_1", _bwd("m_minus_1", axes, cshape),
         "dx uses m - 1 where the forward pass divides by m (the biased variance): use the same m."),
        ("var_sign", _bwd("var_sign", axes, cshape),
         "the variance term of dx has the wrong sign: dx = gamma * inv_std * (dout - mean(dout) - "
         "x_hat * mean(dout * x_hat))."),
    ]


# ---------------------------------------------------------------- spatial
def _sp_fwd_ref(t):
    t = _f64(t)
    return {"out": bnref.batchnorm_forward(t["x"], t["gamma"], t["beta"], eps=_eps(t), axis=1)[0]}


def _sp_fwd(mode="ok", axes=(0, 2, 3), ddof=0, eps=None):
    def f(t):
        t = _f64(t)
        e = _eps(t) if eps is None else eps
        return {"out": _norm(t["x"], t["gamma"], t["beta"], axes, e, ddof, mode, gshape=(1, -1, 1, 1))}
    return _with_nan_guard(f)


def _sp_reshape_bug(t):
    """x.reshape(-1, C) without moving C last: rows mix channels and positions."""
    t = _f64(t)
    x = t["x"]
    C = x.shape[1]
    x2 = x.reshape(-1, C)
    out2 = _norm(x2, t["gamma"], t["beta"], 0, _eps(t))
    return {"out": out2.reshape(x.shape)}


def _sp_bwd_ref(t):
    t = _f64(t)
    out, cache = bnref.batchnorm_forward(t["x"], t["gamma"], t["beta"], eps=_eps(t), axis=1)
    dx, dgamma, dbeta = bnref.batchnorm_backward(t["dout"], cache)
    return {"out": out, "dx": dx, "dgamma": dgamma, "dbeta": dbeta}


def _sp_bwd_reshape_bug(t):
    t = _f64(t)
    x, dout = t["x"], t["dout"]
    C = x.shape[1]
    out, cache = bnref.batchnorm_forward(x.reshape(-1, C), t["gamma"], t["beta"], eps=_eps(t))
    dx, dgamma, dbeta = bnref.batchnorm_backward(dout.reshape(-1, C), cache)
    return {"out": out.reshape(x.shape), "dx": dx.reshape(x.shape), "dgamma": dgamma, "dbeta": dbeta}


def _sp_bwd_only_n(t):
    """dgamma/dbeta summed over N only (shape (C, H, W))."""
    out = _bwd("ok", (0, 2, 3), (1, -1, 1, 1))(t)
    x_hat = (out["out"] - t["beta"].reshape(1, -1, 1, 1)) / t["gamma"].reshape(1, -1, 1, 1)
    out.update(dgamma=(t["dout"] * x_hat).sum(axis=0), dbeta=t["dout"].sum(axis=0))
    return out


def _sp_bwd_m_is_n(t):
    """dx with m = N instead of N * H * W."""
    out = _sp_bwd_ref(t)
    t64 = _f64(t)
    x, dout = t64["x"], t64["dout"]
    N = x.shape[0]
    g = t64["gamma"].reshape(1, -1, 1, 1)
    inv_std = 1 / np.sqrt(x.var(axis=(0, 2, 3), keepdims=True) + _eps(t64))
    x_hat = (x - x.mean(axis=(0, 2, 3), keepdims=True)) * inv_std
    dbeta = dout.sum(axis=(0, 2, 3), keepdims=True)
    dgamma = (dout * x_hat).sum(axis=(0, 2, 3), keepdims=True)
    out.update(dx=g * inv_std / N * (N * dout - dbeta - x_hat * dgamma))
    return out


_SP_AXES = [
    ("stats_over_n_only", _sp_fwd(axes=0),
     "the statistics are computed over the batch axis only (one mean per channel AND position). "
     "Spatial BN shares them over positions too: mean over axes (0, 2, 3)."),
    ("instance_norm", _sp_fwd(axes=(2, 3)),
     "the statistics are computed per example over H and W (that is InstanceNorm). Spatial BN "
     "computes them per channel over the batch and the positions: axes (0, 2, 3)."),
    ("layer_norm", _sp_fwd(axes=(1, 2, 3)),
     "the statistics are computed per example over (C, H, W) (that is LayerNorm). Spatial BN "
     "computes them per channel over axes (0, 2, 3)."),
    ("all_axes", _sp_fwd(axes=(0, 1, 2, 3)),
     "one mean and variance for the whole tensor; BN keeps one per channel: axes (0, 2, 3)."),
    ("reshape_bug", _sp_reshape_bug,
     "x.reshape(-1, C) mixes channels: in (N, C, H, W) memory order the last axis is W, not C. "
     "Move the channel axis last first: x.transpose(0, 2, 3, 1).reshape(-1, C), and undo it after; "
     "or reduce over axes (0, 2, 3) directly."),
    ("unbiased_var", _sp_fwd(ddof=1),
     "the variance looks unbiased (divided by m - 1); BN divides by m = N * H * W."),
    ("no_eps", _sp_fwd("no_eps"), "eps is missing: np.sqrt(var + eps)."),
    ("eps_ignored", _sp_fwd(eps=EPS), "the eps argument is ignored (you always use 1e-5)."),
    ("no_gamma", _sp_fwd("no_gamma"), "gamma is not applied (out = gamma * x_hat + beta, "
                                       "gamma reshaped to (1, C, 1, 1))."),
    ("no_beta", _sp_fwd("no_beta"), "beta is not added."),
    ("x_hat_only", _sp_fwd("x_hat_only"), "gamma and beta are not applied."),
]


# ---------------------------------------------------------------- folding
def _fold_ref(t):
    t = _f64(t)
    W_f, b_f = bnref.fold_linear(t["W"].T, t["b"], t["gamma"], t["beta"], t["running_mean"],
                                 t["running_var"], eps=_eps(t))
    return {"W_folded": W_f.T, "b_folded": b_f}


def _fold(mode):
    def f(t):
        t = _f64(t)
        W, gamma, beta, mu, var, e = t["W"], t["gamma"], t["beta"], t["running_mean"], t["running_var"], _eps(t)
        b = t["b"] if t["b"] is not None else np.zeros_like(mu)
        scale = gamma / np.sqrt(var + e)
        W_f, b_f = W * scale, (b - mu) * scale + beta
        if mode == "rows":
            W_f = W * scale[:, None] if W.shape[0] == scale.shape[0] else np.full(W.shape, np.nan)
        elif mode == "torch_layout":
            W_f = (W * scale).T
        elif mode == "inverted":
            W_f, b_f = W / scale, (b - mu) / scale + beta
        elif mode == "no_sqrt":
            s2 = gamma / (var + e)
            W_f, b_f = W * s2, (b - mu) * s2 + beta
        elif mode == "no_gamma":
            s2 = 1 / np.sqrt(var + e)
            W_f, b_f = W * s2, (b - mu) * s2 + beta
        elif mode == "no_eps":
            s2 = gamma / np.sqrt(var)
            W_f, b_f = W * s2, (b - mu) * s2 + beta
        elif mode == "mean_sign":
            b_f = (b + mu) * scale + beta
        elif mode == "b_not_scaled":
            b_f = b - mu * scale + beta
        elif mode == "b_ignored":
            b_f = beta - mu * scale
        elif mode == "beta_scaled":
            b_f = (b - mu + beta) * scale
        elif mode == "no_beta":
            b_f = (b - mu) * scale
        elif mode == "mean_not_scaled":
            b_f = b * scale + beta - mu
        return {"W_folded": W_f, "b_folded": b_f}
    return _with_nan_guard(f)


_FOLD = [
    ("torch_layout", _fold("torch_layout"),
     "W_folded is transposed: here the layer is z = x @ W + b with W of shape (D, H) (inputs, "
     "outputs), not PyTorch's (out, in). Return W_folded in W's own shape."),
    ("rows", _fold("rows"),
     "the scale multiplies the rows of W; BN scales each OUTPUT feature, i.e. each column of W "
     "(shape (D, H)): W_folded = W * scale (broadcast over rows)."),
    ("inverted", _fold("inverted"),
     "the scale is inverted: BN multiplies by gamma / np.sqrt(running_var + eps), it does not divide."),
    ("no_sqrt", _fold("no_sqrt"),
     "the scale divides by the variance; it must divide by the standard deviation "
     "np.sqrt(running_var + eps)."),
    ("no_gamma", _fold("no_gamma"), "gamma is missing from the scale: scale = gamma / np.sqrt(running_var + eps)."),
    ("no_eps", _fold("no_eps"), "eps is missing: np.sqrt(running_var + eps)."),
    ("mean_sign", _fold("mean_sign"),
     "the running mean has the wrong sign in b_folded: BN computes (z - running_mean) * scale + beta, "
     "so b_folded = (b - running_mean) * scale + beta."),
    ("b_not_scaled", _fold("b_not_scaled"),
     "b is not multiplied by the scale: z = x @ W + b goes through BN as a whole, so "
     "b_folded = (b - running_mean) * scale + beta."),
    ("b_ignored", _fold("b_ignored"),
     "the layer's bias b is dropped from b_folded: b_folded = (b - running_mean) * scale + beta."),
    ("beta_scaled", _fold("beta_scaled"),
     "beta is multiplied by the scale; it is added after scaling: (b - running_mean) * scale + beta."),
    ("no_beta", _fold("no_beta"), "beta is missing from b_folded."),
    ("mean_not_scaled", _fold("mean_not_scaled"),
     "the running mean is subtracted after scaling; it must be scaled too: "
     "b_folded = (b - running_mean) * scale + beta."),
]


# ---------------------------------------------------------------- LayerNorm
def _ln_fwd_ref(t):
    t = _f64(t)
    return {"out": bnref.layernorm_forward(t["x"], t["gamma"], t["beta"], eps=_eps(t))[0]}


def _ln_fwd(mode="ok", axes=1, ddof=0, eps=None):
    def f(t):
        t = _f64(t)
        if axes == 0 and t["x"].shape[0] < 2:
            return {"out": np.full_like(t["x"], np.nan)}
        e = _eps(t) if eps is None else eps
        return {"out": _norm(t["x"], t["gamma"], t["beta"], axes, e, ddof, mode)}
    return _with_nan_guard(f)


_LN_FWD = [
    ("batch_axis", _ln_fwd(axes=0),
     "the statistics are computed over the batch (axis 0): that is BatchNorm. LayerNorm normalises "
     "each example over its features: mean and var over axis=1 (keepdims=True)."),
    ("unbiased_var", _ln_fwd(ddof=1),
     "the variance looks unbiased (divided by D - 1); LayerNorm divides by D."),
    ("no_eps", _ln_fwd("no_eps"), "eps is missing: np.sqrt(var + eps)."),
    ("eps_ignored", _ln_fwd(eps=EPS), "the eps argument is ignored (you always use 1e-5)."),
    ("no_gamma", _ln_fwd("no_gamma"), "gamma is not applied."),
    ("no_beta", _ln_fwd("no_beta"), "beta is not added."),
    ("x_hat_only", _ln_fwd("x_hat_only"), "gamma and beta are not applied."),
]


def _ln_bwd_ref(t):
    t = _f64(t)
    out, cache = bnref.layernorm_forward(t["x"], t["gamma"], t["beta"], eps=_eps(t))
    dx, dgamma, dbeta = bnref.layernorm_backward(t["dout"], cache)
    return {"out": out, "dx": dx, "dgamma": dgamma, "dbeta": dbeta}


def _ln_bwd(mode):
    def f(t):
        out = _ln_bwd_ref(t)
        t = _f64(t)
        x, dout, gamma = t["x"], t["dout"], t["gamma"]
        mean = x.mean(axis=1, keepdims=True)
        inv_std = 1 / np.sqrt(x.var(axis=1, keepdims=True) + _eps(t))
        x_hat = (x - mean) * inv_std
        g = dout * gamma
        if mode == "not_summed":
            out.update(dgamma=dout * x_hat, dbeta=dout)
        elif mode == "summed_over_features":
            out.update(dgamma=(dout * x_hat).sum(axis=1), dbeta=dout.sum(axis=1))
        elif mode == "dgamma_no_xhat":
            out.update(dgamma=dout.sum(axis=0))
        elif mode == "no_mean_path":
            out.update(dx=inv_std * (g - x_hat * (g * x_hat).mean(axis=1, keepdims=True)))
        elif mode == "no_var_path":
            out.update(dx=inv_std * (g - g.mean(axis=1, keepdims=True)))
        elif mode == "no_stats_path":
            out.update(dx=inv_std * g)
        elif mode == "bn_axes":
            if x.shape[0] < 2:
                out.update(dx=np.full_like(x, np.nan))
            else:
                out.update(dx=_bwd("ok")(dict(t))["dx"])
        return out
    return _with_nan_guard(f)


_LN_BWD = [
    ("not_summed", _ln_bwd("not_summed"),
     "dgamma and dbeta are not summed over the batch: gamma and beta are shared by all examples, so "
     "dbeta = dout.sum(axis=0) and dgamma = (dout * x_hat).sum(axis=0), shape (D,)."),
    ("summed_over_features", _ln_bwd("summed_over_features"),
     "dgamma and dbeta are summed over the features (axis 1); gamma and beta have one entry per "
     "feature, so sum over the batch: axis=0, shape (D,)."),
    ("dgamma_no_xhat", _ln_bwd("dgamma_no_xhat"), "dgamma is missing the factor x_hat."),
    ("no_mean_path", _ln_bwd("no_mean_path"),
     "dx is missing the path through each row's mean: the term -mean(dx_hat, axis=1)."),
    ("no_var_path", _ln_bwd("no_var_path"),
     "dx is missing the path through each row's variance: the term -x_hat * mean(dx_hat * x_hat, axis=1)."),
    ("no_stats_path", _ln_bwd("no_stats_path"),
     "dx treats each row's mean and variance as constants; both depend on x."),
    ("bn_axes", _ln_bwd("bn_axes"),
     "dx is BatchNorm's backward pass (statistics over the batch); LayerNorm's statistics are per "
     "row, so the means in dx are over axis=1."),
]


# ---------------------------------------------------------------- GroupNorm
def _gn_ref(t):
    t = _f64(t)
    return {"out": bnref.groupnorm_forward(t["x"], t["gamma"], t["beta"], num_groups=int(t["G"]),
                                           eps=_eps(t))[0]}


def _gn(mode="ok", ddof=0, eps=None):
    def f(t):
        t = _f64(t)
        x, G = t["x"], int(t["G"])
        N, C, H, W = x.shape
        e = _eps(t) if eps is None else eps
        if mode == "interleaved":
            xg = x.reshape(N, C // G, G, H, W)
            axes = (1, 3, 4)
        elif mode == "with_batch":
            xg = x.reshape(N, G, C // G, H, W)
            axes = (0, 2, 3, 4)
        elif mode == "no_spatial":
            xg = x.reshape(N, G, C // G, H, W)
            axes = 2
        else:
            xg = x.reshape(N, G, C // G, H, W)
            axes = (2, 3, 4)
        mean = xg.mean(axis=axes, keepdims=True)
        var = xg.var(axis=axes, keepdims=True, ddof=ddof)
        x_hat = ((xg - mean) / np.sqrt(var + e)).reshape(N, C, H, W)
        g, b = t["gamma"].reshape(1, C, 1, 1), t["beta"].reshape(1, C, 1, 1)
        if mode == "x_hat_only":
            return {"out": x_hat}
        return {"out": g * x_hat + b}
    return _with_nan_guard(f)


def _gn_other_G(which):
    def f(t):
        t = dict(t)
        t["G"] = 1 if which == "layer" else t["x"].shape[1]
        return _gn()(t)
    return f


_GN = [
    ("interleaved", _gn("interleaved"),
     "wrong grouping: x.reshape(N, C // G, G, H, W) puts channels c, c + G, c + 2G, ... in one group. "
     "GroupNorm groups CONSECUTIVE channels: x.reshape(N, G, C // G, H, W), statistics over axes (2, 3, 4)."),
    ("instance_norm", _gn_other_G("instance"),
     "the statistics are per channel (that is InstanceNorm, G = C); each group has C // G channels: "
     "x.reshape(N, G, C // G, H, W)."),
    ("layer_norm", _gn_other_G("layer"),
     "the statistics are over all channels of an example (that is LayerNorm, G = 1); use the G argument: "
     "x.reshape(N, G, C // G, H, W)."),
    ("with_batch", _gn("with_batch"),
     "the statistics include the batch axis; GroupNorm's are per example: reduce over axes (2, 3, 4) "
     "of x.reshape(N, G, C // G, H, W), not over axis 0."),
    ("no_spatial", _gn("no_spatial"),
     "the statistics are over the channels of a group only; they must also cover H and W: "
     "axes (2, 3, 4) of x.reshape(N, G, C // G, H, W)."),
    ("unbiased_var", _gn(ddof=1), "the variance looks unbiased; GroupNorm divides by the group size."),
    ("no_eps", _gn(eps=0.0), "eps is missing: np.sqrt(var + eps)."),
    ("eps_ignored", _gn(eps=EPS), "the eps argument is ignored (you always use 1e-5)."),
    ("x_hat_only", _gn("x_hat_only"), "gamma and beta are not applied (reshape them to (1, C, 1, 1))."),
]


REFERENCE = {
    "batchnorm_forward": _fwd_ref,
    "running_stats_update": _run_ref,
    "batchnorm_inference": _inf_ref,
    "batchnorm_backward": _bwd_ref,
    "spatial_batchnorm_forward": _sp_fwd_ref,
    "spatial_batchnorm_backward": _sp_bwd_ref,
    "fold_batchnorm": _fold_ref,
    "layernorm_forward": _ln_fwd_ref,
    "layernorm_backward": _ln_bwd_ref,
    "groupnorm_forward": _gn_ref,
}

VARIANTS = {
    "batchnorm_forward": _FWD_COMMON,
    "running_stats_update": _RUN,
    "batchnorm_inference": _INF,
    "batchnorm_backward": _bwd_variants(),
    "spatial_batchnorm_forward": _SP_AXES,
    "spatial_batchnorm_backward": [
        ("reshape_bug", _sp_bwd_reshape_bug,
         "the reshape mixes channels: x.reshape(-1, C) on (N, C, H, W) data does not give one column "
         "per channel. Transpose to (N, H, W, C) first, or reduce over axes (0, 2, 3)."),
        ("summed_over_n_only", _sp_bwd_only_n,
         "dgamma and dbeta are summed over the batch only (shape (C, H, W)); sum over axes (0, 2, 3) "
         "to get shape (C,)."),
        ("m_is_n", _sp_bwd_m_is_n,
         "dx uses m = N; every channel has m = N * H * W values."),
        *_bwd_variants((0, 2, 3), (1, -1, 1, 1), "the batch and the positions (axes (0, 2, 3))"),
    ],
    "fold_batchnorm": _FOLD,
    "layernorm_forward": _LN_FWD,
    "layernorm_backward": _LN_BWD,
    "groupnorm_forward": _GN,
}
