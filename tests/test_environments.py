"""The course in the environments learners really use, each built the way a learner would.

- **Binder**: repo2docker's steps, simulated in a fresh virtual environment of Python 3.11:
  ``pip install -r binder/requirements.txt``, then ``binder/postBuild``, in a copy of the
  repository (repo2docker itself needs Docker, which these machines do not run);
- **JupyterHub** with ``pip install --user``: the wheel installed into a user site
  (``PYTHONUSERBASE`` in a temporary folder), with a Python whose user site is on;
- **bnref only on PYTHONPATH**.

In each, from the notebooks' own folders: ``import bnref``, ``bnref.grading`` and the digits
data, and a correct problem set 1 passes every visible check, run cell by cell as the
released notebook has them (its install cell included).
"""
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest

from course import ASSIGNMENTS, all_solutions, grade_id

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
BASE_PYTHON = getattr(sys, "_base_executable", sys.executable)     # the interpreter of .venv


def _copy_of_the_repository(dest):
    """The tracked files, as a clone would have them."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def _visible_checks_script(repo):
    """Python that runs a correct ps1's released notebook cell by cell and counts the passes."""
    nb = nbformat.read(str(repo / "exercises" / "ps1_forward" / f"{ASSIGNMENTS['ps1_forward']}.ipynb"), 4)
    answers = all_solutions("ps1_forward")
    cells = [answers.get(grade_id(c), c.source) for c in nb.cells if c.cell_type == "code"]
    return textwrap.dedent(f"""
        import sys
        from IPython.core.inputtransformer2 import TransformerManager
        ns = {{"get_ipython": lambda: None, "__name__": "__main__"}}
        for src in {cells!r}:
            exec(compile(TransformerManager().transform_cell(src), "<cell>", "exec"), ns)
        import bnref, bnref.grading
        from bnref.data import load_digits
        print("digits", load_digits()[0].shape)
        print("bnref from", bnref.__file__)
        """)


def _run_notebook_checks(python, repo, env, expect_bnref_under):
    script = _visible_checks_script(repo)
    for folder in (repo / "exercises" / "ps1_forward", repo / "book"):
        res = subprocess.run([str(python), "-c", script], cwd=folder, env=env, capture_output=True,
                             text=True, timeout=600)
        assert res.returncode == 0, f"in {folder}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        visible = sum(1 for c in nbformat.read(str(repo / "exercises" / "ps1_forward" /
                                                   f"{ASSIGNMENTS['ps1_forward']}.ipynb"), 4).cells
                      if c.metadata.get("nbgrader", {}).get("grade") and c.cell_type == "code")
        assert res.stdout.count("Passed:") == visible, res.stdout
        assert re.search(r"digits \(\d+, 64\)", res.stdout), res.stdout
        where = res.stdout.split("bnref from ")[1].strip()
        assert where.startswith(str(expect_bnref_under)), where


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(extra)
    return env


def test_binder_environment_from_the_binder_files(tmp_path):
    repo = _copy_of_the_repository(tmp_path / "repo")
    assert (repo / "binder" / "runtime.txt").read_text().strip() == "python-3.11"
    venv = tmp_path / "srv-conda"                     # repo2docker's environment, here a venv
    subprocess.run([BASE_PYTHON, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    env = _clean_env(PATH=f"{venv / 'bin'}:/usr/bin:/bin")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--upgrade", "pip"], env=env, check=True,
                   capture_output=True, timeout=900)
    # repo2docker: `pip install --no-cache-dir -r binder/requirements.txt` in the repository,
    # then `./binder/postBuild` there
    res = subprocess.run([str(py), "-m", "pip", "install", "-q", "-r", "binder/requirements.txt"], cwd=repo,
                         env=env, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    res = subprocess.run(["./binder/postBuild"], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    version = subprocess.run([str(py), "-c", "import sys; print(sys.version_info[:2] >= (3, 11))"],
                             capture_output=True, text=True, env=env).stdout
    assert version.strip() == "True"
    _run_notebook_checks(py, repo, env, repo / "bnref")
    # the chapters open as notebooks there (jupytext) and the Jupyter server starts
    res = subprocess.run([str(venv / "bin" / "jupytext"), "--to", "notebook", "--output", "-",
                          str(repo / "book" / "03_bn_transform.md")], env=env, capture_output=True, timeout=300)
    assert res.returncode == 0 and b'"cells"' in res.stdout


def test_pip_install_user_on_a_hub(tmp_path):
    """A JupyterHub's usual way: ``pip install --user``, with the user site on."""
    repo = _copy_of_the_repository(tmp_path / "repo")
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(repo)],
                   check=True, capture_output=True, timeout=600)
    wheel = next(wheels.glob("bnref-*.whl"))
    userbase = tmp_path / "userbase"
    env = _clean_env(PYTHONUSERBASE=str(userbase), PATH="/usr/bin:/bin")
    on = subprocess.run([BASE_PYTHON, "-c", "import site; print(site.ENABLE_USER_SITE)"], env=env,
                        capture_output=True, text=True).stdout.strip()
    if on != "True":
        pytest.skip(f"{BASE_PYTHON} has no user site to install into")
    # numpy (bnref's dependency), scikit-learn (the digits) and IPython (the notebook's magics)
    res = subprocess.run([BASE_PYTHON, "-m", "pip", "install", "-q", "--user", f"{wheel}[course]", "ipython"],
                         env=env, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    _run_notebook_checks(BASE_PYTHON, repo, env, userbase)


def test_bnref_found_only_through_PYTHONPATH(tmp_path):
    repo = _copy_of_the_repository(tmp_path / "repo")
    elsewhere = tmp_path / "pythonpath"
    shutil.copytree(repo / "bnref", elsewhere / "bnref")
    # the course's venv has its own editable bnref: PYTHONPATH comes first on sys.path
    env = {**os.environ, "PYTHONPATH": str(elsewhere)}
    _run_notebook_checks(sys.executable, repo, env, elsewhere)
