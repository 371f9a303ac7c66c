"""List code in submitted notebooks that an instructor should read before trusting a grade.

The checks in the test cells cannot see code that attacks the kernel below them (IPython
hooks, ctypes) and do not forbid harmless imports; this scan, run outside any kernel, lists
such code for a human to judge. It parses each code cell (IPython magics and shell lines are
skipped) and reports:

- imports of bnref (not bnref.grading), deep-learning frameworks, ``ctypes``, ``gc``,
  ``importlib``, ``builtins``, ``IPython``, ``subprocess``, ``multiprocessing``, ``threading``;
- assignments to attributes of imported modules (``np.allclose = ...``), to ``sys.modules``
  or ``__builtins__``;
- ``get_ipython()``, ``sys.setprofile``/``settrace``, ``os._exit``, ``exec``/``eval``/``compile``.

Usage::

    python -m bnref.grading.audit submitted/               # every notebook below
    python -m bnref.grading.audit submitted/*/ps1_forward --strict   # exit 1 if anything is found
"""
import argparse
import ast
import sys
from pathlib import Path

import nbformat

__all__ = ["audit_source", "audit_notebook", "main"]

SUSPICIOUS_IMPORTS = {"torch", "tensorflow", "keras", "jax", "flax", "ctypes", "gc", "importlib",
                      "builtins", "IPython", "subprocess", "multiprocessing", "threading", "_thread"}
SUSPICIOUS_CALLS = {"get_ipython", "exec", "eval", "compile", "__import__", "setprofile", "settrace",
                    "_exit", "addaudithook"}


def _module_names(tree):
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                names[(a.asname or a.name).split(".")[0]] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def audit_source(src):
    """Findings ``(line, message)`` for one cell's source."""
    lines = [("" if line.lstrip().startswith(("%", "!")) else line) for line in src.splitlines()]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError as e:
        return [(e.lineno or 0, f"does not parse ({e.msg}); read it")]
    found = []
    modules = _module_names(tree)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            full = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in full:
                top = name.split(".")[0]
                if (top == "bnref" and not name.startswith("bnref.grading")) or top in SUSPICIOUS_IMPORTS:
                    found.append((node.lineno, f"imports {name}"))
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                base = t
                while isinstance(base, (ast.Attribute, ast.Subscript)):
                    base = base.value
                text = ast.unparse(t)
                if isinstance(t, (ast.Attribute, ast.Subscript)) and isinstance(base, ast.Name) and \
                        (base.id in modules or base.id in ("sys", "__builtins__")):
                    found.append((node.lineno, f"assigns to {text} (replaces part of a module)"))
                elif isinstance(t, ast.Name) and t.id in ("__builtins__",):
                    found.append((node.lineno, f"assigns to {text}"))
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name in SUSPICIOUS_CALLS:
                found.append((node.lineno, f"calls {ast.unparse(f)}()"))
            if name == "setattr" and node.args and isinstance(node.args[0], ast.Name) and \
                    node.args[0].id in modules:
                found.append((node.lineno, f"calls setattr on module {node.args[0].id}"))
    return sorted(set(found))


def audit_notebook(path):
    """Findings ``(cell index, line, message)`` for the learner's code cells of a notebook."""
    nb = nbformat.read(str(path), as_version=4)
    out = []
    for i, cell in enumerate(nb.cells):
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type != "code" or (meta.get("grade") and not meta.get("solution")):
            continue                     # test cells are restored from the source at grading
        out.extend((i, line, msg) for line, msg in audit_source(cell.source))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description="List suspicious code in submitted notebooks.")
    ap.add_argument("paths", nargs="+", help="notebooks or folders (searched recursively)")
    ap.add_argument("--strict", action="store_true", help="exit with status 1 if anything is found")
    args = ap.parse_args(argv)
    files = []
    for p in map(Path, args.paths):
        if not p.exists():
            ap.error(f"{p} does not exist")
        files.extend(sorted(p.rglob("*.ipynb")) if p.is_dir() else [p])
    total = 0
    for f in files:
        if ".ipynb_checkpoints" in f.parts:
            continue
        findings = audit_notebook(f)
        total += len(findings)
        for cell, line, msg in findings:
            print(f"{f}: cell {cell}, line {line}: {msg}")
    print(f"{total} finding(s) in {len(files)} notebook(s)", file=sys.stderr)
    return 1 if (args.strict and total) else 0


if __name__ == "__main__":
    sys.exit(main())
