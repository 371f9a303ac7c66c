"""The kernel side of a check: run the learner's functions, watch them, ask the judge.

Runs inside the learner's notebook kernel, so it trusts nothing that a learner's cell can
replace. It only ever *fails* a test on its own (the function raised, returned the wrong
structure, called bnref or a framework's normalisation, or tampered with the grader); a test
*passes* only when the judge, a separate clean process, says so. See the package docstring.
"""
import sys

import numpy as np

from . import _cases

__all__ = ["run_check", "GradingError"]

# ---------------------------------------------------------------- genuine primitives
# Literals cannot be replaced by a learner's cell, so these are the real built-in types even
# if ``builtins.type`` or ``builtins.memoryview`` were reassigned.
_type = ().__class__.__class__                       # type
_BuiltinFunction = (0).__sizeof__.__class__          # builtin_function_or_method
_HEAPTYPE = 1 << 9                                   # Py_TPFLAGS_HEAPTYPE: set for classes made in Python
_type_flags = _type.__dict__["__flags__"].__get__
_type_name = _type.__dict__["__name__"].__get__


class GradingError(AssertionError):
    """A failed check: the message says what is likely wrong."""


class _Tampered(Exception):
    pass


def _builtin_function(f, name, module):
    """``f`` if it is the genuine C function ``module.name``, else raise _Tampered."""
    if _type(f) is not _BuiltinFunction or f.__name__ != name:
        raise _Tampered(f"{module}.{name} was replaced")
    owner = f.__self__
    if _type_name(_type(owner)) != "module" or owner.__name__ != module:
        raise _Tampered(f"{module}.{name} was replaced")
    return f


def _builtin_type(t, name):
    """``t`` if it is the genuine built-in type ``name`` (static types cannot be made in Python)."""
    if _type(t) is not _type or _type_flags(t) & _HEAPTYPE or _type_name(t) != name:
        raise _Tampered(f"builtins.{name} was replaced")
    return t


def _primitives():
    """The real sys/posix functions and built-in types the check needs, verified one by one."""
    import builtins
    import os
    real_sys = _builtin_function(sys.setprofile, "setprofile", "sys").__self__
    for name in ("getattr", "isinstance", "len", "callable", "iter", "next", "any", "all", "id",
                 "print", "sorted", "repr"):
        _builtin_function(builtins.__dict__.get(name), name, "builtins")
    for name in ("str", "bytes", "tuple", "list", "dict", "set", "int", "memoryview", "type"):
        _builtin_type(builtins.__dict__.get(name), name)
    p = {
        "sys": real_sys,
        "setprofile": real_sys.setprofile,
        "getprofile": _builtin_function(real_sys.getprofile, "getprofile", "sys"),
        "addaudithook": _builtin_function(real_sys.addaudithook, "addaudithook", "sys"),
        "memoryview": _builtin_type(builtins.memoryview, "memoryview"),
        "bytes": _builtin_type(builtins.bytes, "bytes"),
        "isinstance": _builtin_function(builtins.isinstance, "isinstance", "builtins"),
        "getattr": _builtin_function(builtins.getattr, "getattr", "builtins"),
        "ndarray": _builtin_type(np.ndarray, "ndarray"),
    }
    if os.name == "posix":
        for name in ("posix_spawn", "pipe", "read", "write", "close", "waitpid", "stat",
                     "waitstatus_to_exitcode", "urandom"):
            p[name] = _builtin_function(getattr(os, name), name, "posix")
    return p


# ---------------------------------------------------------------- what counts as cheating
_NORMS = ("batchnorm", "layernorm", "groupnorm", "instancenorm", "batchnormalization",
          "layernormalization", "groupnormalization")


def _is_norm(name):
    """``batch_norm``, ``BatchNorm2d``, ``layer_norm``... (str methods: C code, not replaceable)."""
    n = str.lower(str.replace(name, "_", "")) if _type(name) is str else ""
    for k in _NORMS:
        if k in n:
            return True
    return False


_FRAMEWORKS = ("torch", "tensorflow", "keras", "jax", "jaxlib", "flax", "paddle", "mxnet", "cupy")


_BNREF_FILES = ("__init__.py", "functional.py", "fold.py", "layer.py", "gradcheck.py", "backend.py",
                "_validate.py", "data.py", "mlp.py", "experiments.py")


def _bnref_core_dir():
    """``(.../bnref/, .../bnref/grading/)`` from this file's path, with str methods only."""
    f = __file__
    cut = max(str.rfind(f, "/"), str.rfind(f, "\\"))
    here = f[:cut]                                               # .../bnref/grading
    cut = max(str.rfind(here, "/"), str.rfind(here, "\\"))
    return here[:cut + 1], here + f[len(here)]


