"""List code in submitted notebooks that an instructor should read before trusting a grade.

This is advisory: it never changes a grade, and a clean report does not prove a submission
harmless. What protects the grades is the sandbox (:mod:`bnref.grading.sandbox`), in which
every submission's code runs, and the trusted side (:mod:`.runner`, :mod:`.exercise`,
:mod:`.nbgrader_ext`), which decides each verdict from the values the learner's functions
return and restores every test cell from the gradebook. The audit is a static scan, run
outside any kernel: it reads each learner code cell (IPython magics, ``!`` shell lines and
``?`` help turned into Python by IPython's own ``TransformerManager``, then parsed with
:mod:`ast`; nothing is executed) and the files of each submission folder, and lists what an
attack on the grader would need, by class:

display trick
    ``sys.displayhook``, ``get_ipython()`` and what hangs on it (``display_pub``,
    ``displayhook``, input transformers, ``set_custom_exc``, ``events``, ``run_cell``...),
    ``publish_display_data``, ``display(..., raw=True)``, HTML/JavaScript cell magics,
    imports of ``IPython.core`` or ``ipykernel``. ``display()``, ``IPython.display`` and
    classes that define ``__repr__`` or ``_repr_*_`` are not listed: honest code uses them.
import hook
    ``sys.meta_path``, ``sys.path_hooks``, changes to ``sys.path``, ``sys.modules``,
    ``importlib``, ``__import__``, strings that name a ``.py`` file or ``bnref``, imports of
    ``bnref`` (any submodule) and of deep-learning frameworks (torch, tensorflow, keras, jax,
    flax...), ``%run`` / ``%load_ext`` of anything but autoreload.
frame inspection
    ``sys._getframe``, ``inspect``, ``f_back``, ``f_locals``, ``f_globals``, ``tb_frame``,
    ``gc.get_objects`` / ``get_referrers``, ``sys.settrace`` / ``setprofile``.
database
    ``sqlite3`` and other database modules, ``nbgrader``, any string containing ``gradebook``.
signal
    ``os.kill``, ``os.killpg``, ``pidfd``, the ``signal`` module, ``/proc`` paths.
process
    ``subprocess``, ``os.system``, ``os.popen``, ``os.fork``, ``os.exec*``, ``os.spawn*``,
    ``os.posix_spawn``, ``multiprocessing``, ``threading``, ``_thread``,
    ``concurrent.futures``, ``pty``, ``os.setsid``, ``os._exit``; shell lines other than
    simple look-ups (``!ls``, ``!nvidia-smi``... are not listed), shell cell magics, ``%pip``.
dynamic code
    ``exec``, ``eval``, ``compile``, ``getattr`` / ``setattr`` / ``delattr`` with a name
    computed at run time, ``globals()[...]``, ``vars()``, ``__builtins__``, ``__dict__`` and
    other interpreter internals, ``chr()``, ``base64`` / ``codecs`` / ``pickle``, ``ctypes``.
file system or network
    paths outside the working folder (absolute, ``..``, ``~``, URLs) and walks over ``/``,
    ``..`` or ``~``, ``os.path.expanduser``, ``os.environ``, writes to file descriptors the
    code did not open (the grader's pipes), ``socket`` and other network modules,
    ``fcntl`` / ``termios`` (ioctl), ``shutil.rmtree``, ``os.chmod``, ``os.remove``...
monkeypatch
    assignment to an attribute of an imported module (``np.allclose = ...``), ``setattr``
    / ``delattr`` on one.
operator overloading
    ``numpy.ndarray`` subclasses, NumPy's override protocols (``__array_ufunc__``,
    ``__array_function__``, ``__array__``...), comparisons that return a constant
    (``def __eq__(self, other): return True``): objects that can claim to match anything.
resource exhaustion
    ``while True`` loops with no way out, constant sizes of 2**26 or more given to NumPy
    constructors, ``range`` or sequence repetition (``'x' * (200 << 20)``).
non-notebook file
    in a folder, every file that is not a notebook (``.ipynb_checkpoints`` aside) and every
    folder inside a submission (``submitted/<student>/<assignment>/``) or holding no
    notebook: a shipped ``bnref/`` package would shadow the real one.
tampered cell
    nbgrader metadata that claims what the release did not give: a grade cell whose
    grade_id is not a test cell of the release, a grade_id used twice, a test cell edited,
    turned into markdown, stripped of its metadata or deleted. With ``--release DIR`` each
    notebook is compared with ``DIR/<assignment>/<notebook>.ipynb``; without it, with the
    checksums nbgrader wrote into the released cells (a deleted test cell goes unseen).
parse error
    a cell that does not parse even after IPython's transformation: read it.

Test cells exactly as released are skipped (the grader uses the gradebook's copy, never
the submission's), so the instructor's notebooks in ``solutions/`` and ``exercises/`` give
no findings.

Notes
-----
One line per finding: ``path: cell N, line L: [class] message`` (N counts a notebook's
cells from 0, as nbformat does; L is the line in the cell), ``path: cell N: [class] ...``
for a whole cell, ``path: [class] ...`` for a notebook or a file; then, on stderr, the
number of findings per class. ``--strict`` exits with status 1 when anything is found.

Examples
--------
::

    python -m bnref.grading.audit submitted/                         # every submission below
    python -m bnref.grading.audit submitted/ --release exercises/    # and compare with the release
    python -m bnref.grading.audit submitted/*/ps1_forward --strict   # exit 1 if anything is found
"""
import argparse
import ast
import hashlib
import json
import os
import re
import shlex
import sys
from collections import Counter
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

__all__ = ["CLASSES", "Finding", "audit_source", "audit_notebook", "audit_paths", "main"]

# ---------------------------------------------------------------- the classes
DISPLAY, IMPORT, FRAME, DATABASE = "display trick", "import hook", "frame inspection", "database"
SIGNAL, PROCESS, DYNAMIC, REACH = "signal", "process", "dynamic code", "file system or network"
PATCH, OVERLOAD, RESOURCE = "monkeypatch", "operator overloading", "resource exhaustion"
EXTRA_FILE, TAMPERED, UNPARSED = "non-notebook file", "tampered cell", "parse error"
CLASSES = (DISPLAY, IMPORT, FRAME, DATABASE, SIGNAL, PROCESS, DYNAMIC, REACH, PATCH, OVERLOAD,
           RESOURCE, EXTRA_FILE, TAMPERED, UNPARSED)

