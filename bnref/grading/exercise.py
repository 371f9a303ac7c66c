"""What an exercise is, and how one check of it is decided.

An exercise module (``bnref/grading/exercises/<name>.py``) builds one :class:`Exercise`:

- its **cases**: named lists of *trials* (the inputs of one call), what each case grades
  (``compare``) and which known mistakes it lets through because another case grades them
  (``tolerate``);
- its **call plan**: the :class:`Call`\\ s one trial makes to the learner's functions;
- its **reference**: the right outputs, computed with bnref;
- its **diagnoses**: one small named function per known mistake, computing what that
  mistake would output, next to the message that explains it;
- its **error diagnoses**: for a mistake that makes the learner's code raise instead of return
  (e.g. a broadcast over the wrong axis of a non-square matrix), a small named function that
  decides from the trial and the exception's type and message whether that mistake explains it.

:func:`evaluate` runs one case through an *executor* and returns a :class:`Verdict`. The
executor is the only thing that differs between the two places a check runs:

- in the learner's own kernel (:class:`LocalExecutor`): the visible test cells call the
  learner's functions directly, for immediate feedback;
- when an instructor grades (:mod:`bnref.grading.runner`): the calls go to a worker in a
  sandbox, which hands back only the values the functions returned.

Either way the values pass through the same plain-data encoding (:mod:`.sandbox.wire`), and
the comparison, the diagnosis and the message are computed here, from those values only.
"""
import secrets
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import bnref

from .sandbox import wire
from .sandbox.session import Failure

__all__ = ["Call", "Case", "Diagnosis", "ErrorDiagnosis", "Exercise", "LocalExecutor", "Verdict", "eps_kwargs", "evaluate",
           "forward_backward_calls", "forward_call"]

# float64: a right NumPy answer is ~1e-15 away; float32: single-precision rounding
TOLERANCE = {np.dtype(np.float64): (1e-7, 1e-8), np.dtype(np.float32): (1e-3, 2e-4)}


# ---------------------------------------------------------------- the parts of an exercise
@dataclass(frozen=True)
class Output:
    """In a call's arguments: an element of what an earlier call returned (e.g. the cache)."""

    call: "Call"
    name: str


@dataclass(eq=False)
class Call:
    """One call of a learner's function: ``fn(*args.values(), **kwargs)``.

    ``args`` maps parameter names to values in positional order; ``returns`` names what the
    function returns: a tuple of that many elements, or one value (a 1-tuple of names with
    ``single=True``). Array arguments must come back unchanged unless named in ``mutable``.
    """

    fn: str
    args: dict
    kwargs: dict = field(default_factory=dict)
    returns: tuple = ("out",)
    single: bool = False
    mutable: tuple = ()

    def __getitem__(self, name):
        return Output(self, name)


def eps_kwargs(t):
    """``{"eps": ...}`` when the trial sets eps, else nothing (the function's default is tested)."""
    return {"eps": t["eps"]} if "eps" in t else {}


def forward_call(t, fn, extra=()):
    """The call of a forward pass ``fn(x, gamma, beta, *extra, eps=...) -> (out, cache)``."""
    args = {"x": t["x"], "gamma": t["gamma"], "beta": t["beta"], **{k: t[k] for k in extra}}
    return Call(fn, args, eps_kwargs(t), returns=("out", "cache"))


def forward_backward_calls(t, fwd, bwd):
    """The learner's forward pass, then their backward pass on its cache: ``bwd(dy, cache)``."""
    f = forward_call(t, fwd)
    return [f, Call(bwd, {"dy": t["dy"], "cache": f["cache"]}, returns=("dx", "dgamma", "dbeta"))]


@dataclass(frozen=True)
class Case:
    name: str
    build: object               # build(rng) -> [trial, ...]; rng(seed) -> np.random.Generator
    compare: tuple
    tolerate: tuple = ()
    hidden: bool = False
    keep_dtype: bool = False    # outputs must keep the (float32) input dtype
    hint: str = ""              # said when this case fails and no diagnosis explains it


@dataclass(frozen=True)
class Diagnosis:
    name: str
    message: str
    outputs: object             # outputs(trial) -> {name: array}: what this mistake gives


@dataclass(frozen=True)
class ErrorDiagnosis:
    name: str
    message: str
    explains: object            # explains(trial, kind, message) -> bool: this mistake raised it


