"""How long autograding takes: the sandboxed grader against plain nbgrader, in the same run.

Two throwaway courses get the same ``--students`` (default 100) simulated ps1 submissions, a
deterministic mix of correct answers, the blank notebook and common mistakes:

- **sandboxed**: the repository's ``nbgrader_config.py`` (each submission's code in a
  bubblewrap sandbox, verdicts decided outside it, ``jobs`` = one per core);
- **plain nbgrader**: nbgrader's default preprocessors (the notebook and its test cells run in
  one Jupyter kernel, one submission after the other), the same test cells.

Each is graded by one ``nbgrader autograde ps1_forward --force`` command, alternately, ``--repeats``
times; the table gives medians and the ratio. Both must give the same scores.

Then, in this process, the costs inside the sandboxed grader on one correct and one blank
submission (:func:`bnref.grading.runner.grade`): starting the sandbox and running the cells,
each check, and the sandbox's own overhead (the same notebook with ``sandbox="none"``, a plain
child process; and an empty sandbox against an empty Python).

Usage::

    .venv/bin/python benchmarks/bench_grading.py [--students 100] [--repeats 3] [--out FILE]

Prints Markdown tables; with ``--out`` also writes them (``benchmarks/results/grading.md``).
"""
import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PS, NB = "ps1_forward", "batchnorm_forward"
sys.path.insert(0, str(ROOT / "tests"))
from course import all_solutions, make_course, mistake, release, scores, write_submission  # noqa: E402

PLAIN_CONFIG = """
# nbgrader's own defaults: the submission and its test cells run in one Jupyter kernel
from nbgrader.preprocessors import (Execute, IgnorePattern, LimitOutput, SaveAutoGrades, AssignLatePenalties,
                                    CheckCellMetadata, ClearOutput, DeduplicateIds, OverwriteKernelspec,
                                    OverwriteCells)
from nbconvert.preprocessors import ClearMetadataPreprocessor
c.Autograde.sanitize_preprocessors = [ClearOutput, DeduplicateIds, OverwriteKernelspec, OverwriteCells,
                                      CheckCellMetadata]
c.Autograde.autograde_preprocessors = [Execute, IgnorePattern, ClearMetadataPreprocessor, LimitOutput,
                                       SaveAutoGrades, AssignLatePenalties, CheckCellMetadata]
"""
KINDS = {
    "correct": {},
    "blank": None,
    "unbiased": {"batchnorm_forward": ("var = (xmu ** 2).mean(axis=0)                # (D,): biased, divides by N",
                                       "var = (xmu ** 2).sum(axis=0) / (x.shape[0] - 1)")},
    "no_eps": {"batchnorm_forward": ("inv_std = 1.0 / np.sqrt(var + eps)           # (D,)",
                                     "inv_std = 1.0 / np.sqrt(var)")},
    "flipped": {"running_stats_update": ("running_mean = (1 - momentum) * running_mean + momentum * mean",
                                         "running_mean = momentum * running_mean + (1 - momentum) * mean")},
}


def nbgrader(course, *args):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    t = time.perf_counter()
    res = subprocess.run([str(BIN / "nbgrader"), *args], cwd=course, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"nbgrader {' '.join(args)} failed:\n{res.stderr[-3000:]}")
    return time.perf_counter() - t


def class_of(course, n):
    """Write n submissions, kinds in turn; returns {student: kind}."""
    solutions = all_solutions(PS)
    kinds = {}
    for i in range(n):
        kind = list(KINDS)[i % len(KINDS)]
        nb = release(course, PS)
        if KINDS[kind] is not None:
            answers = dict(solutions)
            for gid, (old, new) in KINDS[kind].items():
                answers[gid] = mistake(PS, gid, old, new)
            for cell in nb.cells:
                gid = cell.metadata.get("nbgrader", {}).get("grade_id")
                if gid in answers:
                    cell.source = answers[gid]
        student = f"s{i:03d}_{kind}"
        write_submission(course, student, PS, nb)
        kinds[student] = kind
    return kinds


def class_benchmark(tmp, students, repeats):
    courses = {"sandboxed": make_course(tmp / "sandboxed"), "plain nbgrader": make_course(tmp / "plain", PLAIN_CONFIG)}
    for course in courses.values():
        nbgrader(course, "generate_assignment", PS, "--force")
        class_of(course, students)
    times = {name: [] for name in courses}
    for _ in range(repeats):                     # alternately, so both see the same machine load
        for name, course in courses.items():
            times[name].append(nbgrader(course, "autograde", PS, "--force"))
    got = {name: scores(course, PS) for name, course in courses.items()}
    same = {s: v[0] for s, v in got["sandboxed"].items()} == {s: v[0] for s, v in got["plain nbgrader"].items()}
    by_kind = {}
    for s, (auto, _, _) in got["sandboxed"].items():
        by_kind.setdefault(s.split("_", 1)[1], set()).add(auto)
    return times, same, by_kind