# ---------------------------------------------------------------- what the code scan looks for
_FRAMEWORK = (IMPORT, "a deep-learning framework computes the answer")
# Imported modules, by dotted prefix (the longest one decides; None: nothing to say).
MODULES = {
    "bnref": (IMPORT, "the course's reference implementation"),
    **dict.fromkeys(["torch", "torchvision", "tensorflow", "keras", "jax", "jaxlib", "flax", "mxnet",
                     "paddle"], _FRAMEWORK),
    "importlib": (IMPORT, "the import system (finders, loaders, reloads)"),
    **dict.fromkeys(["pkgutil", "runpy", "zipimport", "imp"], (IMPORT, "loads modules and files as code")),
    "site": (IMPORT, "adds folders to sys.path"),
    "inspect": (FRAME, "reads callers' frames, locals and source"),
    **dict.fromkeys(["sqlite3", "dbm", "shelve", "sqlalchemy"], (DATABASE, "the gradebook is an SQLite file")),
    "nbgrader": (DATABASE, "nbgrader's gradebook API"),
    "signal": (SIGNAL, "sends and traps signals"),
    "subprocess": (PROCESS, "starts programs"),
    "multiprocessing": (PROCESS, "starts processes"),
    **dict.fromkeys(["threading", "_thread"], (PROCESS, "starts threads, which run on beside the checks")),
    "concurrent": (PROCESS, "thread and process pools"),
    **dict.fromkeys(["pty", "pexpect"], (PROCESS, "starts programs on a pseudo-terminal")),
    **dict.fromkeys(["ctypes", "cffi"], (DYNAMIC, "calls C and reads or writes memory directly")),
    "builtins": (DYNAMIC, "the built-ins every cell and check shares"),
    **dict.fromkeys(["base64", "codecs", "binascii"], (DYNAMIC, "decodes text that a reader would not see")),
    **dict.fromkeys(["marshal", "pickle", "dill", "cloudpickle"], (DYNAMIC, "loads code or objects from bytes")),
    **dict.fromkeys(["socket", "ssl", "http", "urllib", "requests", "ftplib", "smtplib", "telnetlib",
                     "xmlrpc", "websocket"], (REACH, "the network")),
    "fcntl": (REACH, "file-descriptor control (ioctl)"),
    **dict.fromkeys(["termios", "tty"], (REACH, "terminal control (TIOCSTI types into the grader's terminal)")),
    **dict.fromkeys(["IPython.core", "IPython.terminal", "IPython.kernel", "ipykernel", "jupyter_client", "zmq"],
                    (DISPLAY, "the kernel's machinery (hooks, outputs, messages)")),
    "IPython": None,              # IPython.display (display, Markdown, HTML): honest notebooks use it;
                                  # IPython.get_ipython is a name rule
}

_PATH_CHANGE = (IMPORT, "a folder first on sys.path can shadow any module, bnref.grading included")
_SHELL = (PROCESS, "runs a shell command")
_FDS = (REACH, "a file descriptor the code did not open may be the grader's pipe")
# Qualified names used in the code (called, read or assigned), by dotted prefix; '*' patterns
# match one last segment (os.execv, os.spawnlp...).
NAMES = {
    **dict.fromkeys(["sys.displayhook", "sys.__displayhook__"],
                    (DISPLAY, "writes an execute_result, which stock nbgrader reads as a score")),
    **dict.fromkeys(["sys.excepthook", "sys.__excepthook__"], (DISPLAY, "decides how errors are shown")),
    **dict.fromkeys(["get_ipython", "IPython.get_ipython"],
                    (DISPLAY, "the IPython shell, whose hooks can rewrite later cells or hide their errors")),
    "IPython.display.publish_display_data": (DISPLAY, "publishes a raw output bundle"),
    **dict.fromkeys(["sys.meta_path", "sys.path_hooks", "sys.path_importer_cache"],
                    (IMPORT, "import-system finders can serve a fake module")),
    "sys.modules": (IMPORT, "the table of loaded modules, whose entries are what `import` returns"),
    **dict.fromkeys([f"sys.path.{m}" for m in ("insert", "append", "extend", "remove", "pop", "clear",
                                                "reverse", "sort", "__setitem__", "__iadd__")], _PATH_CHANGE),
    "__import__": (IMPORT, "imports a module by a name computed at run time"),
    **dict.fromkeys(["sys._getframe", "sys._current_frames"], (FRAME, "reads callers' frames and variables")),
    **dict.fromkeys(["sys.settrace", "sys.setprofile", "threading.settrace", "threading.setprofile",
                     "sys.monitoring"], (FRAME, "sees every call and line, the grader's included")),
    "sys.addaudithook": (FRAME, "hooks the interpreter's audit events"),
    **dict.fromkeys(["gc.get_objects", "gc.get_referrers", "gc.get_referents"],
                    (FRAME, "reaches every live object, the grader's included")),
    **dict.fromkeys(["os.kill", "os.killpg"], (SIGNAL, "signals other processes")),
    **dict.fromkeys(["os.pidfd_open", "signal.pidfd_send_signal"], (SIGNAL, "signals other processes (pidfd)")),
    **dict.fromkeys(["os.system", "os.popen"], _SHELL),
    **dict.fromkeys(["os.fork", "os.forkpty", "os.register_at_fork"], (PROCESS, "forks the interpreter")),
    **dict.fromkeys(["os.exec*", "os.spawn*", "os.posix_spawn*", "os.startfile", "asyncio.create_subprocess_*"],
                    (PROCESS, "starts another program")),
    **dict.fromkeys(["os.setsid", "os.setpgrp", "os.setpgid"],
                    (PROCESS, "leaves the grader's session, to outlive it")),
    **dict.fromkeys(["os._exit", "os.abort"], (PROCESS, "ends the interpreter at once, skipping every cleanup")),
    **dict.fromkeys(["exec", "eval"], (DYNAMIC, "runs code from a string")),
    "compile": (DYNAMIC, "compiles code from a string"),
    "vars": (DYNAMIC, "reads a namespace as a dict"),
    "__builtins__": (DYNAMIC, "the built-ins every cell and check shares"),
    "chr": (DYNAMIC, "builds text character by character, hiding names from a reader"),
    "bytes.fromhex": (DYNAMIC, "builds bytes from hex, hiding text from a reader"),
    **dict.fromkeys(["types.CodeType", "types.FunctionType"], (DYNAMIC, "builds code objects")),
    **dict.fromkeys(["os.environ", "os.environb", "os.getenv", "os.putenv", "os.unsetenv"],
                    (REACH, "the grader's environment (its secrets, its paths)")),
    "os.chdir": (REACH, "leaves the working folder"),
    **dict.fromkeys(["os.chmod", "os.chown", "shutil.chown"], (REACH, "changes a file's permissions")),
    **dict.fromkeys(["os.remove", "os.unlink", "os.rmdir", "os.removedirs", "os.rename", "os.replace",
                     "shutil.rmtree", "shutil.move"], (REACH, "deletes or moves files")),
    **dict.fromkeys(["os.symlink", "os.link"], (REACH, "links to other files")),
    **dict.fromkeys(["os.path.expanduser", "pathlib.Path.home"], (REACH, "the grader's home folder")),
    "os.openpty": (REACH, "opens a pseudo-terminal"),
    "asyncio.open_connection": (REACH, "the network"),
    **dict.fromkeys([f"os.{f}" for f in ("dup", "dup2", "fdopen", "sendfile", "pwrite", "lseek", "ftruncate")],
                    _FDS),
}
# Names that are only worth a word when assigned (reading sys.path is harmless).
STORE_NAMES = {"sys.path": _PATH_CHANGE}