@dataclass
class Verdict:
    passed: bool
    message: str = ""
    hung: str = ""              # the function that did not return in time (later checks skip it)


class Exercise:
    """An exercise: see the module docstring. ``functions`` are the check's parameters."""

    def __init__(self, name, functions, signature):
        self.name, self.functions, self.signature = name, tuple(functions), signature
        self.cases, self.diagnoses, self.error_diagnoses = {}, [], []
        self._plan = self._reference = None
        self.describe = _describe_inputs

    def plan(self, fn):
        self._plan = fn
        return fn

    def reference(self, fn):
        def on_the_reference_kernels(t):
            # The right answers come from bnref.reference, the book's formulas: whatever CPU
            # kernels the session chose, and safely from several grading threads at once.
            with bnref.use_cpu_kernels("reference"):
                return fn(t)

        self._reference = on_the_reference_kernels
        return fn

    def case(self, name, build, compare, **kw):
        if name in self.cases:
            raise ValueError(f"{self.name}: case {name!r} defined twice")
        self.cases[name] = Case(name, build, tuple(compare), **kw)

    def diagnosis(self, message):
        """Decorator: ``outputs(trial)`` of one known mistake, named after the function."""
        def register(fn):
            self.add(Diagnosis(fn.__name__, message, fn))
            return fn
        return register

    def error_diagnosis(self, message):
        """Decorator: ``explains(trial, kind, message)`` of one mistake that raises.

        ``kind`` and ``message`` are the exception's type name and text as the learner's process
        reported them. They come from untrusted code, so they only choose the feedback's wording:
        a call that raised fails its case whatever they say.
        """
        def register(fn):
            if fn.__name__ in {d.name for d in self.error_diagnoses}:
                raise ValueError(f"{self.name}: error diagnosis {fn.__name__!r} defined twice")
            self.error_diagnoses.append(ErrorDiagnosis(fn.__name__, message, fn))
            return fn
        return register

    def add(self, *diagnoses):
        known = {d.name for d in self.diagnoses}
        for d in diagnoses:
            if d.name in known:
                raise ValueError(f"{self.name}: diagnosis {d.name!r} defined twice")
            known.add(d.name)
            self.diagnoses.append(d)

    @property
    def check_name(self):
        return f"check_{self.name}"


# ---------------------------------------------------------------- executors
class LocalExecutor:
    """Calls the learner's functions in this process (the visible tests in their kernel)."""

    def __init__(self, namespace):
        self.namespace = namespace

    def run(self, steps):
        results, replies = [], []
        for step in steps:
            fn = self.namespace.get(step["fn"])
            # every argument is a fresh copy, exactly as the sandbox's worker would receive it
            args = [_resolve(wire.decode(wire.encode(a), refs=wire.Ref), results) for a in step["args"]]
            kwargs = {k: _resolve(wire.decode(wire.encode(v), refs=wire.Ref), results)
                      for k, v in step["kwargs"].items()}
            try:
                value = fn(*args, **kwargs)
            except BaseException as e:   # noqa: BLE001 - the learner's error becomes the message
                if isinstance(e, KeyboardInterrupt):
                    raise
                replies.append({"error": _local_error(e)})
                break
            results.append(value)
            # what comes back is what a sandboxed worker would send: encoded, then decoded
            replies.append(wire.decode(wire.encode({"value": value,
                                                    "args": [args[i] for i in step["watch"]]})))
        return replies


def _resolve(a, results):
    if type(a) is not wire.Ref:
        return a
    return results[a.step] if a.index is None else results[a.step][a.index]


def _local_error(e):
    """The same description of an exception as the worker gives: frames in the learner's code."""
    here = [str(Path(p).resolve()) for p in (sys.prefix, sys.base_prefix, Path(__file__).parents[1])]
    where = [f"line {fs.lineno}, in {fs.name}: {fs.line or ''}".rstrip(": ")
             for fs in traceback.extract_tb(e.__traceback__)
             if not any(str(Path(fs.filename).resolve()).startswith(h) for h in here)
             and not fs.filename.startswith("<frozen")]
    return {"type": type(e).__name__, "message": str(e)[:2000], "where": where[-5:]}