def inside_costs(tmp, rounds=7):
    """Per-phase costs of runner.grade on one notebook, medians over ``rounds``."""
    from bnref.grading.nbgrader_ext import _extract, _Spec
    from bnref.grading.runner import grade
    from bnref.grading.sandbox import bwrap
    from bnref.grading.sandbox.session import SessionConfig

    course = make_course(tmp / "inside")
    nbgrader(course, "generate_assignment", PS, "--force")
    class_of(course, 2)                          # s000_correct, s001_blank
    spec = _Spec(f"sqlite:///{course / 'gradebook.db'}", NB, PS)
    rows = {}
    for student in ("s000_correct", "s001_blank"):
        cells, tests, _ = _extract(nbformat.read(str(course / "submitted" / student / PS / f"{NB}.ipynb"), 4), spec)
        for sandbox in ("bwrap", "none"):
            runs = [grade(cells, tests, SessionConfig(sandbox=sandbox)) for _ in range(rounds)]
            rows[(student, sandbox)] = dict(
                total=statistics.median(r.seconds for r in runs),
                startup=statistics.median(r.startup for r in runs),
                check=statistics.median(statistics.median(t for _, _, t in r.checks) for r in runs),
                checks=len(runs[0].checks),
                passed=sum(v.passed for v in runs[0].verdicts.values()))
    # an empty sandbox against an empty Python process
    argv, env = bwrap.sandbox_command()
    empty = {"empty Python": [sys.executable, "-I", "-S", "-c", "pass"],
             "empty Python + NumPy in the sandbox": argv[:-1] + ["import sys; sys.path.insert(0, '/sandbox/site'); import numpy"],
             "empty Python + NumPy, no sandbox": [sys.executable, "-I", "-S", "-c",
                                                  f"import sys; sys.path.insert(0, {str(Path(numpy_dir()).parent)!r}); import numpy"]}
    starts = {}
    for name, cmd in empty.items():
        ts = []
        for _ in range(rounds):
            t = time.perf_counter()
            subprocess.run(cmd, env=env if "sandbox" in name else None, check=True, capture_output=True)
            ts.append(time.perf_counter() - t)
        starts[name] = statistics.median(ts)
    return rows, starts


def numpy_dir():
    import numpy
    return Path(numpy.__file__).parent


def machine():
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores (shared), Python {platform.python_version()}, "
            f"bubblewrap {subprocess.run(['bwrap', '--version'], capture_output=True, text=True).stdout.split()[-1]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--students", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", help="also write the tables to this Markdown file")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-grading-") as tmp:
        tmp = Path(tmp)
        times, same, by_kind = class_benchmark(tmp, args.students, args.repeats)
        rows, starts = inside_costs(tmp)
    med = {k: statistics.median(v) for k, v in times.items()}
    n = args.students
    lines = [
        "# Autograding time", "",
        f"`benchmarks/bench_grading.py` on {machine()}.", "",
        f"## A class of {n} ps1 submissions", "",
        f"Each run is one `nbgrader autograde {PS} --force` command over the whole class (its start-up "
        f"and database work included); the two graders ran alternately, {args.repeats} times each. "
        f"Kinds, in turn: {', '.join(KINDS)}.", "",
        "| grader | runs (s) | median (s) | per submission (s) | ratio to plain |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for name, ts in times.items():
        lines.append(f"| {name} | {', '.join(f'{t:.0f}' for t in ts)} | {med[name]:.1f} | "
                     f"{med[name] / n:.2f} | {med[name] / med['plain nbgrader']:.2f} |")
    lines += ["", f"Same scores from both graders: {'yes' if same else 'NO'}. Scores by kind (of 15): "
              + ", ".join(f"{k} {sorted(v)}" for k, v in sorted(by_kind.items())) + ".", "",
              "## Inside the sandboxed grader, one notebook", "",
              "`bnref.grading.runner.grade` in this process, medians of 7 rounds: the sandbox's start with "
              "the learner's cells run, the median check (all the calls of one `check_*` line), and the whole "
              "notebook. `none` is the same worker as a plain child process (no bubblewrap).", "",
              "| submission | sandbox | start + cells (s) | median check (ms) | checks | passed test cells | total (s) |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for (student, sandbox), r in rows.items():
        lines.append(f"| {student.split('_', 1)[1]} | {sandbox} | {r['startup']:.3f} | {1000 * r['check']:.1f} | "
                     f"{r['checks']} | {r['passed']} | {r['total']:.3f} |")
    lines += ["", "Process start, medians of 7:", "", "| process | start (s) |", "| --- | ---: |"]
    lines += [f"| {k} | {v:.3f} |" for k, v in starts.items()]
    over = statistics.median(rows[(st, "bwrap")]["startup"] - rows[(st, "none")]["startup"]
                             for st in ("s000_correct", "s001_blank"))
    lines += ["", f"The sandbox's own overhead, bubblewrap's namespaces and mounts: {over * 1000:.0f} ms per notebook "
              "(start + cells, bwrap against none on the same notebook), paid once per submission and again only "
              "after a hang or a crash. The checks cost the same in both."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
