"""What a release of bnref carries: one version, an SPDX licence, URLs, extras, types, and an
sdist whose own tests run.

Builds the wheel and the sdist with PyPA's ``build`` (the build backend, setuptools, comes
from PyPI in an isolated environment).
"""
import re
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import bnref

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    res = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return next(out.glob("*.whl")), next(out.glob("*.tar.gz"))


def _metadata(wheel):
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return Parser().parsestr(z.read(name).decode())


def test_one_version_spdx_licence_urls_and_python(dist):
    meta = _metadata(dist[0])
    assert meta["Version"] == bnref.__version__
    assert meta["License-Expression"] == "MIT"
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert {"Homepage", "Repository", "Issues"} <= set(urls)
    assert meta["Requires-Python"] == ">=3.11"
    assert "Typing :: Typed" in meta.get_all("Classifier")


def test_the_extras_are_declared(dist):
    meta = _metadata(dist[0])
    assert set(meta.get_all("Provides-Extra")) == {"course", "numba", "gpu", "gpu-cuda12"}
    reqs = meta.get_all("Requires-Dist")
    for needed in ("matplotlib", "ipywidgets", "scikit-learn", "numba", "cupy-cuda13x", "cupy-cuda12x"):
        assert any(r.startswith(needed) for r in reqs), needed


def test_the_wheel_has_types_and_the_cuda_sources(dist):
    names = zipfile.ZipFile(dist[0]).namelist()
    assert "bnref/py.typed" in names
    assert {"bnref/kernels/cuda/bn_stats.cu", "bnref/kernels/cuda/common.cuh"} <= set(names)
    assert "bnref/grading/sandbox/worker.py" in names


def test_the_sdist_has_every_file_its_tests_import(dist, tmp_path):
    with tarfile.open(dist[1]) as tar:
        tar.extractall(tmp_path, filter="data")
    src = next(tmp_path.iterdir())
    for helper in ("conftest.py", "course.py", "grading_attacks.py"):
        assert (src / "tests" / helper).exists(), helper
    imported = set()
    for test in (src / "tests").glob("*.py"):
        imported |= set(re.findall(r"^from (\w+) import|^import (\w+)", test.read_text(), re.M) and
                        [a or b for a, b in re.findall(r"^from (\w+) import|^import (\w+)", test.read_text(), re.M)])
    local = {p.stem for p in (ROOT / "tests").glob("*.py")}
    assert {m for m in imported if m in local} <= {p.stem for p in (src / "tests").glob("*.py")}
    # and its unit tests run from it (bnref imported from the sdist, not this checkout)
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "tests/test_bnref_errors.py", "tests/test_grading_checks.py"],
                         cwd=src, env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:]
