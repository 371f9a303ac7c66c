"""Sphinx extension: the claim ledger, generated from one data file at build time.

``book/claim_ledger.md`` holds only the directive::

    ```{claim-ledger} claims.yml
    ```

The directive reads the YAML file (a path relative to the page) and writes one section per
group of claims and, per claim, a block with its number, the claim in English and in Chinese,
the verdict as a badge that says it in words, the reason, and links to the sections where the
book computes the evidence. The links are ``pending_xref`` nodes of the ``std:ref`` kind, so
Sphinx resolves them like ``{ref}`label``` roles: a label that no page defines is a warning,
and the book's ``-W -n`` build fails on it. A verdict and its evidence cannot drift apart.

Blocks, not a table: the page must fit a 390 px phone column.
"""
import re
from pathlib import Path

from docutils import nodes
from sphinx import addnodes
from sphinx.transforms.post_transforms import SphinxPostTransform
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import clean_astext

#: verdict -> (Chinese, sphinx-design colour of its badge); the text says it, not the colour
VERDICTS = {
    "holds": ("成立", "success"),
    "partly": ("部分成立", "warning"),
    "does not hold": ("不成立", "danger"),
    "not tested here": ("本书未检验", "secondary"),
}
CLAIM_KEYS = ("id", "en", "zh", "verdict", "reason", "evidence")
CSS_FILE = "claim-ledger.css"
#: per-claim blocks set off by a rule at the left; nothing wider than the column
CSS = """\
.claim-ledger-claim {
  margin: 1rem 0;
  padding: 0.1rem 0 0.1rem 0.75rem;
  border-left: 3px solid var(--pst-color-border, #ccc);
  overflow-wrap: anywhere;
}
.claim-ledger-claim p { margin: 0.3rem 0; }
.claim-ledger-verdict { font-size: 0.85em; white-space: normal; }
.claim-ledger-zh { color: var(--pst-color-text-muted, #555); }
.claim-ledger-reason, .claim-ledger-evidence { font-size: 0.95em; }
"""


class LedgerError(ValueError):
    """The ledger file does not have the shape the directive reads."""


def load_ledger(path):
    """The groups of ``path`` (YAML), checked: each with a title and claims with every key.

    Each claim gains ``_line``, the line where it starts in the file, for warnings.
    """
    import yaml

    with open(path, encoding="utf-8") as f:
        text = f.read()
    data = yaml.safe_load(text)
    groups = data.get("groups") if isinstance(data, dict) else None
    if not isinstance(groups, list) or not groups:
        raise LedgerError("expected a mapping with a non-empty list 'groups'")
    for g, group in enumerate(groups, start=1):
        if not isinstance(group, dict) or not group.get("title") or not group.get("claims"):
            raise LedgerError(f"group {g}: needs 'title' and a non-empty list 'claims'")
        for claim in group["claims"]:
            missing = ([k for k in CLAIM_KEYS if not claim.get(k)] if isinstance(claim, dict)
                       else CLAIM_KEYS)
            if missing:
                raise LedgerError(f"group {group['title']!r}: a claim lacks {', '.join(missing)}")
            if claim["verdict"] not in VERDICTS:
                raise LedgerError(f"claim {claim['id']}: verdict {claim['verdict']!r} is not "
                                  f"one of {', '.join(VERDICTS)}")
            labels = claim["evidence"]
            if not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels):
                raise LedgerError(f"claim {claim['id']}: 'evidence' must be a list of labels")
    for claim, line in zip((c for g in groups for c in g["claims"]), _claim_lines(text)):
        claim["_line"] = line
    return groups


def _claim_lines(text):
    """The line of each claim's mapping in the YAML text, in the order of the claims."""
    import yaml

    root = yaml.compose(text)
    for key, groups in root.value:
        if key.value == "groups":
            for group in groups.value:
                for gkey, claims in group.value:
                    if gkey.value == "claims":
                        yield from (claim.start_mark.line + 1 for claim in claims.value)


def _paragraph(text, *classes):
    return nodes.paragraph(text, text, classes=list(classes))


class chinese_paragraph(nodes.paragraph):
    """A paragraph in Chinese: HTML ``<p lang="zh">`` (fonts, screen readers).

    Not docutils' ``language-zh`` class, which would make SmartQuotes warn that it has no
    quotes for Chinese. Other builders write it as a paragraph (Sphinx visits by the MRO).
    """


def visit_chinese_paragraph_html(self, node):
    self.body.append(self.starttag(node, "p", "", lang="zh"))


def depart_chinese_paragraph_html(self, node):
    self.body.append("</p>\n")


