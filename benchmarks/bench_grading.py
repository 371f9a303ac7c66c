"""How long autograding takes: per notebook, and for a class of simulated ps1 submissions.

Builds a throwaway course from the repository's ``nbgrader_config.py`` and ``solutions/``,
generates the five assignments, and times the real ``nbgrader autograde`` command:

1. one correct submission of each assignment (time per notebook, with the number of test
   cells, i.e. of judge processes started);
2. a class of ``--students`` (default 100) ps1 submissions: a deterministic mix of correct
   answers, the blank notebook and common mistakes, graded by one ``nbgrader autograde
   ps1_forward`` run; the scores are checked against what each kind must get.

Usage::

    .venv/bin/python benchmarks/bench_grading.py [--students 100] [--out benchmarks/results/grading.md]

Prints a Markdown table and writes it to ``--out``.
"""
import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# {assignment: notebook name}, read from the source folders: solutions/<ps>/<name>.ipynb
ASSIGNMENTS = {nb.parent.name: nb.stem for nb in sorted((ROOT / "solutions").glob("ps*/*.ipynb"))}


def nbgrader(course, *args):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    t = time.perf_counter()
    res = subprocess.run([str(BIN / "nbgrader"), *args], cwd=course, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"nbgrader {' '.join(args)} failed:\n{res.stderr[-3000:]}")
    return time.perf_counter() - t


def solution_cells(ps):
    nb = nbformat.read(str(ROOT / "solutions" / ps / f"{ASSIGNMENTS[ps]}.ipynb"), 4)
    return {c.metadata["nbgrader"]["grade_id"]: "\n".join(l for l in c.source.splitlines() if "### " not in l)
            for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")}


def submit(course, student, ps, answers):
    nb = nbformat.read(str(course / "exercises" / ps / f"{ASSIGNMENTS[ps]}.ipynb"), 4)
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid in answers:
            cell.source = answers[gid]
    out = course / "submitted" / student / ps / f"{ASSIGNMENTS[ps]}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(out))


def ps1_kinds():
    """(answers, expected score) for the kinds of ps1 submissions in the simulated class."""
    ok = {k: v for k, v in solution_cells("ps1_forward").items() if not k.startswith("written")}

    def edit(gid, old, new):
        assert old in ok[gid], old
        return {**ok, gid: ok[gid].replace(old, new)}
    return {
        "correct": (ok, 14),
        "blank": ({}, 0),
        "unbiased": (edit("batchnorm_forward", "var = (xmu ** 2).mean(axis=0)",
                          "var = (xmu ** 2).sum(axis=0) / (x.shape[0] - 1)"), 10),
        "no_eps": (edit("batchnorm_forward", "np.sqrt(var + eps)", "np.sqrt(var)"), 13),
        "flipped": (edit("running_stats_update", "running_mean = (1 - momentum) * running_mean + momentum * mean",
                         "running_mean = momentum * running_mean + (1 - momentum) * mean"), 10),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--students", type=int, default=100)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "grading.md"))
    args = ap.parse_args()

    from nbgrader.api import Gradebook

    with tempfile.TemporaryDirectory() as tmp:
        course = Path(tmp)
        shutil.copy(ROOT / "nbgrader_config.py", course)
        shutil.copytree(ROOT / "solutions", course / "solutions")
        for ps in ASSIGNMENTS:
            nbgrader(course, "generate_assignment", ps, "--force")

        rows = []
        for ps, name in ASSIGNMENTS.items():
            submit(course, "solo", ps, solution_cells(ps))
            n_tests = sum(1 for c in nbformat.read(str(course / "exercises" / ps / f"{name}.ipynb"), 4).cells
                          if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("grade"))
            secs = nbgrader(course, "autograde", ps, "--student", "solo", "--force")
            rows.append((ps, name, n_tests, secs))

        kinds = ps1_kinds()
        names = list(kinds)
        expected = {}
        for i in range(args.students):
            kind = names[i % len(names)]
            student = f"s{i:03d}_{kind}"
            submit(course, student, "ps1_forward", kinds[kind][0])
            expected[student] = kinds[kind][1]
        shutil.rmtree(course / "autograded" / "solo", ignore_errors=True)
        class_secs = nbgrader(course, "autograde", "ps1_forward")
        wrong = []
        with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
            for student, score in expected.items():
                got = gb.find_submission("ps1_forward", student).score
                if got != score:
                    wrong.append(f"{student}: {got} (expected {score})")

    cpu = os.cpu_count()
    lines = [
        "# Autograding time",
        "",
        f"`benchmarks/bench_grading.py` on {platform.processor() or platform.machine()}, {cpu} CPU cores "
        f"(shared), Python {platform.python_version()}; `nbgrader autograde`, per-cell timeout from "
        "`nbgrader_config.py`. Each test cell starts one clean judge process.",
        "",
        "## One correct submission per notebook",
        "",
        "Each time is one `nbgrader autograde <ps> --student solo` command, so it includes the "
        "command's own start-up and database work (a few seconds).",
        "",
        "| assignment | notebook | test cells | autograde (s) |",
        "| --- | --- | ---: | ---: |",
        *[f"| {ps} | {name} | {n} | {s:.1f} |" for ps, name, n, s in rows],
        "",
        f"## A class of {args.students} ps1 submissions",
        "",
        "| submissions | kinds | total (s) | per submission (s) | scores as expected |",
        "| ---: | --- | ---: | ---: | --- |",
        f"| {args.students} | {', '.join(names)} (in turn) | {class_secs:.0f} | {class_secs / args.students:.2f} | "
        f"{'yes' if not wrong else 'NO: ' + '; '.join(wrong[:5])} |",
        "",
        f"The whole class takes {class_secs / 60:.1f} minutes on one `nbgrader autograde` run "
        "(submissions are graded one after the other).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    if wrong:
        sys.exit(1)


if __name__ == "__main__":
    main()
