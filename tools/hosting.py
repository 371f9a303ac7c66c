"""The hosting institution's settings live in one place, ``_config.yml``; this writes the rest.

The settings (see the instructor guide, "Hosting this course"):

- ``repository.url``: where the course's repository is (GitHub for Colab and Binder links);
- ``repository.branch``;
- ``launch_buttons.jupyterhub_url``: the institution's JupyterHub (nbgitpuller links);
- ``launch_buttons.binderhub_url``.

Derived from them, and rewritten by this script:

- the install cell at the top of every exercise notebook (``solutions/header.ipynb``, which
  nbgrader puts at the top of each released notebook; ``exercises/`` is regenerated);
- the hidden install cell at the top of every book page that runs code (a ``{code-cell}``:
  the chapters, the bug gallery, the playground);
- ``[project.urls]`` in ``pyproject.toml``;
- the ``pip install`` lines in ``README.md``.

The launch buttons read ``_config.yml`` themselves. An install cell does nothing where bnref
is already importable (Binder, the hub, a clone with ``make book``) and installs it from
the repository elsewhere (Colab, a bare Jupyter).

Usage::

    .venv/bin/python tools/hosting.py           # rewrite the derived places (and exercises/)
    .venv/bin/python tools/hosting.py --check   # exit 1 if one is out of date (tests run this)
"""
import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
INSTALL_ID = "install_bnref"        # the header's install cell (read-only, restored at grading)
MARK = "# Installs bnref"           # first line of every install cell


def settings():
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    return {"repository": cfg["repository"]["url"].rstrip("/"),
            "branch": cfg["repository"].get("branch", "main"),
            "hub": cfg["launch_buttons"].get("jupyterhub_url", ""),
            "binder": cfg["launch_buttons"].get("binderhub_url", "")}


def install_cell(s, extras):
    """The code of an install cell: a no-op wherever bnref can already be imported."""
    req = f"bnref[{extras}]" if extras else "bnref"
    return (f"{MARK} (the course's package) only where it is missing, e.g. on Colab; on Binder,\n"
            "# the course's JupyterHub and a local clone of the course it is already there.\n"
            "import importlib.util\n"
            "if importlib.util.find_spec(\"bnref\") is None:\n"
            f"    %pip install --quiet \"{req} @ git+{s['repository']}@{s['branch']}\"")


# ---------------------------------------------------------------- the exercises' header
def header_cell(s):
    cell = nbformat.v4.new_code_cell(install_cell(s, ""))
    # read-only, and graded from the gradebook's copy like a test cell: a learner cannot
    # change what runs; in the sandbox it does nothing (no bnref there, %pip is skipped)
    cell.metadata["nbgrader"] = {"grade": False, "grade_id": INSTALL_ID, "locked": True,
                                 "schema_version": 3, "solution": False, "task": False}
    cell.metadata["editable"] = False
    cell.metadata["deletable"] = False
    return cell


