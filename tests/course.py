"""A throwaway nbgrader course for the end-to-end tests, driven through the real CLI.

Built like nbgrader's own tests: the repository's ``nbgrader_config.py`` and ``solutions/``
copied into a temporary folder, ``nbgrader generate_assignment`` run there, submissions
written from the released notebooks.
"""
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# {assignment: notebook name}, from the source folders: solutions/<ps>/<name>.ipynb
ASSIGNMENTS = {nb.parent.name: nb.stem for nb in sorted((ROOT / "solutions").glob("ps*/*.ipynb"))}


def nbgrader(course, *args, check=True, env=None, timeout=900):
    """Run the real ``nbgrader`` CLI in ``course``; nbgrader needs ``alembic`` on PATH."""
    env = {**os.environ, **(env or {})}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    res = subprocess.run([str(BIN / "nbgrader"), *args], cwd=course, env=env,
                         capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"nbgrader {' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr[-6000:]}")
    return res


def make_course(tmp, config_extra=""):
    """The repo's config and solutions in ``tmp`` (plus ``config_extra`` lines)."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "nbgrader_config.py").write_text((ROOT / "nbgrader_config.py").read_text() + "\n" + config_extra)
    shutil.copytree(ROOT / "solutions", tmp / "solutions")
    return tmp


def read(path):
    return nbformat.read(str(path), as_version=4)


def grade_id(cell):
    return cell.metadata.get("nbgrader", {}).get("grade_id")


def is_test(cell):
    md = cell.metadata.get("nbgrader", {})
    return cell.cell_type == "code" and md.get("grade") and not md.get("solution")


def solution_code(ps, gid):
    """The instructor's solution cell without the nbgrader markers."""
    nb = read(ROOT / "solutions" / ps / f"{ASSIGNMENTS[ps]}.ipynb")
    cell = next(c for c in nb.cells if grade_id(c) == gid)
    return "\n".join(line for line in cell.source.splitlines() if "### " not in line)


def all_solutions(ps):
    nb = read(ROOT / "solutions" / ps / f"{ASSIGNMENTS[ps]}.ipynb")
    return {grade_id(c): solution_code(ps, grade_id(c)) for c in nb.cells
            if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("solution")}


def mistake(ps, gid, old, new):
    code = solution_code(ps, gid)
    assert old in code, f"{old!r} not in the solution of {gid}"
    return code.replace(old, new)


def release(course, ps):
    return read(course / "exercises" / ps / f"{ASSIGNMENTS[ps]}.ipynb")


def write_submission(course, student, ps, nb, files=None):
    folder = course / "submitted" / student / ps
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(folder / f"{ASSIGNMENTS[ps]}.ipynb"))
    for rel, text in (files or {}).items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)


def submit(course, student, ps, answers=(), delete=(), replace_tests=(), insert_after=()):
    """Write ``submitted/<student>/<ps>/<nb>.ipynb`` from the release notebook.

    answers: {grade_id: code} for solution cells; delete: grade ids of cells to delete;
    replace_tests: {grade_id: code} (an edited test cell); insert_after: [(grade_id, code)].
    """
    nb = release(course, ps)
    answers, replace_tests = dict(answers), dict(replace_tests)
    cells = []
    for cell in nb.cells:
        gid = grade_id(cell)
        if gid in delete:
            continue
        if gid in answers:
            cell.source = answers[gid]
        if gid in replace_tests:
            cell.source = replace_tests[gid]
        cells.append(cell)
        for after, code in insert_after:
            if after == gid:
                cells.append(nbformat.v4.new_code_cell(code))
    nb.cells = cells
    write_submission(course, student, ps, nb)


def tree_hashes(folder):
    """{relative path: sha256} of every file below ``folder``."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def scores(course, ps):
    """{student: (auto score, {failed test cell ids}, max score)} from the Gradebook."""
    from nbgrader.api import Gradebook
    out = {}
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        for sub in gb.assignment_submissions(ps):
            nb = gb.find_submission_notebook(ASSIGNMENTS[ps], ps, sub.student.id)
            auto = sum(g.auto_score or 0 for g in nb.grades if g.auto_score is not None)
            lost = {g.name for g in nb.grades if g.cell_type == "code" and g.auto_score is not None
                    and g.auto_score < g.max_score_gradecell}
            out[sub.student.id] = (auto, lost, nb.max_score)
    return out
