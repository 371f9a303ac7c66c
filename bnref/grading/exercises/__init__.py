"""One module per exercise: its cases, call plan, reference and diagnoses (see ``exercise.py``).

Every module here defines ``exercise``; :data:`EXERCISES` maps each exercise's name to it,
and ``bnref.grading`` makes a ``check_<name>`` function for the notebooks' test cells. To add
an exercise, add a module; to add a diagnosis, add a function to its exercise's module.
"""
import importlib
import pkgutil

EXERCISES = {}
for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    _ex = importlib.import_module(f"{__name__}.{_m.name}").exercise
    if _ex.name != _m.name:
        raise ImportError(f"exercises/{_m.name}.py defines exercise {_ex.name!r}; name them alike")
    EXERCISES[_ex.name] = _ex