# Attribute names worth a word whatever they hang on: `ip = get_ipython(); ip.display_pub`.
ATTRIBUTES = {
    **dict.fromkeys(["display_pub", "displayhook", "display_trap", "display_formatter", "write_output_prompt"],
                    (DISPLAY, "IPython's output machinery, which can publish a result no code returned")),
    **dict.fromkeys(["input_transformers_cleanup", "input_transformers_post", "input_transformer_manager",
                     "ast_transformers", "events", "run_cell", "run_cell_async", "run_code", "run_ast_nodes",
                     "register_magic_function", "register_magics", "set_hook"],
                    (DISPLAY, "IPython's hooks, which can rewrite or skip the cells that follow")),
    **dict.fromkeys(["set_custom_exc", "custom_exceptions", "showtraceback", "_showtraceback"],
                    (DISPLAY, "IPython's error handling, which can hide a failing cell's error")),
    **dict.fromkeys(["user_ns", "user_global_ns"], (DISPLAY, "the kernel's namespace as a dict")),
    **dict.fromkeys(["f_back", "f_locals", "f_globals", "f_builtins", "f_trace", "tb_frame", "tb_next",
                     "gi_frame", "cr_frame", "ag_frame"], (FRAME, "walks frames to other code's variables")),
    **dict.fromkeys(["__dict__", "__code__", "__globals__", "__closure__", "__builtins__", "__subclasses__",
                     "__bases__", "__base__", "__mro__", "__loader__", "__spec__", "__defaults__",
                     "__kwdefaults__", "__getattribute__", "__setattr__", "__delattr__"],
                    (DYNAMIC, "interpreter internals (other code's namespaces and functions)")),
}

# Functions whose arguments are paths: there even '/', '..' and '~' mean "outside".
PATH_FUNCTIONS = {"open", "io.open", "os.open", "os.walk", "os.listdir", "os.scandir", "os.chdir", "os.stat",
                  "os.path.join", "os.path.abspath", "os.path.realpath", "os.path.exists",
                  "os.path.isdir", "os.path.isfile", "os.makedirs", "os.mkdir", "glob.glob", "glob.iglob",
                  "pathlib.Path", "shutil.rmtree", "shutil.copytree", "shutil.copy", "shutil.copyfile"}
ROOTS = {"/", "..", "~", "../", "~/"}
FAR_PATH = re.compile(r"^(/[\w.*~-]|~[\w/]|\.\./)|/\.\.(/|$)")
URL = re.compile(r"^[a-z][\w+.-]*://", re.IGNORECASE)
PROC_PATH = re.compile(r"(^|/)proc(/|$)")
PYTHON_FILE = re.compile(r"\.(py|pyc|pyw|pth)\b")
BNREF = re.compile(r"\bbnref\b")

# Sizes: constants this big ask for more memory or time than any test needs (the inputs of
# the checks have at most a few thousand elements).
BIG = 1 << 26
SIZED_FIRST = {"ones", "zeros", "empty", "full", "arange", "bytearray", "bytes", "urandom", "tile"}
SIZED_ALL = {"range", "rand", "randn"}
SIZE_KEYWORDS = {"shape", "size", "num"}
EXITS = {"sys.exit", "exit", "quit", "os._exit"}

ARRAY_PROTOCOL = {"__array__", "__array_ufunc__", "__array_function__", "__array_wrap__", "__array_finalize__",
                  "__array_prepare__", "__array_interface__", "__array_struct__", "__array_priority__",
                  "__array_namespace__"}
COMPARISONS = {"__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__bool__", "__len__", "__float__",
               "__int__", "__index__", "__abs__", "__contains__", "__instancecheck__", "__subclasscheck__"}
ARRAY_BASES = {"numpy.ndarray", "numpy.generic", "numpy.matrix", "numpy.ma.MaskedArray",
               "numpy.lib.mixins.NDArrayOperatorsMixin"}

# ---------------------------------------------------------------- IPython syntax
# Magics whose argument (line magics) or body (cell magics) is Python: scanned as code.
PYTHON_MAGICS = {"timeit", "time", "prun", "capture"}
HARMLESS_MAGICS = {"matplotlib", "precision", "pprint", "who", "whos", "who_ls", "lsmagic", "magic", "pinfo",
                   "pinfo2", "pdef", "pdoc", "psearch", "quickref", "xmode", "colors", "reset", "reset_selective",
                   "history", "hist", "debug", "pdb", "tb", "doctest_mode", "automagic", "autocall", "pwd",
                   "clear", "dirs", "autoreload", "page", "xdel"}
MAGICS = {
    **dict.fromkeys(["sx", "system", "bash", "sh", "script", "perl", "ruby", "python", "python2", "python3",
                     "pypy", "alias", "rehashx", "killbgscripts"], _SHELL),
    **dict.fromkeys(["pip", "conda", "mamba"], (PROCESS, "installs packages")),
    **dict.fromkeys(["run", "load", "loadpy", "load_ext", "reload_ext", "aimport"],
                    (IMPORT, "loads a file or module as code")),
    "macro": (DYNAMIC, "defines code from text"),
    **dict.fromkeys(["cd", "pushd", "popd", "bookmark", "dhist"], (REACH, "leaves the working folder")),
    **dict.fromkeys(["env", "set_env"], (REACH, "the grader's environment (its secrets, its paths)")),
    **dict.fromkeys(["store", "save", "logstart", "writefile", "pycat", "edit"], (REACH, "reads or writes files")),
    **dict.fromkeys(["html", "HTML", "javascript", "js", "svg", "latex", "markdown", "config"],
                    (DISPLAY, "publishes output, or changes the kernel's configuration, directly")),
}
# Shell commands that only look something up (`!ls`, `!nvidia-smi`).
SAFE_COMMANDS = {"ls", "pwd", "echo", "nvidia-smi", "lscpu", "nproc", "free", "df", "du", "date", "whoami",
                 "hostname", "uname", "head", "tail", "wc", "cat", "which", "true", "grep", "sort", "uniq",
                 "file", "tree", "stat", "md5sum", "sha256sum"}

