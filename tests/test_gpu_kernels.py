"""Every kernel set against the reference: one test body per kernel, on every backend.

Each case feeds the same values to the kernel set under test (the reference itself, tuned
NumPy, Numba threaded and serial, the CUDA sources on the CPU emulator, CuPy with a GPU) and
to :mod:`bnref.reference` in float64 (which tests/test_bnref_oracle.py checks against
PyTorch). The reference sees the inputs *after* rounding to the tested dtype, so only the
kernel's own error is measured. CuPy cases skip, saying why, where CuPy cannot be imported
or sees no CUDA device.
"""
import numpy as np
import pytest

import bnref
from bnref import reference
from bnref.kernels import numpy_bn
from tolerances import KERNELS as TOL

try:
    import ml_dtypes
    BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # bfloat16 cases then skip
    ml_dtypes = None
    BFLOAT16 = None


def _cupy_or_reason():
    try:
        import cupy
    except Exception as exc:  # ImportError, or a CUDA library that fails to load
        return None, f"no CUDA device / CuPy not importable ({type(exc).__name__}: {exc})"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None, "no CUDA device (CuPy imported, 0 devices)"
    except Exception as exc:
        return None, f"no CUDA device / CuPy cannot reach the driver ({type(exc).__name__}: {exc})"
    return cupy, None


CUPY, NO_GPU_REASON = _cupy_or_reason()

# "emulated" runs the CUDA sources on the CPU (tests/test_gpu_emulator.py): the kernels'
# logic and the wrappers, without a GPU.
CASES = [("reference", "float32"), ("reference", "float64"),
         ("numpy", "float32"), ("numpy", "float64"),
         ("numba-threaded", "float32"), ("numba-threaded", "float64"),
         ("numba-serial", "float32"), ("numba-serial", "float64"),
         ("emulated", "float16"), ("emulated", "bfloat16"),
         ("emulated", "float32"), ("emulated", "float64"),
         ("cupy", "float16"), ("cupy", "bfloat16"), ("cupy", "float32"), ("cupy", "float64")]


class Backend:
    """xp (numpy or cupy), the kernel module, and the dtype under test."""

    def __init__(self, name, dtype_name, monkeypatch):
        if name == "cupy" and CUPY is None:
            pytest.skip(NO_GPU_REASON)
        if dtype_name == "bfloat16" and BFLOAT16 is None:
            pytest.skip("bfloat16 needs ml_dtypes (not installed)")
        self.name, self.dtype_name = name, dtype_name
        self.dtype = BFLOAT16 if dtype_name == "bfloat16" else np.dtype(dtype_name)
        if name == "reference":
            self.xp, self.kernels = np, reference
        elif name == "numpy":
            self.xp, self.kernels = np, numpy_bn
        elif name.startswith("numba"):
            numba_bn = pytest.importorskip("bnref.kernels.numba_bn", reason="numba is not installed")
            # the inputs here are small: choose the threaded or the serial kernels explicitly
            monkeypatch.setattr(numba_bn, "SMALL", 0 if name == "numba-threaded" else 2**62)
            self.xp, self.kernels = np, numba_bn
        elif name == "emulated":
            from bnref.kernels import cupy_bn
            from test_gpu_emulator import use_emulator
            self.xp, self.kernels = use_emulator(monkeypatch), cupy_bn
        else:
            from bnref.kernels import cupy_bn
            self.xp, self.kernels = CUPY, cupy_bn
            if dtype_name == "bfloat16":
                try:
                    CUPY.asarray(np.zeros(2, BFLOAT16))
                except Exception as exc:
                    pytest.skip(f"this CuPy has no bfloat16 arrays ({type(exc).__name__}: {exc})")
        self.acc = np.dtype(np.float32) if self.dtype.itemsize < 4 else self.dtype

    def data(self, values):
        """(array for the backend in the tested dtype, the same values in float64 on the host)."""
        rounded = np.asarray(values).astype(self.dtype)
        return self.xp.asarray(rounded), rounded.astype(np.float64)

    def param(self, values):
        """A parameter vector in the statistics dtype, and its float64 host copy."""
        rounded = np.asarray(values).astype(self.acc)
        return self.xp.asarray(rounded), rounded.astype(np.float64)

    def host(self, a):
        a = a.get() if self.xp is not np else a
        return np.asarray(a).astype(np.float64)

    def check(self, got, want, what, scale=0.0):
        """Max error relative to max(|want|, scale) within TOL.

        ``scale`` is the size of the terms that make up ``want`` where it can be much smaller
        than they are (a mean near 0, a sum or a dx that cancels); the error of any
        floating-point evaluation is proportional to the terms, not to their sum.
        """
        got = self.host(got)
        assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
        assert np.all(np.isfinite(got)), f"{what}: non-finite values"
        err = np.max(np.abs(got - want)) / max(np.max(np.abs(want)), scale, 1e-30)
        assert err <= TOL[self.dtype_name], (
            f"{what} ({self.name}, {self.dtype_name}): max error {err:.3g} relative to "
            f"max(|reference|, {scale:.3g}), tolerance {TOL[self.dtype_name]:g}")