# ---------------------------------------------------------------- one check
class _Wrong(Exception):
    """A failed check: the message for the learner."""


def _rng_factory(nonce):
    """Seeded generators: visible cases (nonce 0) are reproducible; hidden ones are not."""
    return lambda seed: np.random.default_rng([seed, nonce] if nonce else seed)


def evaluate(exercise, case_name, functions, executor, nonce=None):
    """Run case ``case_name`` of ``exercise`` on the learner's ``functions`` (role -> name).

    ``nonce`` is mixed into every seed. By default it is 0 for visible cases (the learner sees
    the same inputs every time) and drawn afresh for hidden ones; the autograder draws it
    afresh for every case, so no answer can be looked up from inputs known in advance. The
    shapes and the controlled statistics of the inputs do not depend on it, so a right or a
    wrong implementation gets the same verdict whatever its value. Returns a :class:`Verdict`.
    """
    case = exercise.cases[case_name]
    if nonce is None:
        nonce = secrets.randbits(63) if case.hidden else 0
    notes = []
    try:
        for t in case.build(_rng_factory(nonce)):
            notes += _one_trial(exercise, case, functions, executor, t)
    except _Wrong as w:
        return Verdict(False, str(w), hung=getattr(w, "hung", ""))
    notes = list(dict.fromkeys(notes))
    return Verdict(True, " ".join(notes))


def _one_trial(exercise, case, functions, executor, t):
    calls = exercise._plan(t, functions)
    steps = _steps(calls)
    replies = executor.run(steps)
    where = f"for {exercise.describe(t)}"
    if isinstance(replies, Failure):
        raise _failure(replies, calls, where)
    got, notes = {}, []
    for call, step, reply in zip(calls, steps, replies):
        if "error" in reply:
            raise _Wrong(_raised(call.fn, reply["error"], where, _error_explained(exercise, t, reply["error"])))
        values = _returned(call, reply.get("value"))
        for name, v in zip(call.returns, values):
            got.setdefault(name, []).append(v)
    if len(replies) < len(calls):
        raise _Wrong(f"internal grading error: {len(calls) - len(replies)} calls got no reply ({where}).")
    got = {name: _stacked(name, vs) for name, vs in got.items()}
    arrays = {}
    for name in case.compare:
        arrays[name], note = _as_array(name, got[name], where)
        if note:
            notes.append(note)
    changed = _changed_inputs(calls, steps, replies)
    ref = exercise._reference(t)
    src, in_dtype = next((k, v.dtype) for k, v in t.items() if isinstance(v, np.ndarray) and v.dtype.kind == "f")
    tol = TOLERANCE[np.dtype(in_dtype)]
    bad = [n for n in case.compare if not _close(arrays[n], ref[n], tol)]
    if changed:
        fn, arg = changed[0]
        msg = (f"{fn} changed its argument {arg} in place (e.g. {arg} -= ... or {arg}[...] = ...): "
               f"the caller's array is modified, which breaks the rest of a network. Compute new "
               f"arrays instead ({arg} = {arg} - ...)")
        if bad:
            msg += ", and its result is wrong too: " + _explain(exercise, case, t, arrays, ref, bad, tol, got)
        raise _Wrong(f"{msg} ({where}).")
    if bad:
        tolerated = _tolerated(exercise, case, t, arrays, tol)
        if tolerated:
            return notes + [f"This test checks something else, but note: {tolerated}"]
        raise _Wrong(f"{_explain(exercise, case, t, arrays, ref, bad, tol, got)} ({where}).")
    if case.keep_dtype:
        wrong = [n for n in case.compare if arrays[n].dtype != in_dtype]
        if wrong:
            raise _Wrong(f"{', '.join(wrong)} is {arrays[wrong[0]].dtype} for {in_dtype} input ({where}): keep "
                         f"the input's dtype ({in_dtype} in, {in_dtype} out). A float64 array created "
                         f"inside your function (np.array([...]), np.zeros(D), np.float64(...)) promotes the "
                         f"result; create it with dtype={src}.dtype, or cast the result with .astype({src}.dtype).")
    return notes


