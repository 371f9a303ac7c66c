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


@pytest.fixture(params=["numpy", "numba-threaded", "numba-serial"])
def cpu_kernels(request):
    """Run a test with the readable NumPy kernels and with both forms of the compiled Numba ones."""
    import bnref
    from bnref.kernels import numba_bn

    old, small = bnref.get_cpu_kernels(), numba_bn.SMALL
    bnref.set_cpu_kernels("numpy" if request.param == "numpy" else "numba")
    # Test inputs are small: choose the threaded or the serial kernels explicitly.
    numba_bn.SMALL = 0 if request.param == "numba-threaded" else 2**62
    yield request.param
    numba_bn.SMALL = small
    bnref.set_cpu_kernels(old)
