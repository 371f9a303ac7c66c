"""The grader under attack: every attack scores 0, bystanders keep their marks and files.

One real ``nbgrader autograde ps1_forward`` run (the repository's configuration, parallel
sandboxes) grades, side by side:

- every attack of ``grading_attacks.ATTACKS``, each on an otherwise blank notebook;
- honest submissions with the noise real notebooks have (warnings, prints, stderr, magics,
  helper cells, float64 intermediates, NumPy deprecation warnings, a crashing scratch cell);
- two bystanders with correct answers, one graded before the attackers and one after.

Then it checks what an instructor relies on: the exact scores, an untouched ``submitted/``
and gradebook source cells (also after a pause, for processes that try to outlive grading),
no process left behind, and feedback that carries no secret of the grader.
"""
import re
import sqlite3
import subprocess
import time

import nbformat
import pytest

from course import (ASSIGNMENTS, all_solutions, grade_id, is_test, make_course, nbgrader, release,
                    scores, tree_hashes, write_submission)
from grading_attacks import (ATTACKS, HONEST, SECRET_ENV, SECRET_FILE_TEXT, SECRET_VALUE,
                             SOLUTION_MARKER)

pytestmark = [pytest.mark.slow, pytest.mark.sandbox]
PS = "ps1_forward"
FULL = 15
# Short budgets in the test course, so the looping attacks cost seconds.
CONFIG = "c.SandboxedGrading.call_timeout = 3\nc.SandboxedGrading.cell_timeout = 5\nc.SandboxedGrading.jobs = 2\n"

HONEST_ANSWERS = {
    # float64 intermediates cast back, a warning and a print inside the function, a NumPy
    # deprecation warning, a helper from another cell
    "batchnorm_forward": '''
import warnings
def batchnorm_forward(x, gamma, beta, eps=1e-5):
    warnings.warn("computing in float64")
    print("shapes:", x.shape, gamma.shape)
    x64 = x.astype(np.float64)
    mean = _helper_mean(x64) if "_helper_mean" in globals() else x64.mean(axis=0)
    var = ((x64 - mean) ** 2).mean(axis=0)
    out = gamma * (x64 - mean) / np.sqrt(var + eps) + beta
    return out.astype(x.dtype), (x, mean, var)
''',
    "running_stats_update": '''
import sys
def running_stats_update(running_mean, running_var, x, momentum=0.1):
    print("updating", file=sys.stderr)
    _ = np.row_stack([x.mean(axis=0), x.mean(axis=0)])      # DeprecationWarning in NumPy 2.4
    N = x.shape[0]
    mean = x.mean(axis=0)
    var = ((x - mean) ** 2).sum(axis=0) / (N - 1)
    return (1 - momentum) * running_mean + momentum * mean, (1 - momentum) * running_var + momentum * var
''',
    "batchnorm_inference": '''
def batchnorm_inference(x, gamma, beta, running_mean, running_var, eps=1e-5):
    import os
    os.write(2, b"fd-level stderr\\n")
    return gamma * (x - running_mean) / np.sqrt(running_var + eps) + beta
''',
}


def _tamper(nb, how):
    """Change the notebook's cells the way the attack says."""
    cells = []
    for cell in nb.cells:
        if how == "delete_tests" and is_test(cell):
            continue
        if how == "edit_tests" and is_test(cell):
            cell.source = "print('Passed')"
        if how == "markdown_tests" and is_test(cell):
            cell = nbformat.v4.new_markdown_cell(cell.source, metadata=cell.metadata)
        if how == "strip_test_metadata" and is_test(cell):
            del cell.metadata["nbgrader"]
        cells.append(cell)
        if how == "duplicate_test_id" and is_test(cell):
            fake = nbformat.v4.new_code_cell("print('Passed')")
            fake.metadata["nbgrader"] = dict(cell.metadata["nbgrader"])
            cells.append(fake)
    if how in ("bonus_cell", "strip_test_metadata"):
        bonus = nbformat.v4.new_code_cell("print('Passed')")
        bonus.metadata["nbgrader"] = {"grade": True, "solution": False, "locked": False, "points": 100,
                                      "grade_id": "bonus_points", "schema_version": 3, "task": False}
        cells.insert(3, bonus)
    nb.cells = cells
    return nb


def _attack_notebook(course, attack):
    nb = release(course, PS)
    if attack.first:       # before every test cell (after the notebook's `import numpy as np`)
        at = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code") + 1
    else:                  # after the last answer, so the attack's definitions win over the stubs
        at = max(i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("solution")) + 1
    for gid, code in attack.answers.items():
        next(c for c in nb.cells if grade_id(c) == gid).source = code
    for k, code in enumerate(attack.cells):
        nb.cells.insert(at + k, nbformat.v4.new_code_cell(code))
    return _tamper(nb, attack.tamper)


