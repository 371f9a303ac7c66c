"""What a release of bnref carries: one version, an SPDX licence, URLs, classifiers, extras,
types and the CUDA sources in the wheel, and an sdist from which the tests run.

The sdist is built with PyPA's ``build``, then the wheel from the unpacked sdist (as pip
does). Offline where it can be: when this interpreter already has the build backend that
``[build-system] requires`` asks for, the build uses it (``--no-isolation``); otherwise
``build`` fetches it from PyPI, and the tests skip, saying why, if it cannot.
"""
import ast
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import bnref

pytestmark = pytest.mark.slow        # two builds and a test run from the sdist: about half a minute
ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS = {"course": {"matplotlib", "ipywidgets", "scikit-learn"}, "numba": {"numba"},
          "gpu": {"cupy-cuda13x"}, "gpu-cuda12": {"cupy-cuda12x"}, "all": {"bnref"}}
CLASSIFIERS = {
    "Development Status :: 4 - Beta",
    "Intended Audience :: Education",
    "Operating System :: OS Independent",
    "Operating System :: POSIX :: Linux",
    "Programming Language :: Python :: 3.11",
    "Framework :: Jupyter",
    "Topic :: Education",
    "Topic :: Scientific/Engineering :: Artificial Intelligence",
    "Typing :: Typed",
}
NOT_IN_A_RELEASE = re.compile(r"(^|/)(__pycache__|\.ipynb_checkpoints|_build|\.venv|\.git|node_modules)(/|$)|\.py[co]$")


def _backend_is_here():
    """True if this interpreter has every ``[build-system] requires`` (so no download is needed)."""
    from packaging.requirements import Requirement

    for spec in PYPROJECT["build-system"]["requires"]:
        req = Requirement(spec)
        try:
            if not req.specifier.contains(importlib.metadata.version(req.name), prereleases=True):
                return False
        except importlib.metadata.PackageNotFoundError:
            return False
    return True


def _build(what, src, out):
    pytest.importorskip("build", reason="the packaging tests build with PyPA's build (requirements-test.txt)")
    offline = _backend_is_here()
    cmd = [sys.executable, "-m", "build", what, "--outdir", str(out), str(src)]
    res = subprocess.run(cmd + (["--no-isolation"] if offline else []), capture_output=True, text=True, timeout=900)
    log = res.stdout[-3000:] + res.stderr[-3000:]
    if res.returncode and not offline and re.search(r"Could not find a version|No matching distribution|"
                                                    r"Failed to establish|NewConnectionError|Network", log):
        pytest.skip(f"the build backend {PYPROJECT['build-system']['requires']} is not installed here "
                    "and cannot be downloaded (offline?)")
    assert res.returncode == 0, log


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """``(wheel, sdist, unpacked sdist)``: the sdist from this tree, the wheel from the sdist."""
    out = tmp_path_factory.mktemp("dist")
    _build("--sdist", ROOT, out)
    sdist = next(out.glob("bnref-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        tar.extractall(out / "src", filter="data")
    src = next((out / "src").iterdir())
    _build("--wheel", src, out)
    return next(out.glob("bnref-*.whl")), sdist, src


def _metadata(wheel):
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return Parser().parsestr(z.read(name).decode())


def _repository_url():
    """``repository.url`` in the book's ``_config.yml``: the one place the URL is written."""
    m = re.search(r"^repository:\s*\n\s+url:\s*(\S+)", (ROOT / "_config.yml").read_text(), re.M)
    return m.group(1).rstrip("/")


# ---------------------------------------------------------------- the metadata

def test_the_version_is_written_once_in_bnref():
    assert "version" not in PYPROJECT["project"] and "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "bnref.__version__"}


def test_the_wheel_has_bnref_s_version(dist):
    assert _metadata(dist[0])["Version"] == bnref.__version__


def test_the_licence_is_an_spdx_expression_with_its_file(dist):
    meta = _metadata(dist[0])
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert not [c for c in meta.get_all("Classifier") if c.startswith("License ::")]   # PEP 639
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in zipfile.ZipFile(dist[0]).namelist())


def test_the_urls_point_at_the_repository_of_the_book_config(dist):
    urls = dict(u.split(", ", 1) for u in _metadata(dist[0]).get_all("Project-URL"))
    assert set(urls) == {"Homepage", "Documentation", "Repository", "Issues"}
    repo = _repository_url()
    assert urls["Repository"] == urls["Homepage"] == repo
    assert urls["Issues"] == repo + "/issues"
    assert urls["Documentation"].startswith(repo)


def test_python_3_11_or_newer_and_the_classifiers(dist):
    meta = _metadata(dist[0])
    assert meta["Requires-Python"] == ">=3.11"
    assert CLASSIFIERS <= set(meta.get_all("Classifier"))


def test_the_extras_install_what_their_errors_say(dist):
    from packaging.requirements import Requirement

    meta = _metadata(dist[0])
    assert set(meta.get_all("Provides-Extra")) == set(EXTRAS)
    by_extra = {extra: set() for extra in EXTRAS}
    for line in meta.get_all("Requires-Dist"):
        req = Requirement(line)
        for extra in EXTRAS:
            if req.marker and req.marker.evaluate({"extra": extra}):
                by_extra[extra].add(req.name)
                if req.name == "bnref":
                    assert req.extras == {"course", "numba"}, line
    assert by_extra == EXTRAS


# ---------------------------------------------------------------- the files

def test_the_wheel_has_the_package_its_types_and_the_cuda_sources(dist):
    names = set(zipfile.ZipFile(dist[0]).namelist())
    assert "bnref/py.typed" in names
    cuda = {p.relative_to(ROOT).as_posix() for p in (ROOT / "bnref/kernels/cuda").glob("*.cu*")}
    assert cuda and cuda <= names
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "bnref").rglob("*.py")
               if not NOT_IN_A_RELEASE.search(p.as_posix())}
    assert modules <= names
    assert not {n for n in names if NOT_IN_A_RELEASE.search(n) or n.startswith(("tests/", "solutions/"))}


