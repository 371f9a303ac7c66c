"""The nbgrader pipeline, end to end, with the real commands (built like nbgrader's own tests).

- ``exercises/`` is exactly what ``nbgrader generate_assignment`` makes from ``solutions/``;
- no solution or hidden-test text reaches ``exercises/``;
- the Validator: the solutions pass every test, the released notebooks fail every test;
- a temporary course: generate, simulated submissions (correct, blank, each common mistake,
  cheating, patching, an infinite loop, a deleted test cell, a cell that kills the kernel),
  autograde, exact scores from the Gradebook, manual grading of a written answer, feedback,
  CSV export.
"""
import csv
import json
import os

import nbformat
import pytest

from course import ASSIGNMENTS, ROOT, all_solutions, make_course, mistake, nbgrader, read, scores, submit

pytestmark = [pytest.mark.slow, pytest.mark.sandbox]
# Short budgets for the temp course, so the infinite-loop submission costs seconds.
CONFIG = "c.SandboxedGrading.call_timeout = 4\nc.SandboxedGrading.cell_timeout = 6\n"


def strip_ids(nb):
    """Notebook JSON without volatile parts, for comparisons."""
    d = json.loads(nbformat.writes(nb))
    d["metadata"].pop("language_info", None)
    return d


# ---------------------------------------------------------------- exercises/ == generate(solutions/)
@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    course = make_course(tmp_path_factory.mktemp("regen"))
    for ps in ASSIGNMENTS:
        nbgrader(course, "generate_assignment", ps, "--force")
    return course


def test_exercises_match_a_fresh_generate_assignment(regenerated):
    fresh = sorted(p.relative_to(regenerated / "exercises") for p in (regenerated / "exercises").rglob("*") if p.is_file())
    committed = sorted(p.relative_to(ROOT / "exercises") for p in (ROOT / "exercises").rglob("*") if p.is_file())
    assert committed == fresh, "exercises/ has other files than nbgrader generates; regenerate it"
    for rel in fresh:
        assert strip_ids(read(ROOT / "exercises" / rel)) == strip_ids(read(regenerated / "exercises" / rel)), (
            f"exercises/{rel} drifted from solutions/: run `nbgrader generate_assignment "
            f"{rel.parts[0]} --force` at the repo root")


def _solution_lines(nb):
    """Code lines between BEGIN/END SOLUTION and lines of hidden tests, in a source notebook."""
    lines = set()
    for cell in nb.cells:
        inside = None
        for line in cell.source.splitlines():
            s = line.strip()
            if s in ("### BEGIN SOLUTION", "### BEGIN HIDDEN TESTS"):
                inside = s
                continue
            if s in ("### END SOLUTION", "### END HIDDEN TESTS"):
                inside = None
                continue
            if inside and len(s) > 12 and not s.startswith("#"):
                lines.add(s)
    return lines


@pytest.mark.parametrize("ps, name", ASSIGNMENTS.items())
def test_exercises_contain_no_solution_or_hidden_test_text(ps, name):
    release = read(ROOT / "exercises" / ps / f"{name}.ipynb")
    text = nbformat.writes(release)
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"):
        assert marker not in text
    secret = _solution_lines(read(ROOT / "solutions" / ps / f"{name}.ipynb"))
    assert secret, "the source notebook has solution lines to hide"
    release_lines = {line.strip() for cell in release.cells for line in cell.source.splitlines()}
    leaked = secret & release_lines
    assert not leaked, f"solution or hidden-test lines in exercises/{ps}: {sorted(leaked)[:3]}"
    for cell in release.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "outputs must be stripped"


@pytest.mark.parametrize("ps, name", ASSIGNMENTS.items())
def test_solutions_have_outputs_stripped(ps, name):
    for cell in read(ROOT / "solutions" / ps / f"{name}.ipynb").cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


# ---------------------------------------------------------------- Validator
def _validate(path, invert):
    from nbgrader.validator import Validator
    cwd = os.getcwd()
    os.chdir(path.parent)             # the kernel starts in the notebook's folder
    try:
        return Validator(invert=invert).validate(str(path))
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize("ps, name", ASSIGNMENTS.items())
def test_validator_solutions_pass_and_release_fails_every_test(ps, name):
    source = _validate(ROOT / "solutions" / ps / f"{name}.ipynb", invert=False)
    assert not source.get("failed") and not source.get("errors"), f"solution fails: {source}"
    release = _validate(ROOT / "exercises" / ps / f"{name}.ipynb", invert=True)
    assert not release.get("passed"), f"released tests that pass on the blank notebook: {release['passed']}"
    n_tests = sum(1 for c in read(ROOT / "exercises" / ps / f"{name}.ipynb").cells
                  if c.metadata.get("nbgrader", {}).get("grade") and c.cell_type == "code")
    assert n_tests >= 3