@pytest.fixture(params=[pytest.param(c, id=f"{c[0]}-{c[1]}",
                                     marks=[pytest.mark.gpu] if c[0] == "cupy" else [])
                        for c in CASES])
def be(request, monkeypatch):
    return Backend(*request.param, monkeypatch)


# (A, C, B) views: both layouts, with and without 16-byte vectors, several splits per channel,
# columns of one vector spanning two channels (B = 3), odd sizes.
BN_SHAPES = [(64, 8, 1), (7, 5, 1), (1000, 24, 1), (16, 4, 3), (33, 6, 2),
             (4, 6, 49), (8, 3, 64), (2, 3, 1000), (40, 2, 784)]


def _bn_inputs(be, rng, shape, loc=0.0):
    A, C, B = shape
    x, x64 = be.data(loc + rng.standard_normal(shape) * rng.uniform(0.5, 2.0, (1, C, 1)))
    gamma, g64 = be.param(rng.uniform(0.5, 1.5, C))
    beta, b64 = be.param(rng.standard_normal(C))
    return x, x64, gamma, g64, beta, b64


@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
def test_bn_forward_train_matches_float64(be, rng, shape):
    x, x64, gamma, g64, beta, b64 = _bn_inputs(be, rng, shape)
    y, mean, var, inv_std = be.kernels.bn_forward_train(x, gamma, beta, 1e-5)
    y_ref, mean_ref, var_ref, inv_ref = reference.bn_forward_train(x64, g64, b64, 1e-5)
    assert y.dtype == be.dtype and mean.dtype == var.dtype == inv_std.dtype == be.acc
    be.check(y, y_ref, "y")
    be.check(mean, mean_ref, "mean", scale=np.abs(x64).mean(axis=(0, 2)).max())
    be.check(var, var_ref, "var")
    be.check(inv_std, inv_ref, "inv_std")


@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
def test_bn_backward_matches_float64(be, rng, shape):
    x, x64, gamma, g64, _, _ = _bn_inputs(be, rng, shape)
    dy, dy64 = be.data(rng.standard_normal(shape))
    _, mean_ref, _, inv_ref = reference.bn_forward_train(x64, g64, 0 * g64, 1e-5)
    mean, _ = be.param(mean_ref)
    inv_std, _ = be.param(inv_ref)
    dx, dgamma, dbeta = be.kernels.bn_backward(dy, x, mean, inv_std, gamma)
    dx_ref, dg_ref, db_ref = reference.bn_backward(dy64, x64, be.host(mean), be.host(inv_std), g64)
    assert dx.dtype == be.dtype
    x_hat = (x64 - mean_ref[:, None]) * inv_ref[:, None]
    be.check(dx, dx_ref, "dx", scale=np.max(np.abs(g64 * inv_ref)) * np.max(np.abs(dy64)))
    be.check(dgamma, dg_ref, "dgamma", scale=np.abs(dy64 * x_hat).sum(axis=(0, 2)).max())
    be.check(dbeta, db_ref, "dbeta", scale=np.abs(dy64).sum(axis=(0, 2)).max())


@pytest.mark.parametrize("shape", [(64, 8, 1), (4, 6, 49), (8, 3, 64)], ids=str)
def test_bn_inference_matches_float64(be, rng, shape):
    x, x64, gamma, g64, beta, b64 = _bn_inputs(be, rng, shape)
    C = shape[1]
    rm, rm64 = be.param(rng.standard_normal(C))
    rv, rv64 = be.param(rng.uniform(0.5, 2.0, C))
    y = be.kernels.bn_inference(x, gamma, beta, rm, rv, 1e-5)
    assert y.dtype == be.dtype
    be.check(y, reference.bn_inference(x64, g64, b64, rm64, rv64, 1e-5), "y")


