"""Shared test settings: per-dtype tolerances and a seeded RNG."""
import zlib

import numpy as np
import pytest

# Tolerances against the float64-accurate oracle. float32 differs from PyTorch's float32 in
# summation order only, so a few ulps times log(m) of relative error is expected.
TOL = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-11)}


@pytest.fixture
def rng(request):
    """A generator seeded from the test's name, so failures reproduce."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(params=["numpy", "numba"])
def cpu_kernels(request):
    """Run a test once with the readable NumPy kernels and once with the compiled Numba ones."""
    import bnref

    old = bnref.get_cpu_kernels()
    bnref.set_cpu_kernels(request.param)
    if request.param == "numba":
        from bnref.kernels import numba_bn

        # The test inputs are small; force the compiled kernels instead of the small-size fallback.
        small, numba_bn.SMALL = numba_bn.SMALL, 0
    yield request.param
    if request.param == "numba":
        numba_bn.SMALL = small
    bnref.set_cpu_kernels(old)
