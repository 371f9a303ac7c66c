"""The trusted grader: run one notebook's code in the sandbox and decide every test cell.

Given the learner's code cells and the instructor's test cells (from the gradebook, never
from the submission), :func:`grade` starts a :class:`~.sandbox.session.Session`, runs the
cells in it, then, for each ``check_*(...)`` line of each test cell, calls the learner's
functions on inputs chosen here and decides the verdict here (:func:`.exercise.evaluate`).
The learner's code only ever hands back return values.

A test cell may contain a docstring, imports, and calls of the form
``check_<exercise>(function_name, ..., case="<case>")``; anything else is an instructor
error (:class:`UnreadableTestCell`), reported on that cell.
"""
import ast
import secrets
import time
from dataclasses import dataclass, field

from .exercise import Verdict, evaluate
from .exercises import EXERCISES
from .sandbox.session import Failure, Session, SessionConfig

__all__ = ["CheckCall", "Graded", "UnreadableTestCell", "grade", "parse_test_cell", "to_python"]


class UnreadableTestCell(ValueError):
    """A test cell the grader cannot read (the instructor's notebook, not the learner's)."""


@dataclass(frozen=True)
class CheckCall:
    exercise: str
    functions: tuple            # the learner's function names, one per role of the exercise
    case: str


def parse_test_cell(source):
    """The :class:`CheckCall` s in a test cell's source, in order."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise UnreadableTestCell(f"the test cell does not parse: {e}") from None
    calls = []
    for stmt in tree.body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue                                              # the cell's docstring
        call = stmt.value if isinstance(stmt, ast.Expr) else None
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
                and call.func.id.startswith("check_")):
            raise UnreadableTestCell(f"line {stmt.lineno}: a test cell may only call check_* functions")
        name = call.func.id[len("check_"):]
        if name not in EXERCISES:
            raise UnreadableTestCell(f"line {stmt.lineno}: there is no exercise {name!r}")
        ex = EXERCISES[name]
        kw = {k.arg: k.value for k in call.keywords}
        if (len(call.args) != len(ex.functions) or not all(isinstance(a, ast.Name) for a in call.args)
                or set(kw) != {"case"} or not isinstance(kw["case"], ast.Constant)
                or kw["case"].value not in ex.cases):
            raise UnreadableTestCell(f"line {stmt.lineno}: expected {ex.check_name}({', '.join(ex.functions)}, "
                                f"case=<one of {', '.join(ex.cases)}>)")
        calls.append(CheckCall(name, tuple(a.id for a in call.args), kw["case"].value))
    return calls


def to_python(source):
    """A cell's source as plain Python: IPython magics and ``!`` lines become calls of ``get_ipython()``.

    Text only (IPython's own transformer); in the sandbox ``get_ipython()`` returns an
    object whose methods do nothing, so ``%timeit`` or ``!pip`` lines are skipped, not errors.
    """
    from IPython.core.inputtransformer2 import TransformerManager
    try:
        return TransformerManager().transform_cell(source)
    except Exception:   # noqa: BLE001 - leave it to Python to report the syntax error
        return source


@dataclass
class Graded:
    """The outcome for one notebook."""

    reports: list                                   # CellReport per learner cell
    verdicts: dict                                  # grade_id -> Verdict
    seconds: float = 0.0
    startup: float = 0.0                            # seconds until the cells had run
    checks: list = field(default_factory=list)      # (grade_id, case, seconds) per check
    restarts: int = 0


class _SandboxExecutor:
    """Sends a check's calls to the session, all within one time budget."""

    def __init__(self, session, deadline):
        self.session, self.deadline = session, deadline

    def run(self, steps):
        left = self.deadline - time.monotonic()
        if left <= 0:
            return Failure("timeout")
        replies = self.session.call(steps, timeout=left)
        if isinstance(replies, Failure):
            return replies
        if not all(type(r) is dict and type(r.get("error", {})) is dict and type(r.get("args", [])) is list
                   for r in replies):
            return Failure("protocol", "malformed reply")
        return replies


def grade(cells, tests, config=SessionConfig()):
    """Grade one notebook: ``cells`` (learner code, plain Python), ``tests`` [(grade_id, source)].

    Returns :class:`Graded`. Raises :class:`~.sandbox.bwrap.SandboxUnavailable` if no sandbox
    can be made; every other problem (the learner's errors, hangs, crashes, an unreadable
    test cell) becomes a failing verdict with its reason.
    """
    t0 = time.monotonic()
    plans = {}
    for gid, source in tests:
        try:
            plans[gid] = parse_test_cell(source)
        except UnreadableTestCell as e:
            plans[gid] = e
    verdicts, timings = {}, []
    with Session(list(cells), config) as session:
        session.start()
        startup = time.monotonic() - t0
        hung = {}                                   # function name -> test where it hung
        for gid, _ in tests:
            plan = plans[gid]
            if isinstance(plan, UnreadableTestCell):
                verdicts[gid] = Verdict(False, f"The grader could not read this test cell ({plan}); "
                                               "this is not your fault: tell your instructor.")
                continue
            verdict = Verdict(True)
            notes = []
            for check in plan:
                ex = EXERCISES[check.exercise]
                stuck = [f for f in check.functions if f in hung]
                if stuck:
                    verdict = Verdict(False, f"Not run: {stuck[0]} did not return in time in an earlier "
                                             f"test ({hung[stuck[0]]}), so its remaining tests count as failed.")
                    break
                c0 = time.monotonic()
                # fresh inputs for every case, visible ones too: none can be answered from a table
                v = evaluate(ex, check.case, dict(zip(ex.functions, check.functions)),
                             _SandboxExecutor(session, c0 + config.call_timeout), nonce=secrets.randbits(63))
                timings.append((gid, check.case, time.monotonic() - c0))
                if v.hung:
                    hung[v.hung] = gid
                if not v.passed:
                    verdict = v
                    break
                if v.message:
                    notes.append(v.message)
            if verdict.passed:
                verdict = Verdict(True, " ".join(dict.fromkeys(notes)))
            verdicts[gid] = verdict
        reports, restarts = session.reports, session.restarts
    return Graded(reports, verdicts, time.monotonic() - t0, startup, timings, restarts)