# ---------------------------------------------------------------- simulated submissions
UNBIASED = ("var = (xmu ** 2).mean(axis=0)                # (D,): biased, divides by N",
            "var = (xmu ** 2).sum(axis=0) / (x.shape[0] - 1)")
NO_EPS = ("inv_std = 1.0 / np.sqrt(var + eps)           # (D,)", "inv_std = 1.0 / np.sqrt(var)")
FLIPPED = ("running_mean = (1 - momentum) * running_mean + momentum * mean\n"
           "    running_var = (1 - momentum) * running_var + momentum * var_unbiased",
           "running_mean = momentum * running_mean + (1 - momentum) * mean\n"
           "    running_var = momentum * running_var + (1 - momentum) * var_unbiased")
BIASED_RUNNING = ("var_unbiased = ((x - mean) ** 2).sum(axis=0) / (N - 1)",
                  "var_unbiased = ((x - mean) ** 2).sum(axis=0) / N")
WRONG_AXIS = """
def batchnorm_forward(x, gamma, beta, eps=1e-5):
    mean = x.mean(axis=1, keepdims=True)
    var = x.var(axis=1, keepdims=True)
    return gamma * (x - mean) / np.sqrt(var + eps) + beta, None
"""
CALLS_BNREF = """
import bnref
def batchnorm_forward(x, gamma, beta, eps=1e-5):
    return bnref.batchnorm_forward(x, gamma, beta, eps)
"""
PATCH_NUMPY = """
import numpy as np, numpy.testing
np.allclose = lambda *a, **k: True
np.isclose = lambda a, b, *r, **k: np.ones(np.shape(a), bool)
numpy.testing.assert_allclose = lambda *a, **k: None
np.testing.assert_array_almost_equal = lambda *a, **k: None
"""
PATCH_CHECKS = """
import sys, types, bnref
fake = types.ModuleType("bnref.grading")
def _pass(*args, **kwargs):
    return None
for _name in ["check_batchnorm_forward", "check_running_stats_update", "check_batchnorm_inference"]:
    setattr(fake, _name, _pass)
sys.modules["bnref.grading"] = fake
bnref.grading = fake
check_batchnorm_forward = _pass
"""
LOOP_FOREVER = """
def batchnorm_inference(x, gamma, beta, running_mean, running_var, eps=1e-5):
    while True:
        pass
"""

# (student, ps) -> (what they submitted, expected total auto score, failed test cells, why)
PS1_TESTS = {
    "test_forward_normalise": 1, "test_forward_scale_shift": 1, "test_forward_eps": 1,
    "test_forward_large_mean": 1, "test_forward_hidden_shapes": 2, "test_forward_hidden_float32": 1,
    "test_running_momentum": 1, "test_running_unbiased": 1, "test_running_hidden_sequence": 2,
    "test_running_hidden_float32": 1,
    "test_inference_running": 1, "test_inference_eps": 1, "test_inference_hidden": 1,
}
PS1_FULL = sum(PS1_TESTS.values())
# the unbiased variance fails where N is small enough for N / (N - 1) to show (N = 4, 2, 16)
FWD_UNBIASED_FAILS = {"test_forward_normalise", "test_forward_hidden_shapes", "test_forward_hidden_float32"}
ALL_PS1 = set(PS1_TESTS)


