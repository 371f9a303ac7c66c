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


def _page_text(built, page):
    """A built page as plain text: tags removed, entities decoded, whitespace collapsed."""
    import html
    import re

    raw = (built / "book" / f"{page}.html").read_text()
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", raw)).split())


def test_ch2_prose_share_of_saturated_inputs_is_the_printed_one(built):
    # the self-checks and the summary say "about N%" of the inputs saturate without BN at most;
    # N is the printed largest share over training, rounded
    import re

    text = _page_text(built, "02_internal_covariate_shift")
    printed = re.search(r"without BN: at most (\d+\.\d)% with \|z\| > 4", text)
    assert printed, "ch02 no longer prints the largest saturated share without BN"
    said = {int(n) for n in re.findall(r"at most about (\d+)% of the inputs", text)}
    said |= {int(n) for n in re.findall(r"stays at about (\d+)% at most without BN", text)}
    said |= {int(n) for n in re.findall(r"over all of training, about (\d+)%", text)}
    assert len(said) == 1 and said == {round(float(printed.group(1)))}, (said, printed.group(1))


def test_ch7_prose_median_of_the_m2_variance_is_the_printed_one(built):
    # the widget's answer and self-check 6 say the median of s^2/sigma^2 at m = 2 is "about half"
    import re

    text = _page_text(built, "07_flaws_and_alternatives")
    row = re.search(r"batch size m((?:\s+\d+)+)\s+median((?:\s+\d+\.\d+)+)\s+mean((?:\s+\d+\.\d+)+)", text)
    assert row, "ch07 no longer prints the median and mean of s^2/sigma^2 per batch size"
    sizes, medians, means = ([float(v) for v in g.split()] for g in row.groups())
    at2 = sizes.index(2)
    assert 0.4 <= medians[at2] <= 0.6, medians           # "about half" / "about 0.5"
    assert all(abs(v - 1) <= 0.1 for v in means), means  # "its mean is still about 1"
    assert "median is about half" in text and "median is about 0.5" in text


@pytest.mark.parametrize("page", sorted(str(p.relative_to(ROOT).with_suffix("")) for p in
                                        [*(ROOT / "book").glob("*.md"), *(ROOT / "exercises").glob("ps*/*.ipynb")]))
def test_no_directive_is_left_as_raw_text(built, page):
    # A MyST fence whose title has a backtick (CommonMark forbids them in a backtick fence's info
    # string) is not a directive: the page shows "````{admonition} ..." as text, and the next
    # fence swallows the following block as code
    import re

    raw = (built / f"{page}.html").read_text()
    prose = re.sub(r"<pre[\s\S]*?</pre>|<code[\s\S]*?</code>", " ", raw)    # code may show MyST
    assert "```" not in prose and not re.search(r"\{(admonition|code-cell|figure|note|math)\}", prose), page


def test_ch2_drill_compares_the_gaussian_tails_with_the_widget_s_last_frame(built):
    # self-check 7: at the end of training the no-BN histogram has a standard deviation near 1.5
    # and more than a Gaussian's 0.8% beyond |z| = 4; the frames' alt texts carry both numbers
    import json
    import re

    raw = (built / "book" / "02_internal_covariate_shift.html").read_text()
    alts = [a for m in re.finditer(r'<script type="application/json" class="bnref-frames">(.*?)</script>', raw, re.S)
            for a in json.loads(m.group(1))["alts"] if a.startswith("Histograms of the third hidden layer")]
    assert alts, "the histogram widget's frames are missing"
    last = re.search(r"without BN mean [+-]\d\.\d+, standard deviation (\d\.\d+), (\d+)% beyond", alts[-1])
    assert last, alts[-1]
    assert 1.3 <= float(last.group(1)) <= 1.7 and int(last.group(2)) > 0.8, alts[-1]
