"""How close results must be, in one table for the whole test suite.

Each entry says what is compared with what; the tests import them by name. (The autograder's
tolerance for students' answers is a different thing, a grading rule: it lives with the
grading, ``bnref.grading.exercise.TOLERANCE``.)
"""
import numpy as np

#: bnref against PyTorch computed in float64 on the same (possibly float32) input values, as
#: ``numpy.testing.assert_allclose`` arguments per input dtype; ``atol`` is multiplied by the
#: largest |expected| value, because entries that cancel to ~0 carry the rounding error of
#: their large neighbours. float32 differs from the exact answer by a few ulps times log(m).
ORACLE = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-11)}

#: float32 dx against the oracle: dx cancels terms of size gamma * inv_std * dy, and the
#: float32 rounding of x - mean is amplified by |x| * inv_std, so ``atol`` is this many times
#: that condition number (``tests/test_bnref_oracle.py`` computes it).
ORACLE_DX_FLOAT32 = dict(rtol=2e-4, atol_per_condition=1e-6)

#: a kernel set (tuned NumPy, Numba, CuPy, the CUDA emulator) against bnref.reference run in
#: float64 on the same rounded inputs: the largest error relative to the largest |reference|
#: value (or to the size of the terms, where the result cancels), per input dtype. The GPU
#: targets: float32 <= 1e-5, 16-bit <= 1e-2; float64 is held to near round-off.
KERNELS = {"float64": 1e-10, "float32": 1e-5, "float16": 1e-2, "bfloat16": 1e-2}