def _steps(calls):
    """The plan as the worker's request: arguments as values or references."""
    index = {id(c): i for i, c in enumerate(calls)}
    steps = []
    for c in calls:
        def ref(v):
            if isinstance(v, Output):
                i = index[id(v.call)]
                return wire.Ref(i, None if v.call.single else v.call.returns.index(v.name))
            return v
        names = list(c.args)
        watch = [i for i, n in enumerate(names) if isinstance(c.args[n], np.ndarray) and n not in c.mutable]
        steps.append({"fn": c.fn, "args": [ref(c.args[n]) for n in names],
                      "kwargs": {k: ref(v) for k, v in c.kwargs.items()}, "watch": watch})
    return steps


def _failure(f, calls, where):
    fns = calls[f.step].fn if 0 <= f.step < len(calls) else " and ".join(dict.fromkeys(c.fn for c in calls))
    if f.kind == "timeout":
        w = _Wrong(f"{fns} did not return in time: the grader stopped it (an infinite loop? a "
                   f"very slow loop over elements?) ({where}).")
        w.hung = fns
        return w
    if f.kind == "crash":
        return _Wrong(f"{fns} ended the Python process before returning (os._exit, sys.exit in a "
                      f"child, a crash, or over the memory limit) ({where}). {f.detail}".rstrip())
    return _Wrong(f"the grader could not read what {fns} returned ({f.detail}); return NumPy arrays "
                  f"and tuples ({where}).")


def _error_text(err):
    """``(kind, message)`` of an exception the learner's process reported, cut to length."""
    return str(err.get("type", "Exception"))[:100], str(err.get("message", ""))[:2000]


def _error_explained(exercise, t, err):
    """The message of the first error diagnosis that explains ``err`` on trial ``t``, or ""."""
    kind, msg = _error_text(err)
    for d in exercise.error_diagnoses:
        with np.errstate(all="ignore"):
            try:
                if d.explains(t, kind, msg):
                    return d.message
            except Exception:      # a diagnosis that cannot decide on this trial explains nothing
                continue
    return ""


def _raised(fn, err, where, likely=""):
    kind, msg = _error_text(err)
    if kind == "NotImplementedError":
        return f"{fn} is not implemented yet: replace `raise NotImplementedError()` with your code."
    if kind == "NameError" and f"'{fn}'" in msg:
        return (f"{fn} is not defined: run the cell that defines it, and check that it runs without "
                f"an error ({where}).")
    loc = ""
    frames = err.get("where") or []
    if frames and isinstance(frames[-1], str):
        loc = f" ({frames[-1]})"
    if kind == "ReturnValueError":
        return f"{fn} could not be given what the previous call returned: {msg} ({where})."
    hint = ""
    if likely:
        hint = f" Likely mistake: {likely}"
    elif kind == "TypeError" and "argument" in msg:
        hint = " Keep the function's name and arguments exactly as given."
    elif kind == "ValueError" and "broadcast" in msg:
        hint = " Check the shapes: print them before the line that fails."
    return f"{fn} raised {kind}: {msg}{loc} ({where}).{hint}"


def _returned(call, value):
    """The elements named by ``call.returns``, or a structure error."""
    if call.single:
        if type(value) is tuple:
            raise _Wrong(f"{call.fn} must return {call.returns[0]} only, got a tuple of {len(value)}.")
        return [value]
    if type(value) is not tuple or len(value) != len(call.returns):
        what = "(" + ", ".join(call.returns) + ")"
        if type(value) in (tuple, list):
            got = f"a {type(value).__name__} of {len(value)}"
        else:
            got = _kind(value)
        raise _Wrong(f"{call.fn} must return {what}, got {got}.")
    return list(value)


def _kind(v):
    if isinstance(v, np.ndarray):
        return f"an array of shape {v.shape}"
    if isinstance(v, wire.Other):
        return f"a {v.type_name}"
    return "None" if v is None else f"a {type(v).__name__}"


def _stacked(name, values):
    if len(values) == 1:
        return values[0]
    try:
        return np.stack([np.asarray(v, dtype=float) if not isinstance(v, np.ndarray) else v for v in values])
    except (ValueError, TypeError) as e:
        raise _Wrong(f"{name} changes shape or type from one call to the next ({e}).") from None