def _honest_notebook(course, name, extra_cells):
    nb = release(course, PS)
    answers = all_solutions(PS) if name != "warnings_and_prints" else {**all_solutions(PS), **HONEST_ANSWERS}
    for cell in nb.cells:
        if grade_id(cell) in answers:
            cell.source = answers[grade_id(cell)]
    first = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    for k, code in enumerate(extra_cells):
        nb.cells.insert(first + 1 + k, nbformat.v4.new_code_cell(code))
    return nb


def _source_cells(course):
    with sqlite3.connect(course / "gradebook.db") as db:
        return db.execute("SELECT name, source, checksum FROM source_cell ORDER BY name").fetchall()


def _leftover_processes():
    out = subprocess.run(["ps", "-eo", "user:20,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines()[1:]
            if "/sandbox/worker" in line or "bnref-grade" in line or (line.startswith("nobody") and "python" in line)]


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    course = make_course(tmp_path_factory.mktemp("attacked"), CONFIG)
    # a marker only the instructor's solutions contain
    src = course / "solutions" / PS / f"{ASSIGNMENTS[PS]}.ipynb"
    nb = nbformat.read(str(src), 4)
    cell = next(c for c in nb.cells if grade_id(c) == "batchnorm_forward")
    cell.source = cell.source.replace("### END SOLUTION", f"# {SOLUTION_MARKER}\n    ### END SOLUTION")
    nbformat.write(nb, str(src))
    nbgrader(course, "generate_assignment", PS, "--force")
    home = tmp_path_factory.mktemp("grader_home")
    (home / "instructor-notes.txt").write_text(SECRET_FILE_TEXT)
    env = {SECRET_ENV: SECRET_VALUE, "HOME": str(home)}

    correct = release(course, PS)
    for cell in correct.cells:
        if grade_id(cell) in all_solutions(PS):
            cell.source = all_solutions(PS)[grade_id(cell)]
    for student in ("aaa_bystander", "zzz_bystander"):
        write_submission(course, student, PS, correct)
    for name, attack in ATTACKS.items():
        write_submission(course, name, PS, _attack_notebook(course, attack), attack.files)
    for name, cells in HONEST.items():
        write_submission(course, f"honest_{name}", PS, _honest_notebook(course, name, cells))
    write_submission(course, "blank", PS, release(course, PS))

    submitted = tree_hashes(course / "submitted")
    source_cells = _source_cells(course)
    t0 = time.monotonic()
    run = nbgrader(course, "autograde", PS, "--force", check=False, env=env, timeout=1800)
    seconds = time.monotonic() - t0
    after_run = scores(course, PS)
    time.sleep(8)                      # longer than the detached attack waits before it strikes
    nbgrader(course, "generate_feedback", PS, "--force", env=env)
    return dict(course=course, run=run, seconds=seconds, submitted=submitted,
                source_cells=source_cells, after_run=after_run, env=env)


def test_autograde_finishes_and_grades_everyone(attacked):
    run, course = attacked["run"], attacked["course"]
    assert run.returncode == 0, run.stderr[-5000:]
    students = [p.name for p in (course / "submitted").iterdir()]
    for s in students:
        assert (course / "autograded" / s / PS / f"{ASSIGNMENTS[PS]}.ipynb").exists(), s


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_scores_zero(attacked, name):
    auto, _, max_score = attacked["after_run"][name]
    assert (auto, max_score) == (0, FULL), f"{name} ({ATTACKS[name].why}) got {auto} of {max_score}"


@pytest.mark.parametrize("name", sorted(HONEST))
def test_honest_work_gets_every_point(attacked, name):
    auto, lost, max_score = attacked["after_run"][f"honest_{name}"]
    assert (auto, max_score) == (FULL, FULL), f"honest {name} lost {sorted(lost)}"


def test_bystanders_keep_full_marks_before_and_after_a_pause(attacked):
    later = scores(attacked["course"], PS)
    for s in ("aaa_bystander", "zzz_bystander"):
        assert attacked["after_run"][s][0] == FULL and later[s][0] == FULL
    assert later == attacked["after_run"], "scores changed after autograde exited"
    assert later["blank"][0] == 0


def test_submissions_and_gradebook_source_cells_are_untouched(attacked):
    course = attacked["course"]
    assert tree_hashes(course / "submitted") == attacked["submitted"]
    assert _source_cells(course) == attacked["source_cells"]


def test_nothing_the_submissions_started_is_still_running(attacked):
    assert _leftover_processes() == []


def test_feedback_carries_no_secret_of_the_grader(attacked):
    course = attacked["course"]
    leaks = []
    for name in ATTACKS:
        for path in [course / "feedback" / name / PS / f"{ASSIGNMENTS[PS]}.html",
                     course / "autograded" / name / PS / f"{ASSIGNMENTS[PS]}.ipynb"]:
            text = path.read_text(errors="replace")
            for secret in (SECRET_VALUE, SECRET_FILE_TEXT, SOLUTION_MARKER, "zzz_bystander", "aaa_bystander"):
                if secret in text:
                    leaks.append(f"{name}: {secret} in {path.name}")
    assert not leaks, leaks


def test_a_looping_function_costs_one_budget_and_its_later_tests_fail_at_once(attacked):
    nb = nbformat.read(str(attacked["course"] / "autograded" / "infinite_loops_everywhere" / PS /
                           f"{ASSIGNMENTS[PS]}.ipynb"), 4)
    messages = [c.outputs[0].get("evalue", "") for c in nb.cells if is_test(c)]
    assert sum("did not return in time" in m and not m.startswith("Not run") for m in messages) == 3
    assert sum(m.startswith("Not run:") for m in messages) == len(messages) - 3
    loop_cell = next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith("while True"))
    assert "did not finish within 5 s" in loop_cell.outputs[-1]["evalue"]