def _framework_file(filename):
    for p in str.split(str.replace(filename, "\\", "/"), "/"):
        if p in _FRAMEWORKS:
            return True
    return False


class _Watch:
    """Profiler + audit hook that record forbidden calls while the learner's code runs.

    Uses only the verified built-ins from ``prims`` and C-level str/list methods, so a learner's
    function that replaces built-ins while it runs cannot blind it.
    """

    def __init__(self, prims):
        self.prims = prims
        self.getattr = prims["getattr"]
        self.isinstance = prims["isinstance"]
        self.active = False
        self.violations = []
        self.core, self.grading = _bnref_core_dir()

    def _forbidden_frame(self, code):
        fn = code.co_filename
        norm = str.replace(fn, "\\", "/")
        rel = str.rpartition(norm, "/bnref/")[2]
        if (str.startswith(fn, self.core) and not str.startswith(fn, self.grading)) or \
                ("/bnref/" in norm and (rel in _BNREF_FILES or str.startswith(rel, "kernels/"))):
            return f"bnref/{rel}: {code.co_name}()"     # bnref's code, wherever it is installed
        if _framework_file(fn) and (_is_norm(code.co_name) or _is_norm(fn)):
            return f"{fn}: {code.co_name}()"
        return None

    def _add(self, kind, what):
        if list.__len__(self.violations) < 20:
            list.append(self.violations, (kind, what))

    def profile(self, frame, event, arg):
        if event == "call":
            what = self._forbidden_frame(frame.f_code)
            if what:
                self._add("cheat", what)
        elif event == "c_call":
            ga = self.getattr
            name = ga(arg, "__name__", "") or ""
            mod = ga(arg, "__module__", None) or ""
            owner = ga(arg, "__self__", None)
            if not mod and owner is not None:
                mod = ga(owner, "__name__", "") if _type_name(_type(owner)) == "module" \
                    else ga(_type(owner), "__module__", "")
            mod = mod if _type(mod) is str else ""
            name = name if _type(name) is str else ""
            if str.split(mod, ".")[0] in _FRAMEWORKS and _is_norm(name):
                self._add("cheat", f"{mod}.{name}()")
            elif name == "start_new_thread" or name == "fork":
                self._add("tamper", f"starts a thread or process ({mod}.{name})")
            elif mod == "sys" and name in ("setprofile", "settrace") and self.active:
                self._add("tamper", f"calls sys.{name}")

    def audit(self, event, args):
        if not self.active:
            return
        if event in ("sys.setprofile", "sys.settrace"):
            self._add("tamper", f"calls {event}")
        elif str.startswith(event, ("ctypes.", "os.fork", "os.exec", "os.posix_spawn", "os.spawn",
                                    "os.system", "subprocess.")):
            self._add("tamper", f"uses {event} while being graded")

    def __enter__(self):
        self.prims["addaudithook"](self.audit)
        self._hook = self.profile            # one bound-method object, to compare with getprofile()
        self.prims["setprofile"](self._hook)
        self.active = True
        return self

    def __exit__(self, *exc):
        self.active = False
        current = self.prims["getprofile"]()
        self.prims["setprofile"](None)
        if current is not self._hook:
            self.violations.append(("tamper", "replaced or removed the grader's profiler"))
        return False


# ---------------------------------------------------------------- calling the learner
class _StudentFailure(Exception):
    pass


def _name(f):
    n = getattr(f, "__name__", None)
    return n if isinstance(n, str) else "your function"


def _call(f, *args, **kwargs):
    try:
        return f(*args, **kwargs)
    except NotImplementedError:
        raise _StudentFailure(f"{_name(f)} is not implemented yet: replace `raise NotImplementedError()` "
                              "with your code.") from None
    except (Exception, SystemExit) as e:   # the learner's exception becomes the test's message
        tb = e.__traceback__
        line = ""
        while tb is not None:
            if "ipykernel" in tb.tb_frame.f_code.co_filename or "<ipython" in tb.tb_frame.f_code.co_filename:
                line = f" (line {tb.tb_lineno} of {tb.tb_frame.f_code.co_name})"
            tb = tb.tb_next
        hint = ""
        if isinstance(e, TypeError) and "argument" in str(e):
            hint = " Keep the function's name and arguments exactly as given."
        elif isinstance(e, ValueError) and "broadcast" in str(e):
            hint = " Check the shapes: print them before the line that fails."
        raise _StudentFailure(f"{_name(f)} raised {_type_name(_type(e))}: {e}{line}.{hint}") from None