_transformer = None


def _to_python(src):
    """A cell as plain Python: IPython's own transformer turns %magics, !shell and ? into calls."""
    global _transformer
    if _transformer is None:
        from IPython.core.inputtransformer2 import TransformerManager
        _transformer = TransformerManager()
    try:
        return _transformer.transform_cell(src)
    except Exception:   # noqa: BLE001 - leave it to ast to report what is wrong
        return src


def _parse(src):
    """``(tree, None)``, or ``(None, (line, why))`` for code that does not parse."""
    try:
        return ast.parse(_to_python(src)), None
    except SyntaxError as e:
        return None, (e.lineno or 1, e.msg)
    except ValueError as e:                     # e.g. a null byte in the source
        return None, (1, str(e))
    except (RecursionError, MemoryError):       # nesting deep enough to stop a parser: deliberate
        return None, (1, "nested too deeply to read")


def _imports(tree):
    """``{name bound by an import: the dotted name it stands for}`` in one parsed cell."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    names[a.asname] = a.name
                else:
                    names[a.name.split(".")[0]] = a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                if a.name != "*":
                    names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def _module_rule(dotted):
    """What MODULES says about a dotted module name (its longest listed prefix)."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in MODULES:
            return MODULES[prefix]
    return None


_PATTERNS = [(pattern, rule) for pattern, rule in NAMES.items() if "*" in pattern]


def _name_rule(qual):
    """What NAMES says about a qualified name (its longest listed prefix, '*' patterns included)."""
    parts = qual.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in NAMES:
            return NAMES[prefix]
        for pattern, rule in _PATTERNS:
            if pattern.count(".") == n - 1 and fnmatchcase(prefix, pattern):
                return rule
    return None


def _const_int(node):
    """The value of a constant integer expression (``1 << 28``, ``64 * 2**20``), else None."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        v = _const_int(node.operand)
        return None if v is None else -v
    if isinstance(node, ast.BinOp):
        a, b = _const_int(node.left), _const_int(node.right)
        if a is None or b is None:
            return None
        if isinstance(node.op, (ast.Pow, ast.LShift)) and (b > 256 or a.bit_length() * b > 4096):
            return 1 << 256                      # huge: no need to compute it (nor to let it fill memory)
        ops = {ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.Mult: lambda: a * b,
               ast.LShift: lambda: a << b if b >= 0 else None, ast.Pow: lambda: a ** b if b >= 0 else None,
               ast.FloorDiv: lambda: a // b if b else None}
        op = ops.get(type(node.op))
        return op() if op else None
    return None


def _big(node):
    """The first constant size of at least BIG in a size argument (a number or a shape), else None."""
    for n in (node.elts if isinstance(node, (ast.Tuple, ast.List)) else [node]):
        v = _const_int(n)
        if v is not None and v >= BIG:
            return v
    return None


def _size(n):
    return f"{n:,}" if n < 10 ** 15 else f"2**{n.bit_length() - 1} or more"


def _returns_constant(fn):
    """True when every return of a method gives a constant: ``def __eq__(self, o): return True``."""
    if isinstance(fn, ast.Lambda):
        return isinstance(fn.body, ast.Constant)
    returns = [n for n in ast.walk(fn) if isinstance(n, ast.Return)]
    return bool(returns) and all(isinstance(r.value, ast.Constant) for r in returns)


def _docstrings(tree):
    """ids of the docstring nodes: text for readers, not paths or names."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _strip_options(args):
    """The Python part of ``%timeit -n 10 -r 3 x.sum()``: options and their values dropped."""
    tokens = args.split()
    while tokens and tokens[0].startswith("-"):
        takes_value = tokens[0] in ("-n", "-r", "-p", "-l", "-s", "-T", "-D")
        tokens = tokens[2:] if takes_value else tokens[1:]
    return " ".join(tokens)


# ---------------------------------------------------------------- strings and shell lines
def _text_findings(text, tail=False):
    """``[(class, message)]`` for what a string in the code names (``tail``: it is appended to
    another string, so a leading '/' does not make it absolute)."""
    out, shown = [], repr(text if len(text) <= 60 else text[:57] + "...")
    if "gradebook" in text.lower():
        out.append((DATABASE, f"names the gradebook: {shown}"))
    if PROC_PATH.search(text) and "/" in text:
        out.append((SIGNAL, f"a /proc path (other processes' ids, environments, command lines): {shown}"))
    if BNREF.search(text):
        out.append((IMPORT, f"names bnref in a string (code, a module or a package path): {shown}"))
    if PYTHON_FILE.search(text):
        out.append((IMPORT, f"names a Python file (written, it is importable; read, it is someone's code): "
                            f"{shown}"))
    if FAR_PATH.search(text.lstrip("/") if tail else text):
        out.append((REACH, f"a path outside the working folder: {shown}"))
    if URL.search(text):
        out.append((REACH, f"a URL: {shown}"))
    return out


def _shell_findings(cmd):
    """``[(class, message)]`` for a ``!`` line or ``%%bash`` body: anything beyond a look-up."""
    out, shown = [], repr(cmd.strip() if len(cmd) <= 60 else cmd.strip()[:57] + "...")
    if "$(" in cmd or "`" in cmd:
        out.append((PROCESS, f"shell command substitution: {shown}"))
    if "{" in cmd or re.search(r"\$\w", cmd):
        out.append((DYNAMIC, f"a shell command built from Python values: {shown}"))
    for segment in re.split(r"&&|\|\||[;|&\n]", cmd):
        words = segment.split()
        while words and re.fullmatch(r"\w+=\S*", words[0]):      # VAR=value command
            words = words[1:]
        if words and words[0] not in SAFE_COMMANDS:
            out.append((PROCESS, f"runs the shell command {words[0]!r}: {shown}"))
    try:
        tokens = shlex.split(cmd, comments=True)
    except ValueError:
        tokens = cmd.split()
    for token in tokens:
        if token in ROOTS:
            out.append((REACH, f"a shell command reaches outside the working folder ({token!r}): {shown}"))
        out.extend(_text_findings(token))
    return out


