"""A missing optional dependency says what to install; the CPU-kernel switch checks its input."""
import os
import subprocess
import sys

import pytest

import bnref
from bnref import _optional


@pytest.fixture
def without(monkeypatch):
    """Make modules unimportable, as if they were not installed."""
    def hide(*names):
        for name in names:
            for m in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
                monkeypatch.delitem(sys.modules, m)
            monkeypatch.setitem(sys.modules, name, None)
    return hide


def test_the_digits_without_scikit_learn(without):
    without("sklearn")
    from bnref.data import load_digits
    with pytest.raises(ModuleNotFoundError, match=r'needs scikit-learn.*pip install "bnref\[course\]"'):
        load_digits()


def test_a_widget_figure_without_matplotlib(without):
    without("matplotlib")
    from bnref.widgets import Slider, slider_figure
    with pytest.raises(ImportError, match=r'needs matplotlib.*pip install "bnref\[course\]"'):
        slider_figure(lambda fig, a: None, Slider("a", [1, 2]))


def test_the_error_is_still_an_import_error_for_code_that_catches_one(without):
    without("sklearn")
    with pytest.raises(ImportError):
        _optional.require("sklearn.datasets", "x")


def test_a_problem_inside_an_installed_package_is_not_disguised():
    with pytest.raises(ModuleNotFoundError) as e:
        _optional.require("numpy.no_such_submodule", "x")
    assert "pip install" not in str(e.value)


@pytest.mark.parametrize("name, error, words", [
    ("fast", ValueError, "must be one of ('numpy', 'numba')"),
    (3, TypeError, "must be a str"),
])
def test_set_cpu_kernels_rejects_unknown_names(name, error, words):
    with pytest.raises(error) as e:
        bnref.set_cpu_kernels(name)
    assert words in str(e.value) and "set_cpu_kernels(name)" in str(e.value)


def test_set_cpu_kernels_is_case_insensitive():
    old = bnref.get_cpu_kernels()
    try:
        assert bnref.set_cpu_kernels(" NumPy ") == "numpy"
    finally:
        bnref.set_cpu_kernels(old)


def test_numba_without_numba_fails_at_the_switch_not_at_the_first_call(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "numba" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r'pip install "bnref\[numba\]"'):
        bnref.set_cpu_kernels("numba")


@pytest.mark.parametrize("value, ok, out", [("Numba", True, "numba"), ("NUMPY", True, "numpy"),
                                             ("fast", False, "BNREF_CPU_KERNELS")])
def test_the_environment_variable_is_read_case_insensitively_and_checked(value, ok, out):
    res = subprocess.run([sys.executable, "-c", "import bnref; print(bnref.get_cpu_kernels())"],
                         env={**os.environ, "BNREF_CPU_KERNELS": value}, capture_output=True, text=True)
    assert (res.returncode == 0) == ok
    assert out in (res.stdout if ok else res.stderr)
