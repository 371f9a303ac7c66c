"""The ``check_*`` functions that the notebooks' visible test cells call, in the learner's kernel.

``check_batchnorm_forward(batchnorm_forward, case="normalise")`` runs the learner's
function on that case's inputs, prints ``Passed ...`` or raises :class:`GradingError` with the
likely mistake. It uses the same cases, comparison and messages as the autograder
(:func:`bnref.grading.exercise.evaluate`); only the executor differs. Here it is feedback
for an honest learner, not a grade: the grade comes from the sandboxed run
(:mod:`bnref.grading.runner`), where only NumPy is available.
"""
import types

from .exercise import LocalExecutor, evaluate
from .exercises import EXERCISES

__all__ = ["GradingError", "make_check"]

# Packages that the graded run does not have: a function that uses them scores 0 there.
NOT_IN_THE_GRADER = ("bnref", "torch", "tensorflow", "keras", "jax", "flax", "mxnet", "sklearn", "scipy")


class GradingError(AssertionError):
    """A failed check; the message says what is likely wrong."""


def _uses(fn, seen=None):
    """Names of modules outside NumPy that ``fn`` (or a function it calls by name) refers to."""
    seen = set() if seen is None else seen
    if not isinstance(fn, types.FunctionType) or id(fn) in seen:
        return set()
    seen.add(id(fn))
    found = set()

    def names(code):
        yield from code.co_names
        for c in code.co_consts:
            if isinstance(c, types.CodeType):
                yield from names(c)
    cells = [c.cell_contents for c in (fn.__closure__ or ()) if _has_contents(c)]
    for obj in [fn.__globals__.get(n) for n in names(fn.__code__)] + cells:
        mod = obj.__name__ if isinstance(obj, types.ModuleType) else getattr(obj, "__module__", None)
        if isinstance(mod, str) and mod.partition(".")[0] in NOT_IN_THE_GRADER:
            found.add(mod.partition(".")[0])
        elif isinstance(obj, types.FunctionType):
            found |= _uses(obj, seen)
    return found


def _has_contents(cell):
    try:
        cell.cell_contents
        return True
    except ValueError:
        return False


def make_check(exercise):
    """The ``check_<name>(*functions, case)`` function of one exercise."""
    roles = exercise.functions

    def check(*functions, case):
        __tracebackhide__ = True   # noqa: F841 (pytest)
        if len(functions) != len(roles) or not all(callable(f) for f in functions):
            raise TypeError(f"{exercise.check_name} takes the functions {', '.join(roles)} "
                            f"(in that order) and case=...; got {len(functions)} arguments")
        if case not in exercise.cases:
            raise ValueError(f"{exercise.check_name}: unknown case {case!r}; the cases are "
                             f"{', '.join(exercise.cases)}")
        names = {}
        for role, f in zip(roles, functions):
            name = getattr(f, "__name__", None)
            names[role] = name if isinstance(name, str) and name not in names.values() else role
        used = sorted(set().union(*(_uses(f) for f in functions)))
        if used:
            raise GradingError(
                f"{' and '.join(dict.fromkeys(names.values()))} uses {', '.join(used)}. The autograder "
                "runs your code with Python and NumPy only, so there it would fail and score 0. "
                "Write it with NumPy.")
        namespace = {names[r]: f for r, f in zip(roles, functions)}
        verdict = evaluate(exercise, case, names, LocalExecutor(namespace))
        if not verdict.passed:
            raise GradingError(verdict.message) from None
        print(f"Passed: {exercise.name}, case {case!r}." + (f" {verdict.message}" if verdict.message else ""))

    check.__name__ = check.__qualname__ = exercise.check_name
    cases = ", ".join(f"``{c}``" + (" (hidden)" if exercise.cases[c].hidden else "") for c in exercise.cases)
    check.__doc__ = (f"Check ``{exercise.signature}``.\n\n"
                     f"Call as ``{exercise.check_name}({', '.join(roles)}, case=...)``. Cases: {cases}.\n"
                     "Prints ``Passed ...`` or raises :class:`GradingError` naming the likely mistake.")
    return check


CHECKS = {ex.check_name: make_check(ex) for ex in EXERCISES.values()}