# ---------------------------------------------------------------- the code scan
class _Scanner(ast.NodeVisitor):
    """Collects ``(line, class, message)`` for one parsed cell."""

    def __init__(self, aliases, docstrings):
        self.aliases, self.docstrings = aliases, docstrings
        self.found, self.seen, self.reported = set(), set(), set()
        self.tails = set()          # ids of strings appended to a path: '/x' in `d + '/x'` is not absolute

    def add(self, node, kind, message):
        self.found.add((getattr(node, "lineno", 1), kind, message))

    def qual(self, node):
        """The dotted name a Name/Attribute chain stands for, imports resolved (``np.x`` -> ``numpy.x``)."""
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id, node.id)
        if isinstance(node, ast.Attribute):
            base = self.qual(node.value)
            return base and f"{base}.{node.attr}"
        return None

    @staticmethod
    def chain_base(node):
        """The Name under ``a.b[c].d`` (or whatever is there instead)."""
        while isinstance(node, (ast.Attribute, ast.Subscript)):
            node = node.value
        return node

    def is_module(self, node):
        """True for a Name bound by an import (or ``__builtins__``)."""
        return isinstance(node, ast.Name) and (node.id in self.aliases or node.id == "__builtins__")

    def check_name(self, node, verb):
        """Report a Name/Attribute chain that NAMES (or STORE_NAMES, when assigned) lists, once."""
        if id(node) in self.seen:
            return
        qual = self.qual(node)
        if qual is None:
            return
        rule = _name_rule(qual) or (STORE_NAMES.get(qual) if verb == "assigns to" else None)
        if rule:
            self.add(node, rule[0], f"{verb} {qual}{'()' if verb == 'calls' else ''}: {rule[1]}")
            self.reported.add(id(node))
        n = node
        while isinstance(n, ast.Attribute):      # the inner links of the chain are the same finding
            self.seen.add(id(n))
            n = n.value
        self.seen.add(id(n))

    # -------------------------------------------------------------- imports
    def visit_Import(self, node):
        for a in node.names:
            rule = _module_rule(a.name)
            if rule:
                self.add(node, rule[0], f"imports {a.name}: {rule[1]}")

    def visit_ImportFrom(self, node):
        if node.level:
            self.add(node, IMPORT, f"relative import from {'.' * node.level}{node.module or ''}: a local package")
            return
        for a in node.names:
            full = f"{node.module}.{a.name}" if a.name != "*" else node.module
            rule = _module_rule(full) or _name_rule(full)
            if rule:
                self.add(node, rule[0], f"imports {full}: {rule[1]}")

    # -------------------------------------------------------------- names and attributes
    def visit_Name(self, node):
        self.check_name(node, "assigns to" if isinstance(node.ctx, (ast.Store, ast.Del)) else "uses")

    def visit_Attribute(self, node):
        self.check_name(node, "assigns to" if isinstance(node.ctx, (ast.Store, ast.Del)) else "uses")
        rule = ATTRIBUTES.get(node.attr)
        if rule and id(node) not in self.reported:       # `sys.displayhook` is said once, by its name
            self.add(node, rule[0], f"uses .{node.attr}: {rule[1]}")
        self.generic_visit(node)

    def visit_Subscript(self, node):
        if isinstance(node.ctx, (ast.Store, ast.Del)) and self.qual(node.value) == "sys.path":
            self.add(node, _PATH_CHANGE[0], f"assigns to sys.path[...]: {_PATH_CHANGE[1]}")
        if isinstance(node.value, ast.Call) and self.qual(node.value.func) in ("globals", "locals"):
            self.add(node, DYNAMIC, f"indexes {self.qual(node.value.func)}() by name: variables looked up "
                                    "from strings")
        self.generic_visit(node)

    # -------------------------------------------------------------- assignments: monkeypatching
    @staticmethod
    def targets(node):
        """The names, attributes and items an assignment or ``del`` writes, tuples unpacked."""
        todo = list(node.targets) if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
        while todo:
            t = todo.pop()
            if isinstance(t, (ast.Tuple, ast.List)):
                todo.extend(t.elts)
            elif isinstance(t, ast.Starred):
                todo.append(t.value)
            else:
                yield t

    def visit_Assign(self, node):
        for t in self.targets(node):
            # an attribute of a module, not an item: `np.allclose = f` replaces NumPy's function for
            # everyone; `plt.rcParams['x'] = v` only sets a value (sys.path/modules items are their own rules)
            if isinstance(t, ast.Attribute) and self.is_module(self.chain_base(t)):
                verb, does = ("deletes", "removes") if isinstance(node, ast.Delete) else ("assigns to", "replaces")
                self.add(node, PATCH, f"{verb} {ast.unparse(t)}: {does} {self.qual(t) or ast.unparse(t)} "
                                      "for every later cell")
        self.generic_visit(node)

    visit_AugAssign = visit_AnnAssign = visit_Delete = visit_Assign

    # -------------------------------------------------------------- calls
    def visit_Call(self, node):
        magic = self.magic_call(node)
        if magic:
            self.magic(node, *magic)
            return                               # its text is IPython syntax, scanned as such
        self.check_name(node.func, "calls")
        qual = self.qual(node.func)
        if qual in ("getattr", "setattr", "delattr"):
            self.attribute_call(node, qual)
        if qual in ("display", "IPython.display.display") and any(
                k.arg == "raw" and not (isinstance(k.value, ast.Constant) and not k.value.value)
                for k in node.keywords):
            self.add(node, DISPLAY, "display(..., raw=True): publishes a raw output bundle")
        if (isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Call)
                and self.qual(node.func.value.func) in ("globals", "locals")
                and node.func.attr in ("update", "setdefault", "pop", "popitem", "clear", "get",
                                       "__setitem__", "__delitem__", "__getitem__")):
            self.add(node, DYNAMIC, f"{self.qual(node.func.value.func)}().{node.func.attr}(): "
                                    "variables looked up or set from strings")
        if qual in ("os.write", "os.read") and node.args and not (
                isinstance(node.args[0], ast.Constant) and node.args[0].value in (0, 1, 2)):
            self.add(node, REACH, f"{qual}({ast.unparse(node.args[0])}, ...): {_FDS[1]}")
        if qual in PATH_FUNCTIONS:
            for a in node.args:
                if isinstance(a, ast.Constant) and a.value in ROOTS:
                    self.add(node, REACH, f"{qual}({a.value!r}): reaches outside the working folder")
        self.sizes(node, qual)
        self.generic_visit(node)

    def attribute_call(self, node, fn):
        """getattr/setattr/delattr: a computed name hides what is reached; on a module it patches."""
        if len(node.args) < 2:
            return
        name = node.args[1]
        literal = isinstance(name, ast.Constant) and isinstance(name.value, str)
        if not literal:
            self.add(node, DYNAMIC, f"{fn}() with a name computed at run time ({ast.unparse(name)})")
        elif name.value in ATTRIBUTES:
            self.add(node, ATTRIBUTES[name.value][0], f"{fn}(..., {name.value!r}): {ATTRIBUTES[name.value][1]}")
        else:                       # getattr(os, 'system') is os.system
            base = self.qual(node.args[0])
            rule = _name_rule(f"{base}.{name.value}") if base else None
            if rule:
                self.add(node, rule[0], f"{fn}() reaches {base}.{name.value}: {rule[1]}")
        if fn != "getattr" and self.is_module(self.chain_base(node.args[0])):
            self.add(node, PATCH, f"{fn}() on the module {self.qual(self.chain_base(node.args[0]))}: "
                                  "replaces part of it for every later cell")

    def sizes(self, node, qual):
        """Constant sizes of BIG or more given to constructors, range(), or size=/shape= keywords."""
        last = (qual or "").rsplit(".", 1)[-1] or (node.func.attr if isinstance(node.func, ast.Attribute) else "")
        args = node.args[:1] if last in SIZED_FIRST else node.args if last in SIZED_ALL else []
        args = list(args) + [k.value for k in node.keywords if k.arg in SIZE_KEYWORDS]
        for a in args:
            v = _big(a)
            if v is not None:
                self.add(node, RESOURCE, f"{last}() of size {_size(v)}: more memory or time than any test needs")
                return

    def visit_BinOp(self, node):
        if isinstance(node.op, ast.Add) and isinstance(node.right, ast.Constant):
            self.tails.add(id(node.right))
        if isinstance(node.op, ast.Mult):
            for seq, n in ((node.left, node.right), (node.right, node.left)):
                literal = isinstance(seq, (ast.List, ast.Tuple)) or (
                    isinstance(seq, ast.Constant) and isinstance(seq.value, (str, bytes)))
                v = _const_int(n) if literal else None
                if v is not None and v >= BIG:
                    self.add(node, RESOURCE, f"a sequence repeated {_size(v)} times: floods memory or the output")
        self.generic_visit(node)

    def visit_While(self, node):
        if isinstance(node.test, ast.Constant) and node.test.value and not self.leaves(node.body):
            self.add(node, RESOURCE, "a `while True` loop with no break, return or raise: runs until stopped")
        self.generic_visit(node)

    def leaves(self, nodes, nested=False):
        """True when something in a loop body can end the loop (a break of an inner loop cannot)."""
        for n in nodes:
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                continue
            if isinstance(n, (ast.Return, ast.Raise, ast.Yield, ast.YieldFrom, ast.Await)):
                return True
            if isinstance(n, ast.Break) and not nested:
                return True
            if isinstance(n, ast.Call) and self.qual(n.func) in EXITS:
                return True
            if self.leaves(ast.iter_child_nodes(n), nested or isinstance(n, (ast.For, ast.AsyncFor, ast.While))):
                return True
        return False

    # -------------------------------------------------------------- classes: operator overloading
    def visit_ClassDef(self, node):
        for b in node.bases:
            q = self.qual(b) or ""
            if q in ARRAY_BASES or q.endswith(".ndarray"):
                self.add(node, OVERLOAD, f"class {node.name} subclasses {q}: its methods answer for NumPy's")
        for stmt in node.body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.method(node, stmt, stmt.name, stmt)
            elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
                for t in (stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]):
                    if isinstance(t, ast.Name):
                        self.method(node, stmt, t.id, stmt.value)
        self.generic_visit(node)

    def method(self, cls, where, name, value):
        if name in ARRAY_PROTOCOL:
            self.add(where, OVERLOAD, f"{cls.name}.{name}: takes over NumPy's operations on these objects")
        elif name in COMPARISONS and isinstance(value, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) \
                and _returns_constant(value):
            self.add(where, OVERLOAD, f"{cls.name}.{name} always returns a constant: it can claim to match "
                                      "anything")

    # -------------------------------------------------------------- strings
    def visit_Constant(self, node):
        if id(node) in self.docstrings or not isinstance(node.value, (str, bytes)):
            return
        text = node.value if isinstance(node.value, str) else node.value.decode("latin-1")
        for kind, message in _text_findings(text, tail=id(node) in self.tails):
            self.add(node, kind, message)

    def visit_JoinedStr(self, node):
        # an f-string names what its literal parts say; "{}" stands for each value, so that
        # f"{a}/{b}" is no absolute path and f"/home/{user}" is one
        text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
        for kind, message in _text_findings(text):
            self.add(node, kind, message)
        for v in node.values:
            if isinstance(v, ast.FormattedValue):
                self.visit(v.value)

    # -------------------------------------------------------------- IPython syntax
    def magic_call(self, node):
        """``(kind, [constant args])`` for ``get_ipython().run_line_magic('name', 'args')`` and the
        like, which is what IPython's transformer makes of %magic, %%magic, !shell and ?; else None."""
        f = node.func
        if (isinstance(f, ast.Attribute) and f.attr in ("run_line_magic", "run_cell_magic", "system", "getoutput")
                and isinstance(f.value, ast.Call) and isinstance(f.value.func, ast.Name)
                and f.value.func.id == "get_ipython" and not f.value.args and not node.keywords
                and node.args
                and all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in node.args)):
            return f.attr, [a.value for a in node.args]
        return None

    def magic(self, node, kind, args):
        if kind in ("system", "getoutput"):
            for k, message in _shell_findings(args[0]):
                self.add(node, k, message)
            return
        name, line = args[0], args[1] if len(args) > 1 else ""
        body = args[2] if kind == "run_cell_magic" and len(args) > 2 else None
        sign = "%%" if body is not None else "%"
        if name in PYTHON_MAGICS:
            self.code(node, body if body is not None else _strip_options(line), cell=body is not None)
        elif name == "ls":
            for k, message in _shell_findings(f"ls {line}"):
                self.add(node, k, message)
        elif name in HARMLESS_MAGICS or (name in ("load_ext", "reload_ext") and line.strip() == "autoreload") or (
                name == "config" and line.strip().startswith("InlineBackend")):
            pass
        elif name in ("bash", "sh", "script", "system", "sx") and body is not None:
            self.add(node, PROCESS, f"{sign}{name}: runs a shell script")
            for k, message in _shell_findings(body):
                if k != PROCESS:
                    self.add(node, k, message)
        elif name == "writefile" and PYTHON_FILE.search(line):
            self.add(node, IMPORT, f"{sign}writefile {line.strip()}: writes a Python file, which is importable")
        elif name in MAGICS:
            self.add(node, MAGICS[name][0], f"{sign}{name}: {MAGICS[name][1]}")
        else:
            self.add(node, DYNAMIC, f"{sign}{name}: a magic this audit does not know; read it")

    def code(self, node, src, cell):
        """Scan the Python inside a magic (``%timeit expr``, a ``%%time`` body) as part of this cell."""
        for line, kind, message in audit_source(src, self.aliases):
            # a cell magic's body starts on the line after the magic; a line magic's argument is on it
            self.found.add((node.lineno + line - (0 if cell else 1), kind, message))