def _pair(res, f, what, n):
    if not isinstance(res, tuple) or len(res) != n:
        got = f"a tuple of {len(res)}" if isinstance(res, tuple) else _type_name(_type(res))
        raise _StudentFailure(f"{_name(f)} must return {what}, got {got}.")
    return res


def _eps(t):
    return {"eps": t["eps"]} if "eps" in t else {}


def _c(a):
    return None if a is None else a.copy()


def _plan_forward(funcs, t):
    f, = funcs
    out, _ = _pair(_call(f, _c(t["x"]), _c(t["gamma"]), _c(t["beta"]), **_eps(t)), f, "(out, cache)", 2)
    return {"out": out}


def _plan_running(funcs, t):
    f, = funcs
    rm, rv = _c(t["running_mean"]), _c(t["running_var"])
    kw = {"momentum": t["momentum"]} if "momentum" in t else {}
    means, vars_ = [], []
    for x in t["xs"]:
        rm, rv = _pair(_call(f, rm, rv, x.copy(), **kw), f, "(running_mean, running_var)", 2)
        means.append(rm)
        vars_.append(rv)
        if not (isinstance(rm, np.ndarray) and isinstance(rv, np.ndarray)):
            break
        rm, rv = rm.copy(), rv.copy()
    if len(means) == 1:
        return {"running_mean": means[0], "running_var": vars_[0]}
    try:
        return {"running_mean": np.stack(means), "running_var": np.stack(vars_)}
    except Exception as e:   # noqa: BLE001 - ragged learner output
        raise _StudentFailure(f"{_name(f)} returned statistics of changing shapes: {e}") from None


def _plan_inference(funcs, t):
    f, = funcs
    out = _call(f, _c(t["x"]), _c(t["gamma"]), _c(t["beta"]), _c(t["running_mean"]),
                _c(t["running_var"]), **_eps(t))
    if isinstance(out, tuple):
        raise _StudentFailure(f"{_name(f)} must return out only, got a tuple of {len(out)}.")
    return {"out": out}


def _plan_backward(funcs, t):
    fwd, bwd = funcs
    out, cache = _pair(_call(fwd, _c(t["x"]), _c(t["gamma"]), _c(t["beta"]), **_eps(t)), fwd,
                       "(out, cache)", 2)
    dx, dgamma, dbeta = _pair(_call(bwd, _c(t["dout"]), cache), bwd, "(dx, dgamma, dbeta)", 3)
    return {"out": out, "dx": dx, "dgamma": dgamma, "dbeta": dbeta}


def _plan_fold(funcs, t):
    f, = funcs
    W_f, b_f = _pair(_call(f, _c(t["W"]), _c(t["b"]), _c(t["gamma"]), _c(t["beta"]),
                           _c(t["running_mean"]), _c(t["running_var"]), **_eps(t)), f,
                     "(W_folded, b_folded)", 2)
    return {"W_folded": W_f, "b_folded": b_f}


def _plan_groupnorm(funcs, t):
    f, = funcs
    out, _ = _pair(_call(f, _c(t["x"]), _c(t["gamma"]), _c(t["beta"]), t["G"], **_eps(t)), f,
                   "(out, cache)", 2)
    return {"out": out}


PLANS = {
    "batchnorm_forward": (_plan_forward, 1),
    "running_stats_update": (_plan_running, 1),
    "batchnorm_inference": (_plan_inference, 1),
    "batchnorm_backward": (_plan_backward, 2),
    "spatial_batchnorm_forward": (_plan_forward, 1),
    "spatial_batchnorm_backward": (_plan_backward, 2),
    "fold_batchnorm": (_plan_fold, 1),
    "layernorm_forward": (_plan_forward, 1),
    "layernorm_backward": (_plan_backward, 2),
    "groupnorm_forward": (_plan_groupnorm, 1),
}


