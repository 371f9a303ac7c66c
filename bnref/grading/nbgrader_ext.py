"""nbgrader extension: an Execute preprocessor that survives a kernel that dies mid-notebook.

Stock nbgrader 0.9.6 lets ``nbclient`` raise ``DeadKernelError`` when a cell kills the kernel
(``os._exit``, a segfault in an extension, the out-of-memory killer); ``autograde`` then
*removes the whole submission* from ``autograded/`` and records no grades for it.
:class:`RobustExecute` instead marks the cell that killed the kernel with an error output,
starts a fresh kernel, replays the cells before it (so the learner's earlier definitions
exist again) and goes on with the next cell. The cell that killed the kernel is never run
again, and the replay does not change the earlier cells' recorded outputs (so their grades
stand); test cells are not replayed. A kernel that stops answering (a cell replaced something
the kernel itself needs, e.g. ``json.loads``, and even the interrupt gets no reply) is
treated the same way. After ``max_restarts`` losses the remaining cells are marked as
errors. Either way the notebook is graded and written out.

Configured in ``nbgrader_config.py``::

    c.Autograde.autograde_preprocessors = [RobustExecute, IgnorePattern, ...]

``Execute.timeout`` and the other ``Execute`` options apply to it (it is a subclass).
"""
import copy

from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat.notebooknode import NotebookNode
from traitlets import Integer

from nbgrader.preprocessors import Execute

__all__ = ["RobustExecute"]


def _is_learner_code(cell):
    """Code cells other than test cells (those only check; replaying them is not needed)."""
    meta = cell.metadata.get("nbgrader", {})
    return cell.cell_type == "code" and not (meta.get("grade") and not meta.get("solution"))


def _dead_kernel_output(what, ename="DeadKernelError"):
    if ename == "DeadKernelError":
        why = f"the kernel died while {what} (os._exit, a crash or out of memory?)"
    else:
        why = (f"the kernel stopped responding while {what} ({ename}; did a cell replace something "
               "the kernel itself needs, such as json or sys.stdout?)")
    return NotebookNode(
        output_type="error", ename=ename, evalue=why,
        traceback=[f"{ename}: {why}. Grading restarted the kernel, re-ran the cells above and went on."])


class _KernelLost(Exception):
    def __init__(self, index, ename):
        super().__init__(ename)
        self.index, self.ename = index, ename


class RobustExecute(Execute):
    """nbgrader's Execute, but a dead or unresponsive kernel costs one cell, not the submission."""

    max_restarts = Integer(3, help="Kernel deaths tolerated per notebook before giving up "
                                   "(the remaining cells are marked as errors).").tag(config=True)

    def _run_cells(self, resources, indices):
        """Execute cells ``indices`` in order; raise _KernelLost(index) if the kernel is lost."""
        for index in indices:
            try:
                self.preprocess_cell(self.nb.cells[index], resources, index)
            except DeadKernelError:
                raise _KernelLost(index, "DeadKernelError") from None
            except (CellTimeoutError, TimeoutError) as e:   # no reply even after the interrupt
                raise _KernelLost(index, type(e).__name__) from None

    def _replay(self, resources, indices):
        """Re-run earlier cells to rebuild the kernel's state; their graded outputs stay as they were."""
        saved = {i: (copy.deepcopy(self.nb.cells[i].outputs), self.nb.cells[i].get("execution_count"))
                 for i in indices}
        try:
            self._run_cells(resources, indices)
        finally:
            for i, (outputs, count) in saved.items():
                self.nb.cells[i].outputs = outputs
                self.nb.cells[i].execution_count = count

    def _drop_kernel(self):
        try:
            self._cleanup_kernel()
        except Exception:   # noqa: BLE001 - the kernel is already gone; nothing to clean
            pass
        self.km = None
        self.kc = None

    def preprocess(self, nb, resources=None, km=None):
        from nbclient import NotebookClient

        NotebookClient.__init__(self, nb, km)
        self.reset_execution_trackers()
        self._check_assign_resources(resources)

        cells = self.nb.cells
        killers = set()          # cells that killed the kernel: never run again
        start = 0
        restarts = 0
        while True:
            try:
                with self.setup_kernel():
                    info_msg = self.wait_for_reply(self.kc.kernel_info())
                    self.nb.metadata["language_info"] = info_msg["content"]["language_info"]
                    self._replay(resources, [i for i in range(start) if i not in killers
                                             and _is_learner_code(cells[i])])
                    self._run_cells(resources, range(start, len(cells)))
            except _KernelLost as lost:
                self._drop_kernel()
                if lost.index >= start:         # a replayed cell keeps its first result
                    cells[lost.index].outputs.append(_dead_kernel_output("running this cell", lost.ename))
                killers.add(lost.index)
                start = max(start, lost.index + 1)
                restarts += 1
                if restarts > self.max_restarts:
                    for cell in cells[start:]:
                        if cell.cell_type == "code":
                            cell.outputs = [_dead_kernel_output(
                                f"running an earlier cell ({self.max_restarts} restarts already); "
                                "this cell was not run", lost.ename)]
                    break
                continue
            break
        self.set_widgets_metadata()
        return self.nb, self.resources
