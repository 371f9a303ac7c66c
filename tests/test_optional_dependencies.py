"""A missing optional dependency says what to install; the CPU-kernel switch checks its input.

Each test makes a package unimportable as if it were not installed (``sys.modules[name] =
None``, restored afterwards by monkeypatch), then calls the entry point that needs it.
"""
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

import bnref
from bnref import _optional

ROOT = Path(__file__).resolve().parents[1]
COURSE = r'pip install "bnref\[course\]"'


@pytest.fixture
def without(monkeypatch):
    """``without("sklearn", ...)``: make packages unimportable, as if they were not installed."""
    def hide(*names):
        for name in names:
            for m in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
                monkeypatch.delitem(sys.modules, m)
            monkeypatch.setitem(sys.modules, name, None)
    return hide


@pytest.fixture
def kernels(monkeypatch):
    """Restore the CPU kernels chosen before the test (without re-checking that they import)."""
    monkeypatch.setattr(bnref.backend, "_CPU_KERNELS", bnref.backend._CPU_KERNELS)


def _draw(fig, a):
    fig.subplots().plot([0, a])


# ---------------------------------------------------------------- each entry point names its extra

def test_the_digits_without_scikit_learn(without):
    without("sklearn")
    from bnref.data import load_digits
    with pytest.raises(ModuleNotFoundError,
                       match=rf"^bnref.data.load_digits needs scikit-learn, which is not installed: {COURSE}$"):
        load_digits()


def test_a_widget_figure_without_matplotlib(without):
    without("matplotlib")
    from bnref.widgets import Slider, slider_figure
    with pytest.raises(ModuleNotFoundError, match=rf"needs matplotlib, which is not installed: {COURSE}"):
        slider_figure(_draw, Slider("a", [1, 2]))


def test_the_live_view_without_ipywidgets_names_the_extra_and_the_static_view_still_works(without):
    from bnref.widgets import Slider, slider_figure
    w = slider_figure(_draw, Slider("a", [1, 2]), figsize=(1, 1), dpi=20)
    without("ipywidgets")
    with pytest.raises(ModuleNotFoundError, match=rf"needs ipywidgets, which is not installed: {COURSE}"):
        w.widget()
    bundle = w._repr_mimebundle_()           # a static page has no kernel and no ipywidgets
    assert "text/html" in bundle and "application/vnd.jupyter.widget-view+json" not in bundle


def test_the_error_is_still_an_import_error_for_code_that_catches_one(without):
    without("sklearn")
    from bnref.data import load_digits
    try:
        load_digits()
    except ImportError as e:                 # what code written before this change catches
        assert e.name.partition(".")[0] == "sklearn"
    else:
        pytest.fail("load_digits() worked without scikit-learn")


def test_numba_kernels_gone_missing_after_the_switch_name_the_extra(without, kernels, monkeypatch):
    bnref.set_cpu_kernels("numba")           # numba is there at the switch...
    without("numba")
    monkeypatch.delitem(sys.modules, "bnref.kernels.numba_bn", raising=False)   # as if never imported
    x = np.ones((4, 3))
    with pytest.raises(ModuleNotFoundError, match=r'needs numba, which is not installed: pip install "bnref\[numba\]"'):
        bnref.batchnorm_forward(x, None, None)   # ...and gone at the first call


def test_cupy_missing_names_both_gpu_extras(without):
    without("cupy")
    with pytest.raises(ModuleNotFoundError, match=r'cupy-cuda13x .*pip install "bnref\[gpu\]"'):
        _optional.require("cupy", "the GPU kernels")


def test_a_problem_inside_an_installed_package_is_not_disguised():
    with pytest.raises(ModuleNotFoundError) as e:
        _optional.require("numpy.no_such_submodule", "x")
    assert "pip install" not in str(e.value)


def test_every_extra_named_in_an_error_is_declared_and_installs_the_package():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for module, (package, extra) in _optional.EXTRAS.items():
        assert extra in declared, f"the error for {module} names bnref[{extra}], which pyproject.toml lacks"
        first = package.split()[0]           # "cupy-cuda13x (or cupy-cuda12x)"
        assert any(r.startswith(first) for r in declared[extra]), f"bnref[{extra}] does not install {first}"


