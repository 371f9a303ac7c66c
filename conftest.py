"""pytest settings for the doctests collected from the package (``make test-unit`` runs
``pytest --doctest-modules bnref``); the tests' own settings are in ``tests/conftest.py``."""
import importlib.util

collect_ignore = []
if importlib.util.find_spec("numba") is None:
    collect_ignore.append("bnref/kernels/numba_bn.py")      # the compiled kernels need numba to import