def fix_header(s, write):
    path = ROOT / "solutions" / "header.ipynb"
    nb = nbformat.read(str(path), 4)
    want = header_cell(s)
    old = [c for c in nb.cells if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") == INSTALL_ID]
    if old and old[0].source == want.source and old[0].metadata == want.metadata:
        return False
    if write:
        if old:
            old[0].source, old[0].metadata = want.source, want.metadata
        else:
            nb.cells.append(want)
        nbformat.write(nb, str(path))
    return True


def regenerate_exercises():
    """``nbgrader generate_assignment --force`` for every problem set, in a throwaway course."""
    with tempfile.TemporaryDirectory() as tmp:
        course = Path(tmp)
        shutil.copy(ROOT / "nbgrader_config.py", course)
        shutil.copytree(ROOT / "solutions", course / "solutions")
        nbgrader = Path(sys.executable).parent / "nbgrader"
        for ps in sorted(p.name for p in (ROOT / "solutions").iterdir() if p.is_dir()):
            subprocess.run([str(nbgrader), "generate_assignment", ps, "--force"], cwd=course, check=True,
                           capture_output=True, env={"PATH": f"{nbgrader.parent}:/usr/bin:/bin"})
        shutil.rmtree(ROOT / "exercises")
        shutil.copytree(course / "exercises", ROOT / "exercises")


# ---------------------------------------------------------------- the chapters
CHAPTER_CELL = "```{{code-cell}} ipython3\n:tags: [remove-cell]\n\n{code}\n```\n"


def pages_with_code():
    """The book's pages that run code when the book is built or opened as a notebook."""
    return sorted(p for p in (ROOT / "book").glob("*.md") if "```{code-cell}" in p.read_text())


def fix_chapter(path, s, write):
    text = path.read_text()
    cell = CHAPTER_CELL.format(code=install_cell(s, "course"))
    # an existing install cell: from its fence to the end of the fence after the mark
    m = re.search(r"```\{code-cell\} ipython3\n:tags: \[remove-cell\]\n\n" + re.escape(MARK) + r".*?\n```\n",
                  text, re.S)
    if m:
        new = text[:m.start()] + cell + text[m.end():]
    else:                       # before the first code cell, so it runs first
        i = text.index("```{code-cell}")
        new = text[:i] + cell + "\n" + text[i:]
    if new == text:
        return False
    if write:
        path.write_text(new)
    return True


# ---------------------------------------------------------------- pyproject
def fix_pyproject(s, write):
    """The repository's URLs in ``[project.urls]`` (Homepage, Repository, Issues...)."""
    path = ROOT / "pyproject.toml"
    text = path.read_text()
    m = re.search(r"\[project\.urls\]\n(?:[^\[\n][^\n]*\n)*", text)
    if not m:
        return False            # no URL table to keep in step
    block = new_block = m.group(0)
    for key, url in (("Homepage", s["repository"]), ("Repository", s["repository"]),
                     ("Source", s["repository"]), ("Issues", s["repository"] + "/issues"),
                     ("Documentation", s["repository"] + "#readme")):
        new_block = re.sub(rf'^{key} = "[^"]*"', f'{key} = "{url}"', new_block, flags=re.M)
    if new_block == block:
        return False
    if write:
        path.write_text(text.replace(block, new_block))
    return True


README_BLOCK = re.compile(r"(<!-- written by tools/hosting.py from _config.yml -->\n)(.*?)"
                          r"(<!-- end of what tools/hosting.py writes -->)", re.S)


def fix_readme(s, write):
    path = ROOT / "README.md"
    text = path.read_text()
    url = f"git+{s['repository']}"
    block = ("```bash\n"
             f'pip install "bnref @ {url}"   # NumPy only\n'
             'pip install "bnref[course] @ git+..."      # + matplotlib, ipywidgets, scikit-learn: the chapters\n'
             'pip install "bnref[numba] @ git+..."       # + the compiled CPU kernels, then the default\n'
             'pip install "bnref[gpu] @ git+..."         # + CuPy for CUDA 13 (gpu-cuda12: CUDA 12)\n'
             'pip install "bnref[all] @ git+..."         # course + numba: everything but the GPU\n'
             "```\n")
    new = README_BLOCK.sub(lambda m: m.group(1) + block + m.group(3), text)
    if new == text:
        return False
    if write:
        path.write_text(new)
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only report what is out of date (exit 1)")
    args = ap.parse_args(argv)
    s = settings()
    stale = []
    if fix_header(s, not args.check):
        stale.append("solutions/header.ipynb (and so exercises/)")
        if not args.check:
            regenerate_exercises()
    for chapter in pages_with_code():
        if fix_chapter(chapter, s, not args.check):
            stale.append(str(chapter.relative_to(ROOT)))
    if fix_pyproject(s, not args.check):
        stale.append("pyproject.toml [project.urls]")
    if fix_readme(s, not args.check):
        stale.append("README.md (the pip install lines)")
    if args.check:
        for what in stale:
            print(f"out of date with _config.yml: {what}; run tools/hosting.py")
        return 1 if stale else 0
    for what in stale:
        print(f"rewrote {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
