"""RobustExecute: a cell that kills or hangs the kernel costs that cell, never the notebook."""
import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from bnref.grading.nbgrader_ext import RobustExecute

pytestmark = pytest.mark.slow


def run(tmp_path, *sources, timeout=5):
    nb = new_notebook(cells=[new_code_cell(s) for s in sources],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nb, _ = RobustExecute(timeout=timeout).preprocess(nb, {"metadata": {"path": str(tmp_path)}})
    return nb.cells


def text(cell):
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def errors(cell):
    return [o.ename for o in cell.outputs if o.output_type == "error"]


def test_a_cell_that_kills_the_kernel_is_marked_and_the_rest_still_runs(tmp_path):
    cells = run(tmp_path, "x = 41\nprint('first')", "import os\nos._exit(1)", "print(x + 1)")
    assert errors(cells[1]) == ["DeadKernelError"]
    assert text(cells[2]) == "42\n"              # earlier state was replayed in a fresh kernel
    assert text(cells[0]) == "first\n" and errors(cells[0]) == []   # replay kept the first result


def test_an_infinite_loop_times_out_and_grading_goes_on(tmp_path):
    cells = run(tmp_path, "while True:\n    pass", "print('after')", timeout=3)
    assert "CellTimeoutError" in errors(cells[0])          # (after the KeyboardInterrupt it caused)
    assert text(cells[1]) == "after\n"


def test_a_kernel_broken_for_good_still_returns_a_graded_notebook(tmp_path):
    # json.loads is what the kernel uses to read requests: after this cell it answers nothing
    cells = run(tmp_path, "y = 1", "import json\njson.loads = lambda *a, **k: {}", "print(y)", "print(y + 1)",
                timeout=3)
    assert errors(cells[0]) == []
    for cell in cells[2:]:
        assert errors(cell), "every cell after the break is marked as an error"