def ps1_submissions():
    ok = all_solutions("ps1_forward")
    unbiased = mistake("ps1_forward", "batchnorm_forward", *UNBIASED)
    return {
        # the instructor's solutions: every point
        "correct": (dict(answers=ok), PS1_FULL, set(), "correct solutions get every point"),
        # the release as handed out: every test fails (the stubs raise NotImplementedError)
        "blank": (dict(), 0, ALL_PS1, "the blank release gets 0"),
        # unbiased variance: the tests of the variance fail; gamma/beta and eps tests still pass
        "unbiased": (dict(answers={**ok, "batchnorm_forward": unbiased}), 11, FWD_UNBIASED_FAILS,
                     "one conceptual mistake costs the variance tests only (4 of 7 forward points)"),
        # missing eps: only the eps test fails (elsewhere eps is negligible and tolerated)
        "no_eps": (dict(answers={**ok, "batchnorm_forward": mistake("ps1_forward", "batchnorm_forward", *NO_EPS)}),
                   14, {"test_forward_eps"}, "missing eps costs the eps test"),
        # momentum convention flipped: only the momentum=0.5 test (symmetric) survives
        "flipped": (dict(answers={**ok, "running_stats_update": mistake("ps1_forward", "running_stats_update", *FLIPPED)}),
                    11, {"test_running_momentum", "test_running_hidden_sequence", "test_running_hidden_float32"},
                    "flipped momentum fails every test with momentum != 0.5"),
        "biased_running": (dict(answers={**ok, "running_stats_update":
                                         mistake("ps1_forward", "running_stats_update", *BIASED_RUNNING)}),
                           11, {"test_running_unbiased", "test_running_hidden_sequence", "test_running_hidden_float32"},
                           "biased running variance fails every test of the variance"),
        # statistics over the wrong axis (per example): every forward test fails, the rest is fine
        "wrong_axis": (dict(answers={**ok, "batchnorm_forward": WRONG_AXIS}), PS1_FULL - 7,
                       {g for g in PS1_TESTS if g.startswith("test_forward")},
                       "normalising each example instead of each feature is wrong everywhere"),
        # calling the reference: the function scores 0, the others keep their points
        "calls_bnref": (dict(answers={**ok, "batchnorm_forward": CALLS_BNREF}), PS1_FULL - 7,
                        {g for g in PS1_TESTS if g.startswith("test_forward")},
                        "the sandbox has no bnref: a function that calls it scores 0"),
        # patching NumPy's comparisons and json does not rescue the unbiased variance
        "patches_numpy": (dict(answers={**ok, "batchnorm_forward": unbiased},
                               insert_after=[("batchnorm_forward", PATCH_NUMPY)]), 11, FWD_UNBIASED_FAILS,
                          "patched np.allclose/numpy.testing change nothing"),
        # replacing the grading module and the check names does not either
        "patches_checks": (dict(answers={**ok, "batchnorm_forward": unbiased},
                                insert_after=[("batchnorm_forward", PATCH_CHECKS)]), 11, FWD_UNBIASED_FAILS,
                           "a fake bnref.grading changes nothing: the checks run outside the sandbox"),
        # an infinite loop in a scratch cell and in batchnorm_inference: those time out, the rest is graded
        "infinite_loop": (dict(answers={**ok, "batchnorm_inference": LOOP_FOREVER},
                               insert_after=[("batchnorm_forward", "while True:\n    pass")]), PS1_FULL - 3,
                          {"test_inference_running", "test_inference_eps", "test_inference_hidden"},
                          "timeouts cost only the tests of the looping function"),
        # deleted test cells are restored from the source and run against the correct answers
        "deleted_tests": (dict(answers=ok, delete={"test_forward_normalise", "test_inference_eps"}), PS1_FULL, set(),
                          "deleted test cells are put back"),
        # an edited (emptied) test cell is restored too, so the unbiased variance still fails it
        "edited_test": (dict(answers={**ok, "batchnorm_forward": unbiased},
                             replace_tests={"test_forward_normalise": "pass"}), 11, FWD_UNBIASED_FAILS,
                        "edited test cells are put back"),
        # a cell that kills the kernel: marked as an error, the kernel restarts, grading goes on
        "kills_kernel": (dict(answers=ok, insert_after=[("running_stats_update", "import os\nos._exit(1)")]), PS1_FULL,
                         set(), "a cell that ends the process costs nothing but itself"),
    }


