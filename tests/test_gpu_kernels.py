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


# ---- subnormals: CuPy compiles with -ftz=true --------------------------------------------------
#
# CuPy appends -ftz=true to every RawModule's options (cupy/cuda/compiler.py,
# _compile_with_cache_cuda), after the caller's, and NVRTC honours the last occurrence, so
# float32 arithmetic in these kernels flushes subnormal inputs and results to zero: bfloat16 and
# float32 values below 2**-126 (1.18e-38) in magnitude become 0 on the GPU. (float16 is not
# affected: its subnormals are normal floats; float64 is not either: -ftz is for float32 only.)
# PyTorch's kernels keep them. The tests below pin the flag (NVRTC, no GPU), show the kernels'
# own rounding is right when nothing flushes (the emulator: g++ does not flush), and pin what a
# GPU does (skips without one).

F32_TINY = float(np.finfo(np.float32).tiny)     # 2**-126, the smallest normal float32


def _nvrtc_ptx(name, options):
    """PTX of cuda/<name>.cu compiled by NVRTC for compute_90 with ``options``."""
    import ctypes
    import glob
    import os
    from test_cuda_compile import NVRTC
    if NVRTC is None:
        pytest.skip("libnvrtc not found (CUDA toolkit or pip nvidia-cuda-nvrtc)")
    for builtins in glob.glob(os.path.join(os.path.dirname(NVRTC), "libnvrtc-builtins.so*")):
        if ".alt." not in builtins:
            ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(NVRTC)
    from bnref.kernels import cupy_bn
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), cupy_bn.module_source(name).encode(),
                                  f"{name}.cu".encode(), 0, None, None) == 0
    try:
        for e in cupy_bn.NAME_EXPRESSIONS[name]:
            assert lib.nvrtcAddNameExpression(prog, e.encode()) == 0, e
        opts = [o.encode() for o in (*options, "--gpu-architecture=compute_90")]
        status = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        assert status == 0, log.value.decode(errors="replace")
        lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
        ptx = ctypes.create_string_buffer(size.value)
        assert lib.nvrtcGetPTX(prog, ptx) == 0
        return ptx.value.decode(), log.value.decode(errors="replace")
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def _f32_arithmetic(ptx):
    """(flushing, non-flushing) counts of float32 add/sub/mul/fma instructions in ``ptx``."""
    import re
    ops = re.findall(r"\b(?:add|sub|mul|fma)(?:\.rn|\.rz|\.rm|\.rp)?(\.ftz)?(?:\.sat)?\.f32\b", ptx)
    return sum(1 for o in ops if o), sum(1 for o in ops if not o)


def test_cupy_compile_flushes_float32_subnormals_and_our_options_cannot_undo_it():
    """What CuPy compiles (our options, then its -ftz=true) flushes; -ftz=false in our options
    would be overridden by CuPy's later -ftz=true (and warned about), so it is not there."""
    from bnref.kernels import cupy_bn
    assert not any("ftz" in o for o in cupy_bn.COMPILE_OPTIONS)
    as_cupy, _ = _nvrtc_ptx("bn_normalize", (*cupy_bn.COMPILE_OPTIONS, "-ftz=true"))
    flushing, keeping = _f32_arithmetic(as_cupy)
    assert flushing > 0 and keeping == 0, (flushing, keeping)
    overridden, log = _nvrtc_ptx("bn_normalize", (*cupy_bn.COMPILE_OPTIONS, "-ftz=false", "-ftz=true"))
    assert _f32_arithmetic(overridden) == (flushing, 0)
    assert "ftz" in log.lower()                     # NVRTC warns that one -ftz overrides another
    without, _ = _nvrtc_ptx("bn_normalize", cupy_bn.COMPILE_OPTIONS)  # what nvcc's default gives
    assert _f32_arithmetic(without) == (0, flushing)


def _subnormal_outputs_case(xp, dtype):
    """bn_inference inputs whose outputs y = x * scale (float32) span the float32 subnormal
    range, with a few normal ones; returns (y from the kernels, want as NumPy rounds it, the
    float32 values before rounding)."""
    from bnref.kernels import cupy_bn
    rng = np.random.default_rng(11)
    C = 4
    x = (rng.uniform(1e-10, 1e-8, (16, C, 32)) * rng.choice([-1, 1], (16, C, 32))).astype(dtype)
    gamma = np.array([1e-30, 3e-31, 7e-29, 1e-20], np.float32)   # the last channel stays normal
    zero, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
    y = cupy_bn.bn_inference(xp.asarray(x), xp.asarray(gamma), xp.asarray(zero), xp.asarray(zero),
                             xp.asarray(rv), 1e-5)
    f32 = np.float32
    scale = gamma * (f32(1) / np.sqrt(rv + f32(1e-5)))           # float32, as the kernels do
    exact = x.astype(f32) * scale[:, None]
    return np.asarray(y.get() if hasattr(y, "get") else y), exact.astype(dtype), exact