def test_importing_bnref_needs_none_of_the_optional_packages():
    hidden = ["matplotlib", "ipywidgets", "sklearn", "numba", "cupy", "PIL"]
    code = ("import sys\n"
            f"for m in {hidden!r}: sys.modules[m] = None\n"
            "import bnref, bnref.data, bnref.mlp, bnref.widgets, bnref.experiments\n"
            "print(bnref.get_cpu_kernels())")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "BNREF_CPU_KERNELS": ""}, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "numpy"


# ---------------------------------------------------------------- set_cpu_kernels checks its argument

def test_set_cpu_kernels_rejects_an_unknown_name_naming_the_argument_the_value_and_the_choices(kernels):
    bnref.set_cpu_kernels("numpy")
    with pytest.raises(ValueError) as e:
        bnref.set_cpu_kernels("fast")
    assert "set_cpu_kernels(name)" in str(e.value) and "'fast'" in str(e.value)
    assert "('numba', 'numpy', 'reference')" in str(e.value)
    assert bnref.get_cpu_kernels() == "numpy"          # a refused switch changes nothing


@pytest.mark.parametrize("name", [3, None, b"numba"])
def test_set_cpu_kernels_rejects_what_is_not_a_str(name):
    with pytest.raises(TypeError, match=r"set_cpu_kernels\(name\) must be a str"):
        bnref.set_cpu_kernels(name)


@pytest.mark.parametrize("name, expected", [(" NumPy ", "numpy"), ("NUMBA", "numba"), ("numba", "numba")])
def test_set_cpu_kernels_is_case_insensitive(name, expected, kernels):
    assert bnref.set_cpu_kernels(name) == expected
    assert bnref.get_cpu_kernels() == expected


def test_numba_without_numba_fails_at_the_switch_not_at_the_first_call(without, kernels):
    bnref.set_cpu_kernels("numpy")
    without("numba")
    with pytest.raises(ModuleNotFoundError, match=r'needs numba, which is not installed: pip install "bnref\[numba\]"'):
        bnref.set_cpu_kernels("numba")
    assert bnref.get_cpu_kernels() == "numpy"


# ---------------------------------------------------------------- the environment variable

def _import_bnref(value, prelude=""):
    """``import bnref`` in a fresh interpreter with ``BNREF_CPU_KERNELS=value``."""
    code = prelude + "import bnref; print(bnref.get_cpu_kernels())"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "BNREF_CPU_KERNELS": value})


@pytest.mark.parametrize("value, expected", [("Numba", "numba"), ("NUMPY", "numpy"), (" numba\n", "numba"),
                                             ("Reference", "reference"), ("", bnref.backend.default_cpu_kernels())])
def test_the_environment_variable_is_read_case_insensitively(value, expected):
    res = _import_bnref(value)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == expected


def test_an_unknown_value_of_the_environment_variable_is_an_error_at_import():
    res = _import_bnref("fast")
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError: the environment variable BNREF_CPU_KERNELS must be one of "
                           "('numba', 'numpy', 'reference')")
    assert "'fast'" in last and "unset it" in last


def test_the_environment_variable_asking_for_numba_without_numba_names_the_extra():
    res = _import_bnref("numba", prelude="import sys; sys.modules['numba'] = None\n")
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("ModuleNotFoundError: the environment variable BNREF_CPU_KERNELS = 'numba' needs numba")
    assert 'pip install "bnref[numba]"' in last


# ---------------------------------------------------------------- the default: the fastest installed

def test_the_default_is_numba_where_it_is_installed_and_numpy_without_it():
    pytest.importorskip("numba", reason="numba (in requirements.txt) is not installed here")
    assert _import_bnref("").stdout.strip() == "numba"
    res = _import_bnref("", prelude="import sys; sys.modules['numba'] = None\n")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "numpy"


def test_use_cpu_kernels_changes_the_kernels_in_its_block_and_thread_only(kernels):
    import threading

    bnref.set_cpu_kernels("numpy")
    seen = {}
    with bnref.use_cpu_kernels("reference"):
        assert bnref.get_cpu_kernels() == "reference"
        t = threading.Thread(target=lambda: seen.setdefault("other thread", bnref.get_cpu_kernels()))
        t.start()
        t.join()
        with bnref.use_cpu_kernels("numba"):
            assert bnref.get_cpu_kernels() == "numba"
        assert bnref.get_cpu_kernels() == "reference"
    assert bnref.get_cpu_kernels() == "numpy" and seen == {"other thread": "numpy"}
    with pytest.raises(ValueError, match=r"use_cpu_kernels\(name\) must be one of"):
        with bnref.use_cpu_kernels("fast"):
            pass