def other_submissions():
    ok2, ok3, ok4, ok5 = (all_solutions(p) for p in ("ps2_backward", "ps3_spatial", "ps4_inference", "ps5_alternatives"))
    no_mean = mistake("ps2_backward", "batchnorm_backward",
                      "dx = dxmu + dmean / N                        # mean = mean(x)", "dx = dxmu")
    not_summed = mistake("ps2_backward", "batchnorm_backward",
                         "dbeta = dy.sum(axis=0)                     # (D,): beta is added to every row\n"
                         "    dgamma = (dy * x_hat).sum(axis=0)          # (D,)",
                         "dbeta = dy\n    dgamma = dy * x_hat")
    only_n = mistake("ps3_spatial", "spatial_batchnorm_backward",
                     "dbeta = dy.sum(axis=(0, 2, 3))                             # (C,)\n"
                     "    dgamma = (dy * x_hat).sum(axis=(0, 2, 3))                  # (C,)",
                     "dbeta = dy.sum(axis=0)\n    dgamma = (dy * x_hat).sum(axis=0)")
    fix_dx = ("dx = g * (m * dy - dbeta.reshape(1, C, 1, 1) - x_hat * dgamma.reshape(1, C, 1, 1))",
              "dx = g * (m * dy - dy.sum(axis=(0, 2, 3), keepdims=True)"
              " - x_hat * (dy * x_hat).sum(axis=(0, 2, 3), keepdims=True))")
    only_n = only_n.replace(*fix_dx)
    sign = mistake("ps4_inference", "fold_batchnorm", "b_folded = (b - running_mean) * scale + beta",
                   "b_folded = (b + running_mean) * scale + beta")
    b_not_scaled = mistake("ps4_inference", "fold_batchnorm", "b_folded = (b - running_mean) * scale + beta",
                           "b_folded = b - running_mean * scale + beta")
    interleaved = mistake("ps5_alternatives", "groupnorm_forward", "xg = x.reshape(N, G, C // G, H, W)",
                          "xg = x.reshape(N, C // G, G, H, W)").replace("axis=(2, 3, 4)", "axis=(1, 3, 4)")
    return {
        ("correct", "ps2_backward"): (dict(answers=ok2), 13, set(), "every point"),
        ("blank", "ps2_backward"): (dict(), 0, None, "0"),
        ("no_mean_path", "ps2_backward"): (dict(answers={**ok2, "batchnorm_backward": no_mean}), 8,
                                           {"test_backward_dx", "test_backward_hidden_shapes",
                                            "test_backward_hidden_float32"},
                                           "dx wrong: only dgamma/dbeta of the staged backward score"),
        ("not_summed", "ps2_backward"): (dict(answers={**ok2, "batchnorm_backward": not_summed}), 9,
                                         {"test_backward_dgamma_dbeta", "test_backward_hidden_shapes",
                                          "test_backward_hidden_float32"}, "dx right, dgamma/dbeta wrong"),
        ("correct", "ps3_spatial"): (dict(answers=ok3), 11, set(), "every point"),
        ("blank", "ps3_spatial"): (dict(), 0, None, "0"),
        ("summed_over_n", "ps3_spatial"): (dict(answers={**ok3, "spatial_batchnorm_backward": only_n}), 8,
                                           {"test_spatial_backward_dgamma_dbeta",
                                            "test_spatial_backward_hidden_shapes"}, "dgamma/dbeta over N only"),
        ("correct", "ps4_inference"): (dict(answers=ok4), 5, set(), "every auto point"),
        ("blank", "ps4_inference"): (dict(), 0, None, "0"),
        ("mean_sign", "ps4_inference"): (dict(answers={**ok4, "fold_batchnorm": sign}), 1,
                                         {"test_fold_b", "test_fold_no_bias", "test_fold_hidden_shapes"},
                                         "W_folded right, b_folded wrong"),
        ("b_not_scaled", "ps4_inference"): (dict(answers={**ok4, "fold_batchnorm": b_not_scaled}), 2,
                                            {"test_fold_b", "test_fold_hidden_shapes"},
                                            "scale error in b_folded; without bias (b = 0) it is right"),
        ("correct", "ps5_alternatives"): (dict(answers=ok5), 10, set(), "every auto point"),
        ("blank", "ps5_alternatives"): (dict(), 0, None, "0"),
        ("interleaved", "ps5_alternatives"): (dict(answers={**ok5, "groupnorm_forward": interleaved}), 6,
                                              {"test_groupnorm_groups", "test_groupnorm_exact",
                                               "test_groupnorm_hidden"}, "wrong grouping costs GroupNorm"),
    }


WRITTEN = {"ps4_inference": "written_fold", "ps5_alternatives": "written_small_batch"}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    course = make_course(tmp_path_factory.mktemp("course"), CONFIG)
    for ps in ASSIGNMENTS:
        nbgrader(course, "generate_assignment", ps, "--force")
    expected = {}
    for student, (kw, score, failed, why) in ps1_submissions().items():
        submit(course, student, "ps1_forward", **kw)
        expected[(student, "ps1_forward")] = (score, failed, why)
    for (student, ps), (kw, score, failed, why) in other_submissions().items():
        answers = dict(kw.get("answers", {}))
        if ps in WRITTEN and answers:
            answers[WRITTEN[ps]] = "Folding is valid in eval mode only: the statistics are constants."
        submit(course, student, ps, **{**kw, "answers": answers})
        expected[(student, ps)] = (score, failed, why)
    runs = {ps: nbgrader(course, "autograde", ps, "--force", check=False) for ps in ASSIGNMENTS}
    return course, expected, runs