@pytest.mark.parametrize("shape", [(256, 3, 1), (8, 3, 64)], ids=str)
def test_bn_statistics_stable_when_mean_dwarfs_std(be, rng, shape):
    """|mean| / std = 1e3: E[x^2] - E[x]^2 would lose every digit of float32 here."""
    if be.dtype.itemsize < 4:
        pytest.skip("16-bit types cannot hold 1000 + N(0, 1) to better than ~0.5")
    x, x64, gamma, g64, beta, b64 = _bn_inputs(be, rng, shape, loc=1000.0)
    _, mean, var, _ = be.kernels.bn_forward_train(x, gamma, beta, 1e-5)
    be.check(var, x64.var(axis=(0, 2)), "var")
    be.check(mean, x64.mean(axis=(0, 2)), "mean")  # |mean| ~ 1000 is its own scale


LN_SHAPES = [(1, 7), (33, 64), (16, 1000), (4, 3000)]


@pytest.mark.parametrize("shape", LN_SHAPES, ids=str)
def test_ln_forward_and_backward_match_float64(be, rng, shape):
    M, K = shape
    x, x64 = be.data(rng.standard_normal(shape) * 2 + 0.5)
    dy, dy64 = be.data(rng.standard_normal(shape))
    gamma, g64 = be.param(rng.uniform(0.5, 1.5, K))
    beta, b64 = be.param(rng.standard_normal(K))
    y, mean, inv_std = be.kernels.ln_forward(x, gamma, beta, 1e-5)
    y_ref, mean_ref, inv_ref = reference.ln_forward(x64, g64, b64, 1e-5)
    assert y.dtype == be.dtype and mean.shape == inv_std.shape == (M,)
    be.check(y, y_ref, "y")
    be.check(mean, mean_ref, "mean", scale=np.abs(x64).mean(axis=1).max())
    be.check(inv_std, inv_ref, "inv_std")
    dx, dgamma, dbeta = be.kernels.ln_backward(dy, x, mean, inv_std, gamma)
    mean64, inv64 = be.host(mean), be.host(inv_std)
    dx_ref, dg_ref, db_ref = reference.ln_backward(dy64, x64, mean64, inv64, g64)
    x_hat = (x64 - mean64[:, None]) * inv64[:, None]
    be.check(dx, dx_ref, "dx", scale=np.max(np.abs(g64)) * np.max(inv64) * np.max(np.abs(dy64)))
    be.check(dgamma, dg_ref, "dgamma", scale=np.abs(dy64 * x_hat).sum(axis=0).max())
    be.check(dbeta, db_ref, "dbeta", scale=np.abs(dy64).sum(axis=0).max())


GN_CASES = [((4, 6, 1), 3), ((2, 8, 49), 4), ((3, 4, 64), 1), ((2, 6, 100), 6)]


@pytest.mark.parametrize("shape,G", GN_CASES, ids=str)
def test_gn_forward_and_backward_match_float64(be, rng, shape, G):
    N, C, L = shape
    x, x64 = be.data(rng.standard_normal(shape) * 1.5 - 0.3)
    dy, dy64 = be.data(rng.standard_normal(shape))
    gamma, g64 = be.param(rng.uniform(0.5, 1.5, C))
    beta, b64 = be.param(rng.standard_normal(C))
    y, mean, inv_std = be.kernels.gn_forward(x, gamma, beta, G, 1e-5)
    y_ref, mean_ref, inv_ref = reference.gn_forward(x64, g64, b64, G, 1e-5)
    assert y.dtype == be.dtype and mean.shape == inv_std.shape == (N, G)
    be.check(y, y_ref, "y")
    be.check(mean, mean_ref, "mean", scale=np.abs(x64).mean(axis=(1, 2)).max())
    be.check(inv_std, inv_ref, "inv_std")
    dx, dgamma, dbeta = be.kernels.gn_backward(dy, x, mean, inv_std, gamma, G)
    mean64, inv64 = be.host(mean), be.host(inv_std)
    dx_ref, dg_ref, db_ref = reference.gn_backward(dy64, x64, mean64, inv64, g64, G)
    x_hat = ((x64.reshape(N, G, -1) - mean64[..., None]) * inv64[..., None]).reshape(shape)
    be.check(dx, dx_ref, "dx", scale=np.max(np.abs(g64)) * np.max(inv64) * np.max(np.abs(dy64)))
    be.check(dgamma, dg_ref, "dgamma", scale=np.abs(dy64 * x_hat).sum(axis=(0, 2)).max())
    be.check(dbeta, db_ref, "dbeta", scale=np.abs(dy64).sum(axis=(0, 2)).max())


# ---- the public API on CuPy arrays ---------------------------------------------------------