def audit_source(src, modules=None):
    """Findings ``(line, class, message)`` for one cell's source, sorted.

    ``modules``: ``{name: dotted module}`` bound by imports in the notebook's other cells, so
    that ``np.allclose = ...`` in a cell without ``import numpy as np`` is still seen as
    patching NumPy.
    """
    tree, error = _parse(src)
    if tree is None:
        return [(error[0], UNPARSED, f"does not parse ({error[1]}); read it")]
    scanner = _Scanner({**(modules or {}), **_imports(tree)}, _docstrings(tree))
    try:
        scanner.visit(tree)
    except RecursionError:
        return [(1, UNPARSED, "nested too deeply to scan; read it")]
    return sorted(scanner.found)


# ---------------------------------------------------------------- notebooks
@dataclass(frozen=True)
class Finding:
    """One thing to read: where (notebook or file, cell, line), its class, and why."""
    path: str
    cell: object            # int, or None for a finding about a whole notebook or file
    line: object            # int, or None for a finding about a whole cell
    kind: str               # one of CLASSES
    message: str

    def __str__(self):
        where = self.path
        if self.cell is not None:
            where += f": cell {self.cell}" + (f", line {self.line}" if self.line is not None else "")
        return f"{where}: [{self.kind}] {self.message}"

    def key(self):
        return (self.path, -1 if self.cell is None else self.cell, -1 if self.line is None else self.line,
                self.kind, self.message)


