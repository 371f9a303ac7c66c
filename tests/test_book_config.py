"""The book's wiring, checked without building it: toc, config and chapter conventions."""

import re
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
SPHINX = CONFIG["sphinx"]["config"]

# The pages the team contract says the book has (see "Book wiring").
CONTRACT_FILES = {
    "book/intro",
    "book/01_covariate_shift", "book/02_internal_covariate_shift", "book/03_bn_transform",
    "book/04_backward", "book/05_train_vs_test", "book/06_what_bn_does",
    "book/07_flaws_and_alternatives", "book/08_convnets",
    "book/playground", "book/bug_gallery", "book/claim_ledger",
    "exercises/ps1_forward/batchnorm_forward", "exercises/ps2_backward/batchnorm_backward",
    "exercises/ps3_spatial/spatial_batchnorm", "exercises/ps4_inference/fold_batchnorm",
    "exercises/ps5_alternatives/layer_and_group_norm",
    "book/instructor_guide", "book/glossary", "book/api", "book/bibliography",
}
CHAPTERS = sorted(f for f in CONTRACT_FILES if re.match(r"book/0\d_", f))


def toc_files():
    files = [TOC["root"]]
    for part in TOC["parts"]:
        files += [c["file"] for c in part["chapters"]]
    return files


def test_toc_lists_every_contract_page_once():
    files = toc_files()
    assert sorted(files) == sorted(CONTRACT_FILES)
    assert len(files) == len(set(files))


def test_toc_has_the_five_parts():
    # Explore holds the pages a learner plays with rather than reads (the BN playground).
    assert [p["caption"] for p in TOC["parts"]] == [
        "Chapters", "Explore", "Exercises", "Instructor guide", "Reference"]


def test_only_toc_files_are_built():
    assert CONFIG["only_build_toc_files"] is True


def test_exercises_are_shown_but_not_executed():
    import fnmatch

    patterns = CONFIG["execute"]["exclude_patterns"]
    for f in CONTRACT_FILES:
        excluded = any(fnmatch.fnmatch(f + ".ipynb", p) for p in patterns)
        assert excluded == f.startswith("exercises/"), f
    assert CONFIG["execute"]["execute_notebooks"] == "cache"


def test_static_html_prefers_the_precomputed_widget_view():
    overrides = {tuple(o[:2]): o[2] for o in SPHINX["nb_mime_priority_overrides"]}
    for builder in ("html", "dirhtml", "singlehtml"):
        # lower number wins; myst-nb's widget-view default for html builders is 10
        assert overrides[(builder, "text/html")] < 10


def test_no_cdn_scripts_configured():
    assert SPHINX["nb_ipywidgets_js"] == {}
    assert not SPHINX["mathjax_path"].startswith(("http:", "https:", "//"))
    assert "sphinx_thebe" not in SPHINX["extensions"]
    assert "sphinx.ext.intersphinx" not in SPHINX["extensions"]


def test_launch_and_download_buttons_configured():
    launch = CONFIG["launch_buttons"]
    for key in ("binderhub_url", "jupyterhub_url", "colab_url"):
        assert launch[key].startswith("https://")
    assert SPHINX["html_theme_options"]["use_download_button"] is True
    assert CONFIG["repository"]["url"].startswith("https://github.com/")


def test_bibliography_file_exists_and_has_no_duplicate_keys():
    bib = (ROOT / CONFIG["bibtex_bibfiles"][0]).read_text()
    keys = re.findall(r"^@\w+\{([^,]+),", bib, flags=re.M)
    assert len(keys) == len(set(keys)), "duplicate bibtex keys"
    for key in ("ioffe2015batch", "santurkar2018how", "wu2018group", "ba2016layer",
                "ioffe2017batch", "shimodaira2000improving", "lecun1998efficient"):
        assert key in keys


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_is_a_myst_notebook_on_python3(chapter):
    text = (ROOT / f"{chapter}.md").read_text()
    header = yaml.safe_load(text.split("---")[1])
    assert header["kernelspec"]["name"] == "python3"
    assert header["jupytext"]["text_representation"]["format_name"] == "myst"
    assert "```{code-cell} ipython3" in text


@pytest.mark.parametrize("chapter", ["book/01_covariate_shift", "book/02_internal_covariate_shift",
                                     "book/03_bn_transform"])
def test_chapter_has_goals_widget_self_checks_and_citations(chapter):
    text = (ROOT / f"{chapter}.md").read_text()
    assert "Learning goals" in text
    assert "slider_figure(" in text
    assert len(re.findall(r":class: dropdown", text)) >= 3
    assert "{cite}`" in text


def test_glossary_gives_chinese_beside_english():
    text = (ROOT / "book/glossary.md").read_text()
    body = text.split("```{glossary}")[1].split("```")[0]
    for english, chinese in [("batch normalization", "批归一化"),
                             ("internal covariate shift", "内部协变量偏移"),
                             ("covariate shift", "协变量偏移"), ("whitening", "白化"),
                             ("mini-batch", "小批量"), ("running mean", "滑动平均")]:
        assert re.search(rf"^{re.escape(english)}\n{re.escape(chinese)}\n", body, flags=re.M), english


def test_no_two_references_cite_as_the_same_author_and_year():
    """Author-year citations ("He et al., 2016") must tell every entry apart: 2016a, 2016b."""
    from pybtex.database import parse_file

    seen = {}
    for key, entry in parse_file(str(ROOT / "book" / "references.bib")).entries.items():
        authors = entry.persons.get("author", [])
        label = (authors[0].last_names[0] if authors else entry.fields.get("title"),
                 "et al." if len(authors) > 2 else len(authors), entry.fields["year"])
        assert label not in seen, f"{key} and {seen[label]} both cite as {label}"
        seen[label] = key


@pytest.mark.parametrize("source", sorted(p.name for p in (ROOT / "book").glob("*.md")))
def test_book_sources_have_no_control_characters(source):
    # e.g. "\b" in a Python string that wrote "\beta" into a page: MathJax fails on the backspace
    text = (ROOT / "book" / source).read_text()
    bad = sorted({f"U+{ord(c):04X}" for c in text if ord(c) < 32 and c not in "\n\t"})
    assert not bad, f"{source} contains control characters {bad}"
