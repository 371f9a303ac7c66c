"""Every kernel set implements the interface of ``bnref.kernels``, exactly as written there.

The same function names, parameter names and returns (count, shapes, dtypes) for the
reference, tuned NumPy, Numba and CuPy; the CPU sets are also called, to check what they
return and that they leave their inputs alone. Their numbers are checked against the
reference in tests/test_gpu_kernels.py and against PyTorch in tests/test_bnref_oracle.py.
"""
import importlib
import inspect

import numpy as np
import pytest

from bnref.kernels import API, stat_dtype

SETS = ["bnref.reference", "bnref.kernels.numpy_bn", "bnref.kernels.numba_bn", "bnref.kernels.cupy_bn"]
CPU_SETS = SETS[:3]


def _load(name):
    if name.endswith("numba_bn"):
        pytest.importorskip("numba", reason="numba is not installed")
    return importlib.import_module(name)       # cupy_bn imports CuPy only when called


@pytest.mark.parametrize("name", SETS)
def test_each_set_defines_the_interface_functions_with_its_parameter_names(name):
    kernels = _load(name)
    assert set(API) <= set(kernels.__all__), f"{name}.__all__ lacks {set(API) - set(kernels.__all__)}"
    for fn, params in API.items():
        got = tuple(inspect.signature(getattr(kernels, fn)).parameters)
        assert got == params, f"{name}.{fn}{got}: the interface is {fn}{params}"


def _arguments(rng, dtype):
    """Inputs as the public functions hand them over: contiguous views, (C,) stats in stat_dtype."""
    A, C, B, G = 6, 4, 5, 2
    sd = stat_dtype(dtype)
    x3 = rng.normal(2.0, 1.5, (A, C, B)).astype(dtype)
    dy3 = rng.normal(size=(A, C, B)).astype(dtype)
    vec = lambda k, lo=0.5: rng.uniform(lo, 1.5, k).astype(sd)           # noqa: E731
    return dict(x3=x3, dy3=dy3, x2=x3.reshape(A, C * B), dy2=dy3.reshape(A, C * B),
                gamma=vec(C), beta=vec(C, -1), gamma_k=vec(C * B), beta_k=vec(C * B, -1),
                mean=vec(C, -1), inv_std=vec(C), mean_ng=vec(A * G, -1).reshape(A, G),
                inv_std_ng=vec(A * G).reshape(A, G), mean_m=vec(A, -1), inv_std_m=vec(A),
                running_mean=vec(C, -1), running_var=vec(C), eps=1e-5, G=G, sd=sd)


def _calls(a):
    """(call, expected shapes of the results) for every interface function."""
    A, C, B = a["x3"].shape
    G, K = a["G"], C * B
    return {
        "bn_stats": (lambda k: k.bn_stats(a["x3"]), [(C,), (C,)]),
        "bn_forward_train": (lambda k: k.bn_forward_train(a["x3"], a["gamma"], a["beta"], a["eps"]),
                             [(A, C, B), (C,), (C,), (C,)]),
        "bn_backward": (lambda k: k.bn_backward(a["dy3"], a["x3"], a["mean"], a["inv_std"], a["gamma"]),
                        [(A, C, B), (C,), (C,)]),
        "bn_inference": (lambda k: (k.bn_inference(a["x3"], a["gamma"], a["beta"], a["running_mean"],
                                                   a["running_var"], a["eps"]),), [(A, C, B)]),
        "ln_forward": (lambda k: k.ln_forward(a["x2"], a["gamma_k"], a["beta_k"], a["eps"]), [(A, K), (A,), (A,)]),
        "ln_backward": (lambda k: k.ln_backward(a["dy2"], a["x2"], a["mean_m"], a["inv_std_m"], a["gamma_k"]),
                        [(A, K), (K,), (K,)]),
        "gn_forward": (lambda k: k.gn_forward(a["x3"], a["gamma"], a["beta"], G, a["eps"]),
                       [(A, C, B), (A, G), (A, G)]),
        "gn_backward": (lambda k: k.gn_backward(a["dy3"], a["x3"], a["mean_ng"], a["inv_std_ng"], a["gamma"], G),
                        [(A, C, B), (C,), (C,)]),
    }


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fn", list(API))
@pytest.mark.parametrize("name", CPU_SETS)
def test_each_cpu_set_returns_what_the_interface_says_and_leaves_its_inputs_alone(name, fn, dtype, rng):
    kernels = _load(name)
    a = _arguments(rng, dtype)
    before = {k: v.copy() for k, v in a.items() if isinstance(v, np.ndarray)}
    call, shapes = _calls(a)[fn]
    results = call(kernels)
    assert [r.shape for r in results] == shapes
    data_like = fn not in ("bn_stats",)                 # the first result is y or dx, x's dtype
    for i, r in enumerate(results):
        assert r.dtype == (dtype if data_like and i == 0 else a["sd"]), f"result {i} of {fn}: {r.dtype}"
        assert all(not np.shares_memory(r, v) for v in before), f"result {i} of {fn} is a view of an input"
    for k, v in before.items():
        assert np.array_equal(a[k], v), f"{name}.{fn} modified its input {k}"


@pytest.mark.parametrize("norm", ["layer", "group"])
@pytest.mark.parametrize("name", CPU_SETS)
def test_each_cpu_set_gives_empty_results_for_an_empty_batch(name, norm):
    # as PyTorch does for N = 0: no error, outputs of shape (0, ...), zero parameter gradients
    import bnref

    _load(name)
    kind = {"bnref.reference": "reference", "bnref.kernels.numpy_bn": "numpy", "bnref.kernels.numba_bn": "numba"}[name]
    x = np.zeros((0, 8, 3, 3))
    gamma, beta = np.ones(8), np.zeros(8)
    with bnref.use_cpu_kernels(kind):
        if norm == "group":
            y, cache = bnref.groupnorm_forward(x, gamma, beta, num_groups=4)
            dx, dgamma, dbeta = bnref.groupnorm_backward(np.zeros_like(x), cache)
        else:
            y, cache = bnref.layernorm_forward(x, np.ones((8, 3, 3)), np.zeros((8, 3, 3)), normalized_ndim=3)
            dx, dgamma, dbeta = bnref.layernorm_backward(np.zeros_like(x), cache)
    assert y.shape == dx.shape == x.shape
    assert not dgamma.any() and not dbeta.any()
