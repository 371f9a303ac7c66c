"""bnref.grading.audit lists code an instructor should read, and nothing in honest code."""
import nbformat

from bnref.grading.audit import audit_notebook, audit_source, main


def messages(src):
    return [msg for _, msg in audit_source(src)]


def test_honest_numpy_code_has_no_findings():
    assert messages("import numpy as np\nx = np.ones(3)\ny = x.mean(axis=0)\n%timeit x.sum()\n") == []


def test_reference_and_framework_imports_are_listed():
    assert messages("import bnref\nfrom torch.nn import functional as F\nimport bnref.grading\n") == [
        "imports bnref", "imports torch.nn"]


def test_monkeypatching_is_listed():
    found = messages("import numpy as np, sys, json\nnp.allclose = lambda *a: True\n"
                     "sys.modules['bnref.grading'] = None\njson.loads = None\nsetattr(np, 'mean', None)\n")
    assert "assigns to np.allclose (replaces part of a module)" in found
    assert "assigns to sys.modules['bnref.grading'] (replaces part of a module)" in found
    assert "assigns to json.loads (replaces part of a module)" in found
    assert "calls setattr on module np" in found


def test_kernel_level_tricks_are_listed():
    found = messages("get_ipython().set_custom_exc((Exception,), None)\nimport ctypes, os\nos._exit(0)\n")
    assert "calls get_ipython()" in found and "imports ctypes" in found and "calls os._exit()" in found


def test_notebook_scan_skips_test_cells_and_the_cli_is_strict(tmp_path, capsys):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import bnref")])
    test = nbformat.v4.new_code_cell("import sys; sys.modules.pop('bnref', None)")
    test.metadata["nbgrader"] = {"grade": True, "solution": False, "grade_id": "t", "points": 1}
    nb.cells.append(test)
    path = tmp_path / "s" / "nb.ipynb"
    path.parent.mkdir()
    nbformat.write(nb, str(path))
    assert audit_notebook(path) == [(0, 1, "imports bnref")]
    assert main([str(tmp_path), "--strict"]) == 1
    assert "cell 0, line 1: imports bnref" in capsys.readouterr().out
