"""One setting for the hosting institution, and an install cell wherever a notebook may lack bnref.

``_config.yml`` holds the repository and hub URLs; ``tools/hosting.py`` writes what derives
from them. These tests say that nothing derived is out of date, that every exercise and every
chapter starts with a cell that installs bnref only where it is missing, and that the Binder
files ask for Python 3.11 and install bnref itself.
"""
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
REPO = CONFIG["repository"]["url"]
EXERCISES = sorted((ROOT / "exercises").glob("ps*/*.ipynb"))
# every page that runs code, chapters or not: each may be opened on Colab, where bnref is missing
CHAPTERS = sorted(p for p in (ROOT / "book").glob("*.md") if "```{code-cell}" in p.read_text())


def test_nothing_derived_from_the_hosting_settings_is_out_of_date():
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "hosting.py"), "--check"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def _first_code_cell(nb):
    return next(c for c in nb.cells if c.cell_type == "code")


@pytest.mark.parametrize("path", EXERCISES, ids=lambda p: p.parent.name)
def test_every_exercise_starts_by_installing_bnref_where_it_is_missing(path):
    cell = _first_code_cell(nbformat.read(str(path), 4))
    assert 'if importlib.util.find_spec("bnref") is None:' in cell.source
    assert re.search(rf'%pip install --quiet "bnref @ git\+{re.escape(REPO)}@\w+"', cell.source)
    md = cell.metadata["nbgrader"]
    assert md["locked"] and not md["grade"] and not md["solution"]   # read-only, restored at grading


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_every_chapter_starts_by_installing_bnref_with_its_extras_where_it_is_missing(path):
    text = path.read_text()
    first = text[text.index("```{code-cell}"):]
    first = first[:first.index("\n```\n")]
    assert ":tags: [remove-cell]" in first                 # not shown on the page
    assert 'if importlib.util.find_spec("bnref") is None:' in first
    assert f'"bnref[course] @ git+{REPO}@' in first


def test_the_install_cell_does_nothing_where_bnref_is_importable(monkeypatch):
    """It runs at every build and in every graded sandbox: there it must be a no-op."""
    src = _first_code_cell(nbformat.read(str(EXERCISES[0]), 4)).source
    from IPython.core.inputtransformer2 import TransformerManager
    calls = []
    ns = {"get_ipython": lambda: type("Shell", (), {"run_line_magic": lambda self, *a: calls.append(a)})()}
    exec(TransformerManager().transform_cell(src), ns)
    assert calls == []
    # as on Colab; monkeypatch restores it, since every later find_spec in this process would see it
    monkeypatch.setattr(ns["importlib"].util, "find_spec", lambda name: None)
    exec(TransformerManager().transform_cell(src).replace("import importlib.util\n", ""), ns)
    assert calls and calls[0][0] == "pip" and "git+" in calls[0][1]


def test_binder_asks_for_python_311_and_installs_bnref_itself():
    assert (ROOT / "binder" / "runtime.txt").read_text().strip() == "python-3.11"
    reqs = (ROOT / "binder" / "requirements.txt").read_text()
    assert "-r ../requirements.txt" in reqs
    post = ROOT / "binder" / "postBuild"
    assert post.stat().st_mode & 0o111, "postBuild must be executable"
    assert "pip install" in post.read_text() and "-e ." in post.read_text()


def test_the_hub_and_repository_urls_appear_nowhere_else():
    """Placeholders lived in several files; now the URL is written only where derived."""
    allowed = {"_config.yml", "pyproject.toml", "solutions/header.ipynb", "tools/hosting.py"}
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    hub = CONFIG["launch_buttons"]["jupyterhub_url"]
    found = []
    for rel in tracked:
        if (rel in allowed or rel.startswith("exercises/") or ROOT / rel in CHAPTERS
                or not (ROOT / rel).is_file()):
            continue
        try:
            text = (ROOT / rel).read_text()
        except UnicodeDecodeError:
            continue
        if rel == "README.md":                 # only in the block that tools/hosting.py writes
            text = re.sub(r"<!-- written by tools/hosting.py.*?<!-- end of what tools/hosting.py writes -->",
                          "", text, flags=re.S)
        if REPO in text or (hub and hub in text):
            found.append(rel)
    assert found == [], f"the hosting URLs are written by hand in {found}: derive them (tools/hosting.py)"
