"""Every released notebook opens with its title, then the course's "Before you start" header.

nbgrader's IncludeHeaderFooter put the header above the title (on the book's exercise pages
too); bnref.grading.header.IncludeHeaderAfterTitle puts it under the title cell.
"""
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from bnref.grading.header import IncludeHeaderAfterTitle, opens_with_title

ROOT = Path(__file__).resolve().parents[1]
HEADER = ROOT / "solutions" / "header.ipynb"
EXERCISES = sorted((ROOT / "exercises").glob("*/*.ipynb"))


def header_sources():
    return [c.source for c in nbformat.read(str(HEADER), as_version=4).cells]


def run(nb, **traits):
    pre = IncludeHeaderAfterTitle(header=str(HEADER), **traits)
    out, _ = pre.preprocess(nb, {})
    return [c.source for c in out.cells]


def test_the_header_goes_under_the_title_cell():
    nb = new_notebook(cells=[new_markdown_cell("# Problem set 9\n\nIntro."), new_code_cell("x = 1")])
    assert run(nb) == ["# Problem set 9\n\nIntro.", *header_sources(), "x = 1"]


@pytest.mark.parametrize("first", [new_markdown_cell("Some text, no title"),
                                   new_markdown_cell("## A section, not a title"),
                                   new_code_cell("# a comment, not a title")])
def test_a_notebook_without_a_title_cell_gets_the_header_on_top(first):
    nb = new_notebook(cells=[first, new_code_cell("x = 1")])
    assert run(nb) == [*header_sources(), first.source, "x = 1"]


def test_a_footer_is_refused_by_name_not_dropped():
    nb = new_notebook(cells=[new_markdown_cell("# T")])
    with pytest.raises(ValueError, match="footer="):
        run(nb, footer=str(HEADER))


def test_title_detection_skips_leading_blank_lines():
    assert opens_with_title(new_markdown_cell("\n\n# Title"))
    assert not opens_with_title(new_markdown_cell(""))


@pytest.mark.parametrize("path", EXERCISES, ids=lambda p: p.parent.name)
def test_each_released_notebook_shows_its_title_before_the_instructions(path):
    cells = nbformat.read(str(path), as_version=4).cells
    assert opens_with_title(cells[0]), f"{path.name} does not open with its title"
    assert [c.source for c in cells[1:1 + len(header_sources())]] == header_sources()