class ClaimLedgerDirective(SphinxDirective):
    """``claim-ledger <file.yml>``: the ledger's sections, claim blocks and evidence links."""

    required_arguments = 1
    has_content = False

    def run(self):
        rel_path, path = self.env.relfn2path(self.arguments[0], self.env.docname)
        self.env.note_dependency(rel_path)          # an edit of the YAML rebuilds the page
        self.yaml_path = path
        try:
            groups = load_ledger(path)
        except (OSError, LedgerError) as err:
            raise self.error(f"claim-ledger: {path}: {err}") from None
        except Exception as err:                    # YAML syntax errors, reported the same way
            raise self.error(f"claim-ledger: {path}: {type(err).__name__}: {err}") from None

        claims = [c for g in groups for c in g["claims"]]
        counts = "; ".join(f"{v}: {sum(c['verdict'] == v for c in claims)}"
                           for v in VERDICTS if any(c["verdict"] == v for c in claims))
        out = [_paragraph(f"{len(claims)} claims. {counts}.", "claim-ledger-summary")]
        out += [self._section(group) for group in groups]
        return out

    def _section(self, group):
        title = group["title"] + (f" · {group['title_zh']}" if group.get("title_zh") else "")
        section = nodes.section(classes=["claim-ledger-group"])
        section["names"].append(nodes.fully_normalize_name(group["title"]))
        section += nodes.title(title, title)
        self.state.document.note_implicit_target(section, section)
        for claim in group["claims"]:
            section += self._claim(claim)
        return section

    def _claim(self, claim):
        zh_verdict, colour = VERDICTS[claim["verdict"]]
        block = nodes.container(classes=["claim-ledger-claim"], ids=[f"claim-{claim['id']}"])
        self.set_source_info(block)

        head = nodes.paragraph(classes=["claim-ledger-head"])
        head += nodes.strong(f"Claim {claim['id']}", f"Claim {claim['id']}")
        head += nodes.Text(" ")
        badge_text = f"{claim['verdict']} · {zh_verdict}"
        head += nodes.inline(badge_text, badge_text, classes=[
            "sd-sphinx-override", "sd-badge", f"sd-bg-{colour}", f"sd-bg-text-{colour}",
            "claim-ledger-verdict", "claim-ledger-verdict-" + claim["verdict"].replace(" ", "-")])
        block += head

        block += _paragraph(claim["en"].strip(), "claim-ledger-en")
        zh = claim["zh"].strip()
        block += chinese_paragraph(zh, zh, classes=["claim-ledger-zh"])
        reason = nodes.paragraph(classes=["claim-ledger-reason"])
        reason += nodes.emphasis("Why: ", "Why: ")
        reason += nodes.Text(claim["reason"].strip())
        block += reason

        evidence = nodes.paragraph(classes=["claim-ledger-evidence"])
        evidence += nodes.Text("Evidence: ")
        for i, label in enumerate(claim["evidence"]):
            if i:
                evidence += nodes.Text("; ")
            evidence += self._ref(label, claim.get("_line"))
        block += evidence
        return block

    def _ref(self, label, line):
        # EvidenceLinkText gives it the chapter and the section's own title as its text before
        # Sphinx resolves it; refwarn: a missing label warns even without -n
        ref = addnodes.pending_xref(
            "", nodes.inline(label, label, classes=["xref", "std", "std-ref"]),
            refdomain="std", reftype="ref", reftarget=label.lower(), refexplicit=True,
            refwarn=True, refdoc=self.env.docname, claim_ledger=True)
        self.set_source_info(ref)
        if line:                                    # a missing label is reported at its claim
            ref.source, ref.line = self.yaml_path, line
        return ref


#: TeX in section titles, as text: a link name is plain text (Sphinx keeps the title's TeX)
TEX_AS_TEXT = [(r"\hat x", "x̂"), (r"\mathbf 1", "1"), (r"\gamma", "γ"), (r"\beta", "β"),
               (r"\mu", "μ"), (r"\sigma", "σ"), (r"\epsilon", "ε"), (r"\ell", "ℓ"),
               (r"\infty", "∞")]


def plain_title(title):
    """A section title with its TeX commands as text: "Why \\gamma and \\beta" -> "Why γ and β"."""
    for tex, text in TEX_AS_TEXT:
        title = title.replace(tex, text)
    return re.sub(r"\\[A-Za-z]+\s*|[${}]", "", title)


class EvidenceLinkText(SphinxPostTransform):
    """Name each evidence link by its chapter and section: "ch06 · Exploding gradients ...".

    Runs just before Sphinx's reference resolver (priority 10), when every page's labels are
    known; the text comes from the target section, so it cannot drift from it. A label that
    no page defines is left alone, for the resolver to report.
    """

    default_priority = 9

    def run(self, **kwargs):
        labels = self.env.domaindata["std"]["labels"]
        for ref in self.document.findall(addnodes.pending_xref):
            if not ref.get("claim_ledger") or ref["reftarget"] not in labels:
                continue
            docname, _, section = labels[ref["reftarget"]]
            chapter = re.match(r"(?:.*/)?0*(\d+)_", docname)
            where = (f"ch{int(chapter.group(1)):02d}" if chapter
                     else clean_astext(self.env.titles[docname]))
            section = plain_title(section)
            text = f"{where} · {section}" if section and section != where else where
            ref.replace(ref[0], nodes.inline(text, text, classes=["xref", "std", "std-ref"]))


def write_stylesheet(app, exception):
    """Put the ledger's few style rules into the HTML output's _static folder."""
    if exception is None and app.builder.format == "html":
        static = Path(app.outdir) / "_static"
        static.mkdir(parents=True, exist_ok=True)
        (static / CSS_FILE).write_text(CSS, encoding="utf-8")


def setup(app):
    app.add_directive("claim-ledger", ClaimLedgerDirective)
    app.add_node(chinese_paragraph,
                 html=(visit_chinese_paragraph_html, depart_chinese_paragraph_html))
    app.add_post_transform(EvidenceLinkText)
    app.add_css_file(CSS_FILE)
    app.connect("build-finished", write_stylesheet)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