def _as_array(name, v, where):
    """``(array, note)``: the output as a float array, or a clear failure."""
    if v is None:
        raise _Wrong(f"{name} is None (did you forget to assign or return it?) ({where}).")
    if isinstance(v, wire.Other):
        raise _Wrong(f"{name} is a {v.type_name}, not a NumPy array ({where}).")
    if not isinstance(v, np.ndarray):
        try:
            a = np.asarray(v, dtype=np.float64)
        except (ValueError, TypeError):
            raise _Wrong(f"{name} is a {type(v).__name__} that is not an array of numbers ({where}).") from None
        return a, f"Note: {name} is a {type(v).__name__}; return a NumPy array."
    if v.dtype.kind not in "fiu":
        raise _Wrong(f"{name} has dtype {v.dtype}, expected a float array ({where}).")
    return v, ""


def _close(got, ref, tol):
    if got.shape != np.shape(ref):
        return False
    with np.errstate(all="ignore"):
        return bool(np.allclose(got.astype(np.float64), ref, rtol=tol[0], atol=tol[1]))


def _changed_inputs(calls, steps, replies):
    changed = []
    for call, step, reply in zip(calls, steps, replies):
        names = list(call.args)
        after = reply.get("args") or []
        for i, a in zip(step["watch"], after):
            before = call.args[names[i]]
            same = (isinstance(a, np.ndarray) and a.shape == before.shape
                    and np.array_equal(a, before, equal_nan=True))
            if not same:
                changed.append((call.fn, names[i]))
    return changed


def _variants(exercise, t):
    out = []
    for d in exercise.diagnoses:
        with np.errstate(all="ignore"):
            try:
                out.append((d, d.outputs(t)))
            except (ValueError, ZeroDivisionError, IndexError):   # a mistake impossible on this input
                pass
    return out


def _tolerated(exercise, case, t, arrays, tol):
    for d, out in _variants(exercise, t):
        if d.name in case.tolerate and all(_close(arrays[n], out[n], tol) for n in case.compare):
            return d.message
    return ""


def _explain(exercise, case, t, arrays, ref, bad, tol, got):
    variants = _variants(exercise, t)
    for d, out in variants:
        if all(_close(arrays[n], out[n], tol) for n in case.compare):
            msg = f"Likely mistake: {d.message}"
            break
    else:
        parts, explained = [], True
        for n in bad:
            hit = next((d.message for d, out in variants if _close(arrays[n], out[n], tol)), None)
            explained &= hit is not None
            parts.append(f"{n}: {hit}" if hit else _mismatch(n, arrays[n], np.asarray(ref[n])) + ".")
        msg = ("Likely mistake: " if explained else "Wrong result. ") + " ".join(parts)
        if not explained and case.hint:
            msg += " " + case.hint
    if "out" in got and "out" not in case.compare and "out" in ref:
        try:
            out, _ = _as_array("out", got["out"], "")
            if not _close(out, ref["out"], tol):
                msg += (" Note: the forward pass's output is wrong too; fix the forward pass first "
                        "(its cache feeds the backward pass).")
        except _Wrong:
            pass
    return msg


def _mismatch(name, got, ref):
    if got.shape != ref.shape:
        return f"{name} has shape {got.shape}, expected {ref.shape}"
    g = got.astype(np.float64)
    if not np.all(np.isfinite(g)):
        return f"{name} contains NaN or inf (a division by zero, or a square root of a negative number?)"
    diff = np.abs(g - ref)
    idx = np.unravel_index(int(np.argmax(diff)), diff.shape) if diff.size else ()
    e, v = float(ref[idx]), float(g[idx])
    digits = next((p for p in range(6, 18) if f"{e:.{p}g}" != f"{v:.{p}g}"), 17)
    return (f"{name} does not match: largest difference {diff[idx]:.3g} at index "
            f"{tuple(int(i) for i in idx)} (expected {e:.{digits}g}, got {v:.{digits}g})")


def _describe_inputs(t):
    for k in ("x", "W", "xs"):
        if k in t:
            a = t[k]
            if k == "xs":
                n = a.shape[0]
                return f"{n} batch{'es' if n > 1 else ''} of shape {tuple(a.shape[1:])}, {a.dtype}"
            extra = "".join(f", {p}={t[p]}" for p in ("G", "eps", "momentum") if p in t)
            if k == "W" and t.get("b") is None:
                extra += ", b=None"
            return f"{k} of shape {tuple(a.shape)}, {a.dtype}{extra}"
    return "the test inputs"
