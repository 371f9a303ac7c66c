"""The header of every released notebook, placed under the notebook's title.

nbgrader's ``IncludeHeaderFooter`` puts the header's cells (``solutions/header.ipynb``: the
"Before you start" instructions and the install cell) *before* every other cell, so a
learner, and the book's exercise pages, saw the instructions above the problem set's title.
This subclass inserts them after the notebook's opening cell when that cell is a markdown cell
that starts with a level-1 title; any other notebook gets them on top, as nbgrader does.
"""
from nbformat import current_nbformat
from nbgrader.nbgraderformat import read as read_nb
from nbgrader.preprocessors import IncludeHeaderFooter


def opens_with_title(cell):
    """True when ``cell`` is markdown whose first non-blank line is a ``# `` title."""
    if cell.cell_type != "markdown":
        return False
    lines = [line for line in cell.source.splitlines() if line.strip()]
    return bool(lines) and lines[0].startswith("# ")


class IncludeHeaderAfterTitle(IncludeHeaderFooter):
    """Like ``IncludeHeaderFooter``, but the header goes under the title cell.

    Configured with the same trait, ``c.IncludeHeaderFooter.header`` (traitlets applies a
    parent class's configuration to its subclasses). The footer is not supported: the course
    has none, and a configured one is refused rather than silently dropped.
    """

    def preprocess(self, nb, resources):
        if self.footer:
            raise ValueError(
                f"IncludeHeaderAfterTitle: footer={self.footer!r} is not supported; "
                "expected no footer (the course's notebooks have none)")
        header_cells = []
        if self.header:
            with open(self.header, encoding="utf-8") as fh:
                header_cells = read_nb(fh, as_version=current_nbformat).cells
        # the title cell first, then the header, then the rest, in their order
        at = 1 if nb.cells and opens_with_title(nb.cells[0]) else 0
        nb.cells = nb.cells[:at] + header_cells + nb.cells[at:]
        # NbGraderPreprocessor.preprocess, skipping IncludeHeaderFooter's own concatenation
        return super(IncludeHeaderFooter, self).preprocess(nb, resources)
