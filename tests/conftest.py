"""Shared test settings: a seeded RNG, the CPU kernel sets (tolerances: ``tolerances.py``) and
the built book's site for the tests that read it."""
import os
import zlib
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture
def rng(request):
    """A generator seeded from the test's name, so failures reproduce."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(params=["reference", "numpy", "numba-threaded", "numba-serial"])
def cpu_kernels(request):
    """Run a test with every CPU kernel set: the reference, tuned NumPy, and both forms of Numba."""
    import bnref
    from bnref.kernels import numba_bn

    old, small = bnref.get_cpu_kernels(), numba_bn.SMALL
    bnref.set_cpu_kernels(request.param.partition("-")[0])
    # Test inputs are small: choose the threaded or the serial kernels explicitly.
    numba_bn.SMALL = 0 if request.param == "numba-threaded" else 2**62
    yield request.param
    numba_bn.SMALL = small
    bnref.set_cpu_kernels(old)


@pytest.fixture(scope="session")
def site():
    """The built book (``_build/html``): a failure when it is missing, a skip with BOOK_OPTIONAL=1."""
    root = Path(__file__).resolve().parents[1] / "_build" / "html"
    if not (root / "index.html").exists():
        message = f"{root / 'index.html'} is missing: build the book first (make book)"
        if os.environ.get("BOOK_OPTIONAL") == "1":
            pytest.skip(message)
        pytest.fail(message)
    return root