def _nbgrader(cell):
    """A cell's nbgrader metadata, {} when absent or malformed (a tampered notebook may hold anything)."""
    md = cell.get("metadata")
    md = md.get("nbgrader") if isinstance(md, dict) else None
    if not isinstance(md, dict):
        return {}
    gid = md.get("grade_id")
    return {**md, "grade_id": gid if isinstance(gid, str) or gid is None else repr(gid)}


def _is_test(cell):
    md = _nbgrader(cell)
    return cell.get("cell_type") == "code" and bool(md.get("grade")) and not md.get("solution")


def _is_restored(cell):
    """A test cell or a read-only instructor cell (the install cell): graded from the gradebook's copy."""
    md = _nbgrader(cell)
    return _is_test(cell) or (cell.get("cell_type") == "code" and bool(md.get("locked")) and not md.get("solution"))


def _source(cell):
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src if isinstance(src, str) else ""


def _checksum(cell):
    """The checksum nbgrader's ``generate_assignment`` writes into a released cell.

    The same fields as ``nbgrader.utils.compute_checksum`` (0.9), computed here so that the
    audit does not import nbgrader (seconds) and survives malformed metadata.
    """
    md = _nbgrader(cell)
    grade, solution = md.get("grade", False), md.get("solution", False)
    locked = False if solution else True if grade else md.get("locked", False)
    m = hashlib.md5()
    for part in (_source(cell), cell.get("cell_type", ""), str(grade), str(solution), str(locked),
                 str(md.get("grade_id", ""))):
        m.update(part.encode("utf-8"))
    if grade:
        try:
            m.update(str(float(md.get("points", 0))).encode("utf-8"))
        except (TypeError, ValueError):
            return None
    return m.hexdigest()


def _read(path):
    """A notebook as plain JSON (nbformat's validation would refuse exactly the tampered ones)."""
    with open(path, encoding="utf-8") as f:
        nb = json.load(f)
    cells = nb.get("cells") if isinstance(nb, dict) else None
    if not isinstance(cells, list):
        raise ValueError("no list of cells")
    return [c for c in cells if isinstance(c, dict)]


def _release(release_path):
    """``(test cells {grade_id: source}, graded ids)`` of a release notebook; graded ids include the
    manually graded answers, which are grade cells too."""
    cells = _read(release_path)
    tests = {_nbgrader(c).get("grade_id"): _source(c) for c in cells if _is_restored(c)}
    return tests, {_nbgrader(c).get("grade_id") for c in cells if _nbgrader(c).get("grade")}


def _tampering(path, cells, release):
    """Findings for nbgrader metadata that the release did not give (``release``: what
    :func:`_release` says, or None to check nbgrader's checksums instead)."""
    out, ids = [], Counter()
    released = any("checksum" in _nbgrader(c) for c in cells)
    for i, cell in enumerate(cells):
        md = _nbgrader(cell)
        if md:
            if md.get("grade_id") is not None:
                ids[md.get("grade_id")] += 1
            out += [Finding(path, i, None, TAMPERED, m)
                    for m in _cell_claims(cell, md, ids[md.get("grade_id")], release, released)]
    for gid in (release[0] if release else {}):
        if gid not in ids:
            out.append(Finding(path, None, None, TAMPERED, f"test cell {gid!r} of the release is missing "
                                                           "(deleted, or its nbgrader metadata removed)"))
    return out


def _cell_claims(cell, md, nth, release, released):
    """What is wrong with one cell's nbgrader metadata (``nth``: how many cells so far carry its id)."""
    gid, out = md.get("grade_id"), []
    if nth > 1:
        out.append(f"carries the grade_id {gid!r} again: nbgrader keeps one cell per id, this one may pose "
                   "as the test")
    if release is not None:
        tests, graded = release
        if md.get("grade") and gid not in graded:
            out.append(f"claims {md.get('points', '?')} points as grade_id {gid!r}, which the release "
                       "does not grade")
        elif gid in tests and cell.get("cell_type") != "code":
            out.append(f"test cell {gid!r} was turned into a {cell.get('cell_type')} cell")
        elif gid in tests and nth == 1 and _source(cell).rstrip() != tests[gid].rstrip():
            out.append(f"test cell {gid!r} was edited")
    elif released and (md.get("grade") or md.get("locked")):
        # a learner edits solution cells (the answers), never the others: their checksums must hold
        if "checksum" not in md:
            out.append(f"claims to be graded (grade_id {gid!r}, {md.get('points', '?')} points) but nbgrader "
                       "never released it")
        elif not md.get("solution") and md.get("checksum") != _checksum(cell):
            out.append(f"cell {gid!r} differs from what nbgrader released (its code, type, points or flags "
                       "were changed)")
    return out


