"""The claim ledger: book/claims.yml, the extension that turns it into book/claim_ledger.md, and
the built page.

The data: every claim of the course's list (ids 1 to 39, in its order and sections), in English
and Chinese with the glossary's terms, with a final verdict, a reason and evidence labels that
exist in the book. The extension: run on a tiny Sphinx project, it links a label that exists
and warns on one that does not. The built page (marked ``book``): 39 claims, each with a
verdict and links that land on an existing page and anchor.
"""
import io
import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
LEDGER = BOOK / "claims.yml"
EXT = BOOK / "_ext"
SITE = ROOT / "_build" / "html"
# The course's list of claims lives beside the repository in the authors' workspace; where it is
# there, the test also reads its sections and numbers (CLAIM_SECTIONS is their copy).
SHARED_CLAIMS = ROOT.parent / "shared" / "CLAIMS.md"
CLAIM_SECTIONS = [
    ("Motivation and mechanism", range(1, 13)),
    ("The transform", range(13, 19)),
    ("Effects claimed", range(19, 29)),
    ("Training versus test", range(29, 37)),
    ("Weaknesses", range(37, 40)),
]
FINAL_VERDICTS = {"holds", "partly", "does not hold"}

sys.path.insert(0, str(EXT))
import claim_ledger  # noqa: E402  (book/_ext is not a package)


@pytest.fixture(scope="module")
def groups():
    return claim_ledger.load_ledger(LEDGER)


def claims_of(groups):
    return [c for g in groups for c in g["claims"]]


# ------------------------------------------------------------------------------ the data

def test_ledger_lists_claims_1_to_39_in_the_order_and_sections_of_the_course_list(groups):
    assert [(g["title"], [c["id"] for c in g["claims"]]) for g in groups] == [
        (title, list(ids)) for title, ids in CLAIM_SECTIONS]


def test_the_section_copy_matches_the_course_list():
    if not SHARED_CLAIMS.exists():
        pytest.skip(f"{SHARED_CLAIMS} is not beside this checkout")
    sections, current = [], None
    for line in SHARED_CLAIMS.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            current = (line[3:].strip(), [])
            sections.append(current)
        elif current and (m := re.match(r"(\d+)\. ", line)):
            current[1].append(int(m.group(1)))
    assert sections == [(title, list(ids)) for title, ids in CLAIM_SECTIONS]


def test_every_claim_is_in_both_languages_with_a_final_verdict_a_reason_and_evidence(groups):
    for claim in claims_of(groups):
        cid = claim["id"]
        assert re.search(r"[a-z]{3}", claim["en"]), cid
        assert re.search(r"[\u4e00-\u9fff]", claim["zh"]), f"claim {cid}: zh has no Chinese"
        assert claim["verdict"] in claim_ledger.VERDICTS, cid
        assert claim["verdict"] in FINAL_VERDICTS, f"claim {cid} is {claim['verdict']!r}: test it"
        assert len(claim["reason"].split()) >= 8, f"claim {cid}: say why"
        assert "PENDING" not in claim["reason"], f"claim {cid}: the reason is a placeholder"
        assert len(claim["evidence"]) >= 1, cid