# ---------------------------------------------------------------- static references
def _static_references(funcs, depth=3):
    """Names in the learner's functions (and the notebook functions they call) bound to bnref
    or to a framework's normalisation: caught even on a branch the tests do not take."""
    found = []
    seen = set()
    core, grading = _bnref_core_dir()

    def origin(obj):
        mod = getattr(obj, "__module__", None) if _type_name(_type(obj)) != "module" else obj.__name__
        return mod if isinstance(mod, str) else ""

    def visit(f, d):
        code = getattr(f, "__code__", None)
        if code is None or id(code) in seen or d > depth:
            return
        seen.add(id(code))
        g = getattr(f, "__globals__", {}) or {}
        cells = [c.cell_contents for c in (getattr(f, "__closure__", None) or ()) if _cell_ok(c)]
        stack, names = [code], []
        while stack:
            co = stack.pop()
            names.extend(co.co_names)
            names.extend(co.co_freevars)
            stack.extend(k for k in co.co_consts if _type_name(_type(k)) == "code")
        objs = [g[n] for n in names if n in g] + cells
        norm_attrs = [n for n in names if _is_norm(n) and n not in g]   # attributes, not notebook names
        for obj in objs:
            mod = origin(obj)
            top = mod.split(".")[0]
            is_module = _type_name(_type(obj)) == "module"
            label = mod if is_module else f"{mod}.{getattr(obj, '__name__', '')}".rstrip(".")
            if top == "bnref" and not mod.startswith("bnref.grading"):
                found.append(label)
            elif top in _FRAMEWORKS and (norm_attrs or _is_norm(str(getattr(obj, "__name__", "")))):
                found.append(label + (f" (.{norm_attrs[0]})" if norm_attrs else ""))
            elif _type_name(_type(obj)) == "function":
                visit(obj, d + 1)

    for f in funcs:
        visit(f, 0)
    return found


def _cell_ok(c):
    try:
        c.cell_contents
        return True
    except ValueError:
        return False


# ---------------------------------------------------------------- packing outputs
def _pack(prims, value, name):
    """``(meta, blob)`` for one output: the raw bytes through the buffer protocol (C level)."""
    if value is None:
        return {"error": f"{name} is None (did you forget to assign or return it?)"}, b""
    if not prims["isinstance"](value, prims["ndarray"]):
        try:
            value = np.asarray(value, dtype=np.float64)
        except Exception:   # noqa: BLE001
            return {"error": f"{name} is a {_type_name(_type(value))}, not a NumPy array"}, b""
        note = f"{name} is a {_type_name(_type(value))}"
    else:
        note = None
    try:
        mv = prims["memoryview"](value)
    except Exception:   # noqa: BLE001 - object arrays have no buffer
        return {"error": f"{name} is an array of Python objects (dtype=object), not of numbers"}, b""
    blob = prims["bytes"](mv.tobytes())
    meta = {"format": mv.format, "shape": list(mv.shape), "nbytes": len(blob)}
    if note:
        meta["note"] = note
    return meta, blob