def _graded_from_the_gradebook(cell, tests, released):
    """True for a test or read-only cell as released: the grader runs the gradebook's copy, never this text."""
    if not _is_restored(cell):
        return False
    if tests is not None:
        gid = _nbgrader(cell).get("grade_id")
        return gid in tests and _source(cell).rstrip() == tests[gid].rstrip()
    if released:
        return _nbgrader(cell).get("checksum") == _checksum(cell)
    return True                  # an instructor's source notebook: nothing was released yet


def audit_notebook(path, release=None):
    """Findings for one notebook: its learner code cells, and its cells' nbgrader metadata.

    ``release``: the release notebook of the same assignment, to compare the test cells with
    (optional; without it the checksums nbgrader wrote into the released cells are used).
    """
    path = str(path)
    try:
        cells = _read(path)
    except (OSError, ValueError) as e:
        return [Finding(path, None, None, UNPARSED, f"is not a readable notebook ({e}); read it")]
    known = _release(release) if release else None       # OSError, ValueError: the caller's to report
    released = any("checksum" in _nbgrader(c) for c in cells)
    out = _tampering(path, cells, known)
    tests = known[0] if known else None
    code = [(i, _source(c)) for i, c in enumerate(cells)
            if c.get("cell_type") == "code" and not _graded_from_the_gradebook(c, tests, released)]
    modules = {}
    for c in cells:                # imports of any cell: `np` in a cell that did not import it
        if c.get("cell_type") == "code":
            tree, _ = _parse(_source(c))
            modules.update(_imports(tree) if tree else {})
    for i, src in code:
        out.extend(Finding(path, i, line, kind, message) for line, kind, message in audit_source(src, modules))
    return sorted(out, key=Finding.key)


# ---------------------------------------------------------------- folders
def _in_submission(folder):
    """True for a folder below ``submitted/<student>/<assignment>/``: nothing belongs there."""
    parts = Path(os.path.abspath(folder)).parts
    if "submitted" not in parts:
        return False
    return parts[::-1].index("submitted") > 2        # parts after the last "submitted": student, assignment


def _holds_notebook(folder):
    return any(p.suffix == ".ipynb" and ".ipynb_checkpoints" not in p.parts for p in Path(folder).rglob("*"))


# Files that nbgrader itself puts in a submission folder.
NBGRADER_FILES = {"timestamp.txt", "submission_secret.txt"}


def _walk(root):
    """(notebooks, findings for every other file and for stray folders) below ``root``."""
    notebooks, out, stray = [], [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != ".ipynb_checkpoints")
        for d in dirnames:
            full = os.path.join(dirpath, d)
            if not any(full.startswith(s + os.sep) for s in stray) and (
                    os.path.islink(full) or _in_submission(full) or not _holds_notebook(full)):
                stray.append(full)
                out.append(Finding(full + os.sep, None, None, EXTRA_FILE,
                                   "a folder in a submission: nbgrader copies it beside the notebook, where "
                                   "a package (bnref/...) would shadow an import"))
        for f in sorted(filenames):
            full = os.path.join(dirpath, f)
            if os.path.islink(full):
                out.append(Finding(full, None, None, EXTRA_FILE, f"a symbolic link to {os.readlink(full)}"))
            elif f.endswith(".ipynb"):
                notebooks.append(full)
            elif f in NBGRADER_FILES and _in_submission(dirpath + os.sep + "x"):
                continue                          # written by nbgrader's submit and zip_collect
            else:
                why = ("a Python file beside the notebook: an import can pick it up instead of the real module"
                       if PYTHON_FILE.search(f) else
                       "not a notebook: nbgrader copies it beside the notebook; read it")
                out.append(Finding(full, None, None, EXTRA_FILE, why))
    return notebooks, out


def _find_release(release, notebook):
    """``release``/<assignment>/<notebook>.ipynb, ``release``/<notebook>.ipynb, or ``release`` itself."""
    release, notebook = Path(release), Path(notebook)
    if release.suffix == ".ipynb":
        return release if release.is_file() else None
    for candidate in (release / notebook.parent.name / notebook.name, release / notebook.name):
        if candidate.is_file():
            return candidate
    return None


def audit_paths(paths, release=None, notes=None):
    """``(findings, number of notebooks)`` for notebooks and folders (searched recursively).

    ``notes``: a list that gets a line for each notebook whose release was not found.
    """
    out, notebooks = [], []
    for p in map(str, paths):
        if os.path.isdir(p):
            found, extra = _walk(p)
            notebooks += found
            out += extra
        else:
            notebooks.append(p)
    notes = [] if notes is None else notes
    for nb in notebooks:
        rel = _find_release(release, nb) if release else None
        if release and rel is None:
            notes.append(f"{nb}: no release notebook in {release}; compared with nbgrader's checksums only")
        try:
            out += audit_notebook(nb, rel)
        except (OSError, ValueError) as e:
            notes.append(f"{nb}: the release notebook {rel} is not readable ({e}); compared with nbgrader's "
                         "checksums only")
            out += audit_notebook(nb)
    return sorted(out, key=Finding.key), len(notebooks)


def _count(n, word):
    return f"{n} {word}{'' if n == 1 else 's'}"


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="python -m bnref.grading.audit",
        description="List code in submitted notebooks that an instructor should read before trusting a "
                    "grade (advisory: the sandbox protects the grades; this changes none).")
    ap.add_argument("paths", nargs="+", help="notebooks or folders (searched recursively), e.g. submitted/")
    ap.add_argument("--release", metavar="DIR",
                    help="the release folder (exercises/): compare each notebook's test cells with "
                         "DIR/<assignment>/<notebook>.ipynb")
    ap.add_argument("--strict", action="store_true", help="exit with status 1 if anything is found")
    args = ap.parse_args(argv)
    for p in args.paths + ([args.release] if args.release else []):
        if not os.path.exists(p):
            ap.error(f"{p} does not exist")
    notes = []
    findings, count = audit_paths(args.paths, args.release, notes)
    for f in findings:
        print(f)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    per_class = Counter(f.kind for f in findings)
    summary = ", ".join(f"{per_class[k]} {k}" for k in CLASSES if per_class[k])
    print(f"{_count(len(findings), 'finding')} in {_count(count, 'notebook')}"
          + (f": {summary}" if summary else ""), file=sys.stderr)
    return 1 if args.strict and findings else 0


if __name__ == "__main__":
    sys.exit(main())