def test_autograde_grades_every_submission_without_crashing(graded):
    course, expected, runs = graded
    for ps, res in runs.items():
        assert res.returncode == 0, f"autograde {ps} failed:\n{res.stderr[-4000:]}"
    for student, ps in expected:
        assert (course / "autograded" / student / ps / f"{ASSIGNMENTS[ps]}.ipynb").exists()


def test_exact_scores_in_the_gradebook(graded):
    course, expected, _ = graded
    got = {ps: scores(course, ps) for ps in ASSIGNMENTS}
    problems = []
    for (student, ps), (score, failed, why) in sorted(expected.items()):
        auto, lost, _ = got[ps][student]
        if auto != score or (failed is not None and lost != failed):
            problems.append(f"{student}/{ps}: auto score {auto} (expected {score}: {why}); "
                            f"failed {sorted(lost)} (expected {sorted(failed or [])})")
    assert not problems, "\n".join(problems)


def test_feedback_says_what_is_wrong(graded):
    course, _, _ = graded
    nbgrader(course, "generate_feedback", "ps1_forward", "--force")
    html = lambda s: (course / "feedback" / s / "ps1_forward" / "batchnorm_forward.html").read_text()
    assert "divided by N - 1" in html("unbiased")
    assert "No module named &#39;bnref&#39;" in html("calls_bnref") or "No module named 'bnref'" in html("calls_bnref")
    assert "batchnorm_forward is not defined" in html("calls_bnref")
    assert "did not return in time" in html("infinite_loop") and "did not finish within 6 s" in html("infinite_loop")
    assert "ended the Python process" in html("kills_kernel")
    assert "momentum convention is flipped" in html("flipped")
    assert "wrong axis" in html("wrong_axis")
    assert html("correct").count("Passed") == len(PS1_TESTS)


def test_manual_grading_of_the_written_answer_and_csv_export(graded):
    from nbgrader.api import Gradebook
    course, expected, _ = graded
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        for ps, gid in WRITTEN.items():
            grade = gb.find_grade(gid, ASSIGNMENTS[ps], ps, "correct")
            assert grade.needs_manual_grade and grade.auto_score is None
            grade.manual_score = 2         # what the formgrader does when the instructor grades it
            blank = gb.find_grade(gid, ASSIGNMENTS[ps], ps, "blank")
            assert not blank.needs_manual_grade and blank.score == 0   # unchanged answer: 0
        gb.db.commit()
    res = nbgrader(course, "export", "--to", "grades.csv")
    assert res.returncode == 0
    with open(course / "grades.csv") as fh:
        rows = list(csv.DictReader(fh))
    by_key = {(r["student_id"], r["assignment"]): r for r in rows}
    assert len(rows) == len(by_key) >= len(expected)
    for (student, ps), (score, _, _) in expected.items():
        row = by_key[(student, ps)]
        manual = 2 if (student == "correct" and ps in WRITTEN) else 0
        assert float(row["score"]) == score + manual, (student, ps, row)
        assert float(row["max_score"]) == {"ps1_forward": PS1_FULL, "ps2_backward": 13, "ps3_spatial": 11,
                                           "ps4_inference": 7, "ps5_alternatives": 12}[ps]


def test_autograde_refuses_without_a_sandbox_and_names_the_setting(tmp_path):
    course = make_course(tmp_path / "nosandbox", CONFIG)
    nbgrader(course, "generate_assignment", "ps1_forward", "--force")
    submit(course, "solo", "ps1_forward", answers=all_solutions("ps1_forward"))
    # no bubblewrap on PATH: as on a machine where it is not installed
    res = nbgrader(course, "autograde", "ps1_forward", "--force", check=False, env={"PATH": "/nonexistent"})
    assert res.returncode != 0
    assert "cannot start the grading sandbox" in res.stderr and "c.SandboxedGrading.sandbox = 'none'" in res.stderr
    assert scores(course, "ps1_forward")["solo"][0] == 0
    # the documented setting grades trusted submissions without a sandbox
    nbgrader(course, "autograde", "ps1_forward", "--force", "--SandboxedGrading.sandbox=none")
    assert scores(course, "ps1_forward")["solo"][0] == PS1_FULL