@pytest.mark.skipif(BFLOAT16 is None, reason="bfloat16 needs ml_dtypes (not installed)")
def test_kernels_round_subnormal_bfloat16_outputs_right_where_nothing_flushes(monkeypatch):
    """On the emulator (the host does not flush) subnormal bfloat16 outputs come out bit for
    bit as ml_dtypes rounds them: the flush on a GPU is the compile flag, not the kernels."""
    from test_gpu_emulator import use_emulator
    y, want, exact = _subnormal_outputs_case(use_emulator(monkeypatch), BFLOAT16)
    sub = (np.abs(exact) < F32_TINY) & (exact != 0)
    assert sub.mean() > 0.5 and np.any(want.astype(np.float32)[sub] != 0)
    assert np.array_equal(y.view(np.uint16), want.view(np.uint16))


@pytest.mark.gpu
def test_gpu_flushes_subnormal_bfloat16_outputs_to_zero():
    """Pins the GPU's behaviour: outputs below 2**-126 are (signed) zero, the rest as NumPy."""
    if CUPY is None:
        pytest.skip(NO_GPU_REASON)
    if BFLOAT16 is None:
        pytest.skip("bfloat16 needs ml_dtypes (not installed)")
    try:
        CUPY.asarray(np.zeros(2, BFLOAT16))
    except Exception as exc:
        pytest.skip(f"this CuPy has no bfloat16 arrays ({type(exc).__name__}: {exc})")
    y, want, exact = _subnormal_outputs_case(CUPY, BFLOAT16)
    sub = np.abs(exact) < F32_TINY
    assert sub.mean() > 0.5
    assert np.all(y.astype(np.float32)[sub] == 0), "subnormal outputs kept: has CuPy dropped -ftz=true?"
    assert np.array_equal(y.view(np.uint16)[~sub], want.view(np.uint16)[~sub])


# ---- channels-last views: taken as they are, results in the input's layout --------------------

def _channels_last(xp, host, perm_to_nchw):
    """``host`` (N, ..., C) on the backend, viewed with the channel axis at 1 (no copy)."""
    return xp.asarray(host).transpose(perm_to_nchw)


@pytest.mark.parametrize("shape_nhwc,perm", [((4, 5, 6, 3), (0, 3, 1, 2)), ((8, 7, 6), (0, 2, 1))],
                         ids=["NHWC as NCHW", "NLC as NCL"])