def test_the_feedback_shows_each_tests_diagnosis(attacked):
    html = (attacked["course"] / "feedback" / "honest_warnings_and_prints" / PS /
            f"{ASSIGNMENTS[PS]}.html").read_text()
    assert html.count("Passed") >= 12
    blank = (attacked["course"] / "feedback" / "blank" / PS / f"{ASSIGNMENTS[PS]}.html").read_text()
    assert "is not implemented yet" in blank
    assert re.search(r"Score:?\s*0(\.0)?\s*/\s*15", re.sub("<[^>]+>", " ", blank))


# ---------------------------------------------------------------- the same attacks under stock nbgrader
# Attacks that are safe to run without a sandbox on the test machine (no kill, fork, memory,
# disk or file-system-wide writes): under stock nbgrader, which runs the notebook and its test
# cells in one Jupyter kernel and reads the grade from the outputs, they are what the
# sandboxed grader is tested against. That they succeed there shows the tests above can fail.
STOCK_SAFE = ["execute_result_then_raise", "display_publish", "fake_grading_module_finder",
              "bnref_package_written_by_a_cell", "bnref_package_shipped_in_the_submission",
              "input_transformer_empties_test_cells", "custom_exception_handler", "bnref_in_a_thread",
              "run_the_instructors_solutions", "patch_numpy_comparisons", "answers_looked_up_from_a_table",
              "gradebook_zeroes_other_students"]
STOCK_CONFIG = """
from nbgrader.preprocessors import Execute, IgnorePattern, LimitOutput, SaveAutoGrades, AssignLatePenalties
from nbgrader.preprocessors import CheckCellMetadata, ClearOutput, DeduplicateIds, OverwriteKernelspec, OverwriteCells
from nbconvert.preprocessors import ClearMetadataPreprocessor
c.Autograde.sanitize_preprocessors = [ClearOutput, DeduplicateIds, OverwriteKernelspec, OverwriteCells,
                                      CheckCellMetadata]
c.Autograde.autograde_preprocessors = [Execute, IgnorePattern, ClearMetadataPreprocessor, LimitOutput,
                                       SaveAutoGrades, AssignLatePenalties, CheckCellMetadata]
c.Execute.timeout = 60
"""


@pytest.fixture(scope="module")
def stock(tmp_path_factory):
    course = make_course(tmp_path_factory.mktemp("stock"), STOCK_CONFIG)
    nbgrader(course, "generate_assignment", PS, "--force")
    correct = release(course, PS)
    for cell in correct.cells:
        if grade_id(cell) in all_solutions(PS):
            cell.source = all_solutions(PS)[grade_id(cell)]
    write_submission(course, "aaa_bystander", PS, correct)
    harm = "gradebook_zeroes_other_students"
    for name in STOCK_SAFE:
        if name != harm:
            write_submission(course, name, PS, _attack_notebook(course, ATTACKS[name]), ATTACKS[name].files)
    nbgrader(course, "autograde", PS, "--force", check=False, timeout=1800)
    before = scores(course, PS)
    # then one submission that attacks the gradebook, graded on its own
    write_submission(course, harm, PS, _attack_notebook(course, ATTACKS[harm]))
    nbgrader(course, "autograde", PS, "--student", harm, "--force", check=False, timeout=600)
    return before, scores(course, PS)


def test_the_attacks_work_against_stock_nbgrader(stock, attacked):
    before, after = stock
    assert before["aaa_bystander"][0] == FULL
    won = sorted(name for name in STOCK_SAFE if name in before and before[name][0] > 0)
    print(f"\nunder stock nbgrader: {', '.join(f'{n} {before[n][0]:g}/{FULL}' for n in won)}")
    assert "answers_looked_up_from_a_table" in won
    assert len(won) >= 4, f"only {won} got marks under stock nbgrader"
    assert after["aaa_bystander"][0] == 0, "the gradebook attack did not reach the stock grader's bystander"
    for name in won:                                 # ... and all of them get 0 in the sandbox
        assert attacked["after_run"][name][0] == 0
