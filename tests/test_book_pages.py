"""The built book's launch buttons: each one opens its page.

Runs after the book is built (``make test`` builds it first): Colab only on pages whose
source is a notebook (the exercises), Binder and the JupyterHub on every notebook page, all
pointing at the repository set in ``_config.yml``.
"""
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.book]
ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
ORG_REPO = CONFIG["repository"]["url"].split("github.com/")[1]


@pytest.fixture(scope="module")
def built():
    if not (HTML / "index.html").exists():
        pytest.fail("the book is not built: run `make book` (make test builds it before this test)")
    return HTML


@pytest.mark.parametrize("chapter", sorted(p.stem for p in (ROOT / "book").glob("0*.md")))
def test_no_colab_button_on_markdown_chapters(built, chapter):
    page = (built / "book" / f"{chapter}.html").read_text()
    assert "colab.research.google.com" not in page
    assert f"mybinder.org/v2/gh/{ORG_REPO}" in page           # Binder opens them (jupytext)
    assert CONFIG["launch_buttons"]["jupyterhub_url"] in page


@pytest.mark.parametrize("exercise", sorted(p.relative_to(ROOT / "exercises").with_suffix("")
                                            for p in (ROOT / "exercises").glob("ps*/*.ipynb")), ids=str)
def test_exercise_pages_open_in_colab_from_the_repository(built, exercise):
    page = (built / "exercises" / f"{exercise}.html").read_text()
    assert f"colab.research.google.com/github/{ORG_REPO}/blob/" in page
    assert f"exercises/{exercise}.ipynb" in page


@pytest.mark.parametrize("chapter", sorted(p.stem for p in (ROOT / "book").glob("0*.md")))
def test_every_figure_says_what_it_shows(built, chapter):
    """An alt text, not the image's own file name (which is what an unlabelled plot gets)."""
    import re

    page = (built / "book" / f"{chapter}.html").read_text()
    alts = re.findall(r'<img[^>]*\balt="([^"]*)"', page)
    assert alts, f"{chapter} has no figures?"
    bad = [a for a in alts if not a.strip() or a.startswith(("../_images", "_images")) or a.endswith(".png")]
    assert not bad, f"{chapter}: figures without a description: {bad[:3]}"