def test_channels_last_views_keep_their_layout_and_match_numpy(gpu, rng, shape_nhwc, perm):
    x_host, dy_host = rng.standard_normal(shape_nhwc) * 2 + 1, rng.standard_normal(shape_nhwc)
    C = shape_nhwc[-1]
    g, b = rng.uniform(0.5, 1.5, C), rng.standard_normal(C)
    rm, rv = rng.standard_normal(C), rng.uniform(0.5, 2, C)
    x, dy = _channels_last(gpu, x_host, perm), _channels_last(gpu, dy_host, perm)
    assert not x.flags.c_contiguous
    x_ref, dy_ref = np.ascontiguousarray(x_host.transpose(perm)), np.ascontiguousarray(dy_host.transpose(perm))
    y, cache = bnref.batchnorm_forward(x, gpu.asarray(g), gpu.asarray(b))
    y_ref, cache_ref = bnref.batchnorm_forward(x_ref, g, b)
    y_inf = bnref.batchnorm_inference(x, gpu.asarray(g), gpu.asarray(b), gpu.asarray(rm), gpu.asarray(rv))
    dx, dgamma, dbeta = bnref.batchnorm_backward(dy, cache)
    dx_ref, dg_ref, db_ref = bnref.batchnorm_backward(dy_ref, cache_ref)
    for got, want, what in ((y, y_ref, "y"), (y_inf, bnref.batchnorm_inference(x_ref, g, b, rm, rv), "y_inf"),
                            (dx, dx_ref, "dx")):
        assert got.shape == x.shape and got.strides == x.strides, f"{what}: strides {got.strides}, x's {x.strides}"
        np.testing.assert_allclose(got.get(), want, rtol=1e-10, atol=1e-12, err_msg=what)
    np.testing.assert_allclose(dgamma.get(), dg_ref, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(dbeta.get(), db_ref, rtol=1e-9, atol=1e-11)
    mean, var = bnref.batch_statistics(x)
    np.testing.assert_allclose(var.get(), bnref.batch_statistics(x_ref)[1], rtol=1e-10)


@pytest.mark.skipif(__import__("shutil").which("g++") is None, reason="g++ not found: the emulator needs it")
def test_channels_last_views_are_not_copied(monkeypatch, rng):
    """Every launch reads x (and a channels-last dy) where it lies, walking it as (N*H*W, C)
    rows: no copy to NCHW and back. On the emulator, launches record their array pointers."""
    import test_gpu_emulator as emu
    cp = emu.use_emulator(monkeypatch, as_cupy=True)
    launched = []
    call = emu._Kernel.__call__

    def recording(self, grid, block, args):
        launched.append((self.name, [a.ctypes.data for a in args if isinstance(a, np.ndarray)]))
        return call(self, grid, block, args)

    monkeypatch.setattr(emu._Kernel, "__call__", recording)
    x = _channels_last(cp, rng.standard_normal((4, 5, 6, 8)), (0, 3, 1, 2))
    dy = _channels_last(cp, rng.standard_normal((4, 5, 6, 8)), (0, 3, 1, 2))
    y, cache = bnref.batchnorm_forward(x, None, None)
    dx = bnref.batchnorm_backward(dy, cache)[0]
    bnref.batchnorm_inference(x, None, None, cp.zeros(8), cp.ones(8))
    reads_x = [(name, ptrs) for name, ptrs in launched if not name.startswith("bn_inference_params")]
    assert [n.split("<")[0] for n, _ in reads_x] == [
        "bn_stats_cols", "bn_normalize_cols", "bn_grad_cols", "bn_dx_cols", "bn_normalize_cols"]
    for name, ptrs in reads_x:
        if name.startswith(("bn_grad", "bn_dx")):
            assert ptrs[:2] == [dy.ctypes.data, x.ctypes.data], f"{name} read a copy"
        else:
            assert ptrs[0] == x.ctypes.data, f"{name} read a copy of x"
    assert y.strides == dx.strides == x.strides


# ---- reductions finished by their last block; the layer's running statistics ----------------

@pytest.mark.parametrize("layout", ["rows", "cols", "cols, B = 3"])
def test_reductions_finished_by_the_last_block_match_numpy_call_after_call(gpu, rng, layout):
    """Statistics and gradient sums of channels split over many blocks (on a GPU: thousands,
    running at once, so the last-block counters are raced for), three calls in a row on the
    same cached scratch, against NumPy."""
    big = gpu is CUPY
    shape = {"rows": (256, 3, 4096) if big else (32, 2, 512),
             "cols": (1 << 18, 64) if big else (1024, 24),
             "cols, B = 3": (1 << 16, 40, 3) if big else (512, 40, 3)}[layout]
    C = shape[1]
    for _ in range(3):
        x, dy = rng.standard_normal(shape) * 2 + 3, rng.standard_normal(shape)
        g = rng.uniform(0.5, 1.5, C)
        y, cache = bnref.batchnorm_forward(gpu.asarray(x), gpu.asarray(g), None)
        y_ref, cache_ref = bnref.batchnorm_forward(x, g, None)
        np.testing.assert_allclose(cache.mean.get(), cache_ref.mean, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(cache.var.get(), cache_ref.var, rtol=1e-11)
        np.testing.assert_allclose(y.get(), y_ref, rtol=1e-10, atol=1e-11)
        grads = bnref.batchnorm_backward(gpu.asarray(dy), cache)
        for got, want, what in zip(grads, bnref.batchnorm_backward(dy, cache_ref), ("dx", "dgamma", "dbeta")):
            np.testing.assert_allclose(got.get(), want, rtol=1e-9, atol=1e-9 * np.sqrt(x.size / C), err_msg=what)


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum 0.1", "cumulative"])
def test_layer_training_steps_on_the_gpu_keep_running_statistics_like_numpy(gpu, rng, momentum):
    """The running statistics come from the statistics kernel on the GPU (float64 layer and
    input: no host update); step after step they equal the NumPy layer's."""
    C = 6
    on_gpu, on_cpu = bnref.BatchNorm2d(C, momentum=momentum), bnref.BatchNorm2d(C, momentum=momentum)
    on_gpu.gamma, on_gpu.beta = gpu.asarray(on_cpu.gamma), gpu.asarray(on_cpu.beta)
    on_gpu.running_mean, on_gpu.running_var = gpu.asarray(on_cpu.running_mean), gpu.asarray(on_cpu.running_var)
    for step in range(4):
        x = rng.standard_normal((8, C, 5, 7)) * (step + 1) + step
        y_gpu, y_cpu = on_gpu(gpu.asarray(x)), on_cpu(x)
        np.testing.assert_allclose(y_gpu.get(), y_cpu, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(on_gpu.running_mean.get(), on_cpu.running_mean, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(on_gpu.running_var.get(), on_cpu.running_var, rtol=1e-12)
    y_eval = on_gpu.eval()(gpu.asarray(x))
    np.testing.assert_allclose(y_eval.get(), on_cpu.eval()(x), rtol=1e-10, atol=1e-12)