def book_labels():
    """{label: file stem} for every MyST target ``(label)=`` in book/*.md."""
    labels = {}
    for page in sorted(BOOK.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        for label in re.findall(r"^\(([^()\s]+)\)=\s*$", text, flags=re.M):
            labels[label.lower()] = page.stem
    return labels


def test_every_evidence_label_is_a_target_in_the_book(groups):
    labels = book_labels()
    missing = {c["id"]: label for c in claims_of(groups) for label in c["evidence"]
               if label.lower() not in labels}
    assert not missing, f"claims whose evidence labels no book page defines: {missing}"


def test_once_the_ledger_is_built_every_evidence_label_is_on_a_page_that_is_built_too(groups):
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    built = {toc["root"]} | {c["file"] for part in toc["parts"] for c in part["chapters"]}
    if "book/claim_ledger" not in built:
        pytest.skip("book/claim_ledger is not in _toc.yml yet")
    labels = book_labels()
    outside = {c["id"]: label for c in claims_of(groups) for label in c["evidence"]
               if label.lower() in labels and f"book/{labels[label.lower()]}" not in built}
    assert not outside, f"labels on pages that _toc.yml leaves out (not built): {outside}"


def glossary_terms():
    """[(English, Chinese)] of book/glossary.md: each entry opens with those two lines."""
    text = (BOOK / "glossary.md").read_text(encoding="utf-8")
    lines = text.split("```{glossary}")[1].split("```")[0].splitlines()
    chinese = re.compile(r"[\u4e00-\u9fff]").search
    return [(first.strip(), second.strip()) for first, second in zip(lines, lines[1:])
            if first and second and not first[0].isspace() and not second[0].isspace()
            and not chinese(first) and chinese(second)]


def english_forms(term):
    """A regex for an English glossary term and its inflections (plural, -ise/-ize, -ed, -ing),
    or None for the symbol entries, 'scale (gamma)' and 'shift (beta)', whose words are common."""
    if "(" in term:
        return None
    *head, last = re.split(r"[\s-]+", term.lower())
    forms = {last, last + "s", last + "es"}
    if last.endswith("ation"):       # saturation: saturate(d); normalization: normalize(d)
        stem = last[: -len("ation")]
        forms |= {stem + end for end in ("e", "es", "ed", "ing", "ate", "ates", "ated", "ating")}
    if last.endswith("ing"):                          # whitening: whiten, whitened; folding: fold
        stem = last[: -len("ing")]
        forms |= {stem, stem + "s", stem + "ed"}
    if last.endswith("y"):
        forms.add(last[:-1] + "ies")
    alternatives = "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))
    pattern = r"[\s-]+".join([re.escape(w) for w in head] + [f"(?:{alternatives})"])
    return re.compile(r"\b" + pattern.replace("iz", "i[sz]") + r"\b", re.IGNORECASE)


def test_the_glossary_reader_finds_the_entries_and_their_inflections():
    terms = dict(glossary_terms())
    assert terms["batch normalization"] == "批归一化" and terms["saturation"] == "饱和"
    assert english_forms("saturation").search("the saturated tails")
    assert english_forms("batch normalization").search("batch normalisation")
    assert english_forms("mini-batch").search("mini-batches")
    assert not english_forms("biased variance").search("the unbiased variance")
    assert english_forms("scale (gamma)") is None


def test_chinese_text_uses_the_glossary_term_wherever_the_english_uses_the_english_one(groups):
    checks = [(english_forms(en), en, zh) for en, zh in glossary_terms()]
    wrong = []
    for claim in claims_of(groups):
        for pattern, en, zh in checks:
            if pattern and pattern.search(claim["en"]) and zh not in claim["zh"]:
                wrong.append(f"claim {claim['id']}: '{en}' in English, but no {zh} in Chinese")
    assert not wrong, "\n".join(wrong)


# ------------------------------------------------------------------------- the extension

def build_tiny_project(tmp_path, claims, warningiserror=False):
    """Build a two-page Sphinx project whose second page is the ledger of ``claims``."""
    from sphinx.application import Sphinx
    from sphinx.util.docutils import docutils_namespace

    src = tmp_path / "src"
    src.mkdir()
    (src / "conf.py").write_text(f"import sys\nsys.path.insert(0, {str(EXT)!r})\n"
                                 "extensions = ['claim_ledger']\nproject = 'tiny'\n")
    (src / "index.rst").write_text("Tiny\n====\n\n.. toctree::\n\n   06_evidence\n   ledger\n")
    (src / "06_evidence.rst").write_text(
        ".. _existing-label:\n\nThe evidence\n============\n\nComputed here.\n")
    (src / "ledger.rst").write_text("Ledger\n======\n\n.. claim-ledger:: claims.yml\n")
    ledger = {"groups": [{"title": "A group", "claims": claims}]}
    (src / "claims.yml").write_text(yaml.safe_dump(ledger, allow_unicode=True), encoding="utf-8")
    warnings = io.StringIO()
    with docutils_namespace():     # node and directive registrations end with this build
        app = Sphinx(str(src), str(src), str(tmp_path / "html"), str(tmp_path / "doctrees"),
                     "html", status=io.StringIO(), warning=warnings, freshenv=True,
                     warningiserror=warningiserror)
        app.build()
    return app, warnings.getvalue()


def claim(cid, evidence, verdict="holds"):
    return {"id": cid, "en": "BN does a thing.", "zh": "批归一化做一件事。",
            "verdict": verdict, "reason": "The evidence page computes it.", "evidence": evidence}


def test_extension_links_an_existing_label_and_warns_on_a_missing_one(tmp_path):
    app, warnings = build_tiny_project(tmp_path, [claim(1, ["existing-label"]),
                                                  claim(2, ["missing-label"], "partly")])
    assert "undefined label: 'missing-label'" in warnings
    assert "existing-label" not in warnings
    assert re.search(r"claims\.yml:\d+: WARNING: undefined label", warnings)   # the claim's line
    page = (tmp_path / "html" / "ledger.html").read_text(encoding="utf-8")
    assert 'id="claim-1"' in page and 'id="claim-2"' in page
    # the link is named by its chapter and the target section's title
    assert re.search(r'href="06_evidence\.html#existing-label"[^>]*><span[^>]*>ch06 · The evidence<',
                     page)
    assert "holds · 成立" in page and "partly · 部分成立" in page
    assert '<p class="claim-ledger-zh" lang="zh">' in page
    assert (tmp_path / "html" / "_static" / claim_ledger.CSS_FILE).exists()
    # an edit of the YAML rebuilds the page; parallel builds may read pages with it
    assert any(str(d).endswith("claims.yml") for d in app.env.dependencies["ledger"])
    assert app.extensions["claim_ledger"].parallel_read_safe


def test_extension_fails_a_warnings_as_errors_build_on_a_missing_label(tmp_path):
    from sphinx.errors import SphinxWarning

    with pytest.raises(SphinxWarning, match="missing-label"):
        build_tiny_project(tmp_path, [claim(1, ["missing-label"])], warningiserror=True)


def test_evidence_links_show_section_titles_with_their_tex_as_text():
    assert claim_ledger.plain_title(r"Why \gamma and \beta") == "Why γ and β"
    assert (claim_ledger.plain_title(r"orthogonal to \mathbf 1 and \hat x")
            == "orthogonal to 1 and x̂")


@pytest.mark.parametrize("bad, message", [
    ({"verdict": "probably"}, "verdict 'probably' is not one of"),
    ({"evidence": []}, "lacks evidence"),
    ({"zh": ""}, "lacks zh"),
])
def test_extension_refuses_a_malformed_claim_by_name(tmp_path, bad, message):
    _, warnings = build_tiny_project(tmp_path, [{**claim(7, ["existing-label"]), **bad}])
    assert "claim-ledger" in warnings and message in warnings


# ------------------------------------------------------------------------- the built page

class _LedgerPage(HTMLParser):
    """Every id of a page and, per claim block, the text of its verdict badge and its links."""

    def __init__(self):
        super().__init__()
        self.ids, self.claims = set(), {}
        self._claim = self._in_badge = self._in_evidence = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if "claim-ledger-claim" in classes:
            self._claim = self.claims.setdefault(attrs["id"], {"verdicts": [], "links": []})
        elif "claim-ledger-verdict" in classes:
            self._in_badge = True
            self._claim["verdicts"].append("")
        elif "claim-ledger-evidence" in classes:
            self._in_evidence = True
        elif tag == "a" and self._in_evidence:
            self._claim["links"].append(attrs.get("href", ""))

    def handle_data(self, data):
        if self._in_badge:
            self._claim["verdicts"][-1] += data

    def handle_endtag(self, tag):
        if tag == "span":
            self._in_badge = False                   # a badge holds text only
        elif tag == "p":
            self._in_evidence = False


def parse(path):
    parser = _LedgerPage()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


@pytest.mark.slow
@pytest.mark.book
def test_built_ledger_shows_39_claims_each_with_a_verdict_and_links_that_land(site):
    page_path = site / "book" / "claim_ledger.html"
    assert page_path.exists(), "book/claim_ledger is not in the built book: is it in _toc.yml?"
    page = parse(page_path)
    assert sorted(page.claims) == sorted(f"claim-{i}" for i in range(1, 40))
    targets = {}
    for cid, found in page.claims.items():
        assert len(found["verdicts"]) == 1, cid
        assert found["verdicts"][0].split(" · ")[0] in FINAL_VERDICTS, (cid, found["verdicts"])
        assert found["links"], f"{cid}: no evidence link"
        for href in found["links"]:
            url = urlsplit(href)
            assert not url.scheme and url.fragment, f"{cid}: {href} is not a link into the book"
            target = (page_path.parent / unquote(url.path)).resolve() if url.path else page_path
            assert target.is_file(), f"{cid}: {href} points to a missing page"
            targets.setdefault(target, set()).add((cid, url.fragment))
    for target, wanted in targets.items():
        ids = parse(target).ids
        lost = sorted(w for w in wanted if w[1] not in ids)
        assert not lost, f"{target.relative_to(site)} has no anchor for {lost}"