def _local_imports(tests):
    """The modules of ``tests/`` that the test files import (conftest, course, grading_attacks...)."""
    local = {p.stem for p in tests.glob("*.py")}
    found = set()
    for f in tests.glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.partition(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.partition(".")[0])
    return found & local


def test_the_sdist_has_the_tests_and_every_file_they_import(dist):
    src = dist[2]
    assert (src / "tests" / "conftest.py").is_file()
    wanted = _local_imports(ROOT / "tests")
    assert {"course", "grading_attacks", "tolerances"} <= wanted
    assert (src / "conftest.py").is_file()          # the doctests' settings, at the root
    assert {m for m in wanted if not (src / "tests" / f"{m}.py").is_file()} == set()


@pytest.mark.skipif(not (ROOT / ".git").exists() or shutil.which("git") is None,
                    reason="compares with the files git tracks: needs a git checkout")
def test_the_sdist_has_every_tracked_file_that_the_tests_read(dist):
    with tarfile.open(dist[1]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    # what the unit, grading and book-config tests open: the package, the tests, the notebooks,
    # nbgrader's configuration, the book's sources and the requirements
    needed = [f for f in tracked if (ROOT / f).is_file() and (
        f.startswith(("bnref/", "tests/", "solutions/", "exercises/", "book/", "binder/", "tools/"))
        or f in {"README.md", "LICENSE", "LICENSE-text.md", "pyproject.toml", "MANIFEST.in", "nbgrader_config.py",
                 "_config.yml", "_toc.yml", "requirements.txt", "requirements-test.txt", "Makefile"})]
    assert [f for f in needed if f not in names] == []
    assert sorted(n for n in names if NOT_IN_A_RELEASE.search(n)) == []


def test_the_unit_tests_run_from_the_unpacked_sdist(dist):
    src = dist[2]
    env = {"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin", "BNREF_CPU_KERNELS": "numpy"}
    where = subprocess.run([sys.executable, "-c", "import bnref; print(bnref.__file__)"],
                           cwd=src, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(src), f"bnref came from {where}, not from the sdist"
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "tests/test_bnref_errors.py", "tests/test_optional_dependencies.py",
                          "tests/test_grading_checks.py"],
                         cwd=src, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