# ---------------------------------------------------------------- the judge process
def _judge(prims, request, blobs):
    """Run ``python -I -m bnref.grading._judge`` on the request; return ``(passed, message)``."""
    real_sys = prims["sys"]
    exe = real_sys.executable
    payload = request + b"".join(blobs)
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if "posix_spawn" not in prims:     # not POSIX (Windows): plain subprocess, less guarded
        import subprocess
        res = subprocess.run([exe, "-I", "-m", "bnref.grading._judge"], input=payload,
                             capture_output=True, check=False)
        return _verdict(res.returncode, res.stdout)
    try:   # the interpreter we start must be this kernel's own binary
        a, b = prims["stat"](exe), prims["stat"]("/proc/self/exe")
        if (a.st_ino, a.st_dev) != (b.st_ino, b.st_dev):
            raise _Tampered("sys.executable was replaced")
    except FileNotFoundError:          # no /proc (macOS): nothing to compare with
        pass
    r_in, w_in = prims["pipe"]()
    r_out, w_out = prims["pipe"]()
    actions = [(2, r_in, 0), (2, w_out, 1), (0, 2, "/dev/null", 1, 0),   # DUP2, DUP2, OPEN
               (1, w_in), (1, r_out)]                                    # CLOSE
    pid = prims["posix_spawn"](exe, [exe, "-I", "-m", "bnref.grading._judge"], env,
                               file_actions=actions)
    prims["close"](r_in)
    prims["close"](w_out)
    try:
        view = payload
        while view:
            n = prims["write"](w_in, view[:65536])
            view = view[n:]
    except OSError:                    # the judge died early; its exit code tells below
        pass
    finally:
        prims["close"](w_in)
    chunks = []
    while True:
        chunk = prims["read"](r_out, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    prims["close"](r_out)
    _, status = prims["waitpid"](pid, 0)
    return _verdict(prims["waitstatus_to_exitcode"](status), b"".join(chunks))


def _verdict(code, raw):
    """``(passed, message)`` from the judge's exit code and output."""
    # The verdict is plain text parsed with bytes methods (C code): no json module to replace.
    head, _, message = bytes.partition(raw, b"\n")
    if code != 0 or head not in (b"PASS", b"FAIL"):
        raise GradingError(
            f"internal grading error: the judge process exited with {code} and said {raw[-800:]!r}. "
            "This is not your fault; tell your instructor.")
    return head == b"PASS", bytes.decode(message, "utf-8", "replace")


# ---------------------------------------------------------------- the check
def run_check(check, funcs, case):
    """Run one case of one check on the learner's function(s); raise GradingError on failure."""
    __tracebackhide__ = True   # noqa: F841  (IPython and pytest: show the message, not our frames)
    if check not in _cases.CASES:
        raise ValueError(f"unknown check {check!r}")
    cases = _cases.CASES[check]
    smoke = case == "implemented"
    if not smoke and case not in cases:
        raise ValueError(f"unknown case {case!r} for {check}; expected one of {sorted(cases)}")
    plan, nfuncs = PLANS[check]
    if len(funcs) != nfuncs or not all(callable(f) for f in funcs):
        names = "(forward, backward)" if nfuncs == 2 else "(function)"
        raise GradingError(f"check_{check} expects {names}: got {funcs!r}. Did you overwrite a "
                           "function name with something that is not a function?")
    try:
        prims = _primitives()
    except _Tampered as e:
        raise GradingError(f"Score 0: code in this notebook changed the Python environment the "
                           f"grader relies on ({e}). Remove that code.") from None

    statics = _static_references(funcs)
    if statics:
        raise GradingError(
            f"Score 0: your code refers to {', '.join(sorted(set(statics)))}. The exercises must be "
            "solved with NumPy only, without calling bnref (the course's reference package) or a "
            "framework's normalisation.")

    case_for_inputs = next(iter(cases)) if smoke else case
    nonce = 0
    if not smoke and cases[case]["hidden"]:   # hidden inputs: unpredictable, see _cases.trials
        urandom = prims.get("urandom")
        if urandom is None:
            import os
            urandom = os.urandom
        nonce = int.from_bytes(urandom(7), "little") | 1
    watch = _Watch(prims)
    outputs, failure = [], None
    names = _cases.OUTPUTS[check]
    with watch:
        try:
            for t in _cases.trials(check, case_for_inputs, nonce):
                res = plan(funcs, t)
                packed = [_pack(prims, res.get(n), n) for n in names]
                outputs.append(packed)
                if smoke:
                    break
        except _StudentFailure as e:
            failure = str(e)
    try:
        _primitives()                  # built-ins replaced while the learner's code ran?
    except _Tampered as e:
        watch.violations.append(("tamper", f"replaced part of Python ({e})"))
    cheats = [w for k, w in watch.violations if k == "cheat"]
    tampers = [w for k, w in watch.violations if k == "tamper"]
    if cheats:
        raise GradingError(
            f"Score 0: {', '.join(_funcnames(funcs))} called {cheats[0]}. The exercises must be solved "
            "with NumPy only, without calling bnref (the course's reference package) or a framework's "
            "normalisation layer.")
    if tampers:
        raise GradingError(f"Score 0: while being graded your code {tampers[0]}; the grader cannot "
                           "trust its result.")
    if failure and not outputs:
        raise GradingError(failure)
    if smoke:
        print(f"{', '.join(_funcnames(funcs))} runs without error. The hidden tests of this cell "
              "(other shapes, seeds and dtypes) run when your notebook is graded.")
        return
    request = _encode_request(check, case, nonce, names, outputs)
    blobs = [b for tr in outputs for _, b in tr]
    try:
        passed, message = _judge(prims, request, blobs)
    except _Tampered as e:
        raise GradingError(f"Score 0: code in this notebook changed the Python environment the "
                           f"grader relies on ({e}).") from None
    if failure:   # a later trial raised: the judge's diagnosis of the earlier ones, if any
        raise GradingError(message if passed is not True else failure)
    if passed is not True:
        raise GradingError(message)
    if message:
        print(message)


def _hex(text):
    return bytes.hex(str.encode(text, "utf-8"))


def _encode_request(check, case, nonce, names, outputs):
    """The judge's request header, one record per line (no json: see ``_judge``)."""
    lines = [f"V1 {check} {case} {len(outputs)} {int(nonce)}"]
    for tr in outputs:
        lines.append("T")
        for name, (meta, _) in zip(names, tr):
            if "error" in meta:
                lines.append(f"E {name} {_hex(meta['error'])}")
            else:
                shape = ",".join(str(int(d)) for d in meta["shape"])
                lines.append(f"O {name} {_hex(meta['format'])} {shape or '-'} {int(meta['nbytes'])} "
                             f"{_hex(meta.get('note', ''))}")
    return str.encode("\n".join(lines) + "\nEND\n", "ascii")


def _funcnames(funcs):
    return [_name(f) for f in funcs]