@pytest.fixture(params=["emulated", pytest.param("cupy", marks=pytest.mark.gpu)])
def gpu(request, monkeypatch):
    """The CuPy module: real (needs a GPU) or the CPU emulation standing in for it."""
    if request.param == "cupy":
        if CUPY is None:
            pytest.skip(NO_GPU_REASON)
        return CUPY
    from test_gpu_emulator import use_emulator
    return use_emulator(monkeypatch, as_cupy=True)


@pytest.mark.parametrize("axis,shape", [(1, (8, 4, 5, 6)), (-1, (8, 5, 6, 4)), (1, (32, 4))])
def test_batchnorm_on_cupy_arrays_returns_cupy_arrays_equal_to_numpy(gpu, rng, axis, shape):
    cp = gpu
    C = shape[axis]
    x = rng.standard_normal(shape)
    gamma, beta = rng.uniform(0.5, 1.5, C), rng.standard_normal(C)
    dy = rng.standard_normal(shape)
    y_gpu, cache_gpu = bnref.batchnorm_forward(cp.asarray(x), cp.asarray(gamma), cp.asarray(beta),
                                               axis=axis)
    y_cpu, cache_cpu = bnref.batchnorm_forward(x, gamma, beta, axis=axis)
    assert isinstance(y_gpu, cp.ndarray) and y_gpu.shape == shape
    np.testing.assert_allclose(y_gpu.get(), y_cpu, rtol=1e-10, atol=1e-12)
    grads_gpu = bnref.batchnorm_backward(cp.asarray(dy), cache_gpu)
    for g_gpu, g_cpu in zip(grads_gpu, bnref.batchnorm_backward(dy, cache_cpu)):
        assert isinstance(g_gpu, cp.ndarray)
        np.testing.assert_allclose(g_gpu.get(), g_cpu, rtol=1e-9, atol=1e-11)
    rm, rv = rng.standard_normal(C), rng.uniform(0.5, 2, C)
    y_inf = bnref.batchnorm_inference(cp.asarray(x), cp.asarray(gamma), cp.asarray(beta),
                                      cp.asarray(rm), cp.asarray(rv), axis=axis)
    assert isinstance(y_inf, cp.ndarray)
    np.testing.assert_allclose(y_inf.get(), bnref.batchnorm_inference(x, gamma, beta, rm, rv, axis=axis),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("axis", [1, -1])
def test_batch_statistics_on_cupy_arrays(gpu, rng, axis):
    x = rng.standard_normal((6, 3, 4, 5)) * 2 + 7
    mean, var = bnref.batch_statistics(gpu.asarray(x), axis=axis)
    mean_ref, var_ref = bnref.batch_statistics(x, axis=axis)
    assert isinstance(mean, gpu.ndarray)
    np.testing.assert_allclose(mean.get(), mean_ref, rtol=1e-12)
    np.testing.assert_allclose(var.get(), var_ref, rtol=1e-10)


def test_layernorm_and_groupnorm_on_cupy_arrays_return_cupy_arrays(gpu, rng):
    cp = gpu
    x = rng.standard_normal((4, 6, 5, 5))
    dy = rng.standard_normal(x.shape)
    gamma, beta = rng.uniform(0.5, 1.5, 6), rng.standard_normal(6)
    y, cache = bnref.groupnorm_forward(cp.asarray(x), cp.asarray(gamma), cp.asarray(beta), 3)
    y_ref, cache_ref = bnref.groupnorm_forward(x, gamma, beta, 3)
    assert isinstance(y, cp.ndarray)
    np.testing.assert_allclose(y.get(), y_ref, rtol=1e-10, atol=1e-12)
    for g, g_ref in zip(bnref.groupnorm_backward(cp.asarray(dy), cache),
                        bnref.groupnorm_backward(dy, cache_ref)):
        np.testing.assert_allclose(g.get(), g_ref, rtol=1e-9, atol=1e-11)
    y, cache = bnref.layernorm_forward(cp.asarray(x), None, None, normalized_ndim=2)
    y_ref, cache_ref = bnref.layernorm_forward(x, None, None, normalized_ndim=2)
    assert isinstance(y, cp.ndarray)
    np.testing.assert_allclose(y.get(), y_ref, rtol=1e-10, atol=1e-12)
    dx = bnref.layernorm_backward(cp.asarray(dy), cache)[0]
    np.testing.assert_allclose(dx.get(), bnref.layernorm_backward(dy, cache_ref)[0],
                               rtol=1e-9, atol=1e-11)


@pytest.mark.gpu
def test_float16_batchnorm_keeps_float16_output_and_float32_statistics(rng):
    if CUPY is None:
        pytest.skip(NO_GPU_REASON)
    cp = CUPY
    x = cp.asarray(rng.standard_normal((16, 8, 7, 7)).astype(np.float16))
    y, cache = bnref.batchnorm_forward(x, None, None)
    assert y.dtype == cp.float16 and cache.mean.dtype == cp.float32


def test_importing_bnref_does_not_import_cupy():
    """CPU-only machines never need CuPy: importing bnref and its CuPy kernel module is free."""
    import subprocess
    import sys
    code = ("import sys, bnref, bnref.kernels.cupy_bn; "
            "assert 'cupy' not in sys.modules, 'cupy imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- no channels: every backend returns empty results, as the CPU always did ---------------

@pytest.mark.parametrize("B", [1, 49])
def test_bn_with_no_channels_returns_empty_results_on_every_backend(be, B):
    x, _ = be.data(np.zeros((6, 0, B)))
    gamma, _ = be.param(np.zeros(0))
    y, mean, var, inv_std = be.kernels.bn_forward_train(x, gamma, gamma, 1e-5)
    assert y.shape == (6, 0, B) and mean.shape == var.shape == inv_std.shape == (0,)
    dx, dgamma, dbeta = be.kernels.bn_backward(x, x, mean, inv_std, gamma)
    assert dx.shape == (6, 0, B) and dgamma.shape == dbeta.shape == (0,)
    assert be.kernels.bn_inference(x, gamma, gamma, gamma, gamma, 1e-5).shape == (6, 0, B)
    assert [a.shape for a in be.kernels.bn_stats(x)] == [(0,), (0,)]
    assert y.dtype == dx.dtype == be.dtype


# ---- the device an array lives on ---------------------------------------------------------

def _second_gpu(gpu):
    """(index of a second device, its context manager factory); skips with a reason if none."""
    if gpu is CUPY:
        if CUPY.cuda.runtime.getDeviceCount() < 2:
            pytest.skip("one CUDA device: the other-device tests need two")
    return 1, gpu.cuda.Device


def test_arrays_on_another_gpu_than_the_current_one_are_computed_there(gpu, rng):
    """Every kernel launch runs on x's device (the emulator asserts it at each launch)."""
    other, Device = _second_gpu(gpu)
    x, dy = rng.standard_normal((16, 3, 5)), rng.standard_normal((16, 3, 5))
    with Device(other):
        x_d, dy_d, g_d, b_d = (gpu.asarray(a) for a in (x, dy, np.ones(3), np.zeros(3)))
        rm_d, rv_d = gpu.asarray(np.zeros(3)), gpu.asarray(np.ones(3))
    assert gpu.cuda.runtime.getDevice() != other                      # another device is current
    y, cache = bnref.batchnorm_forward(x_d, g_d, b_d)
    dx, dgamma, dbeta = bnref.batchnorm_backward(dy_d, cache)
    y_inf = bnref.batchnorm_inference(x_d, g_d, b_d, rm_d, rv_d)
    new_rm, new_rv = bnref.running_stats_update(rm_d, rv_d, x_d)
    yl, cl = bnref.layernorm_forward(x_d, None, None)
    for a in (y, dx, dgamma, dbeta, y_inf, new_rm, yl, bnref.layernorm_backward(dy_d, cl)[0]):
        assert a.device.id == other
    y_ref, cache_ref = bnref.batchnorm_forward(x, np.ones(3), np.zeros(3))
    np.testing.assert_allclose(y.get(), y_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx.get(), bnref.batchnorm_backward(dy, cache_ref)[0], rtol=1e-9, atol=1e-11)


def test_parameters_on_another_gpu_than_x_are_refused_naming_both(gpu, rng):
    other, Device = _second_gpu(gpu)
    x = gpu.asarray(rng.standard_normal((16, 3)))
    with Device(other):
        gamma = gpu.asarray(np.ones(3))
    here = gpu.cuda.runtime.getDevice()
    with pytest.raises(ValueError, match=rf"^gamma on GPU {other}, but x on GPU {here}; expected every array"):
        bnref.batchnorm_forward(x, gamma, None)
    y, cache = bnref.batchnorm_forward(x, None, None)
    with Device(other):
        dy = gpu.asarray(np.ones((16, 3)))
    with pytest.raises(ValueError, match=rf"dy on GPU {other}, but cache.x on GPU {here}"):
        bnref.batchnorm_backward(dy, cache)
