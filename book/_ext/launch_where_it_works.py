"""Sphinx extension: offer a launch button only where it opens the page.

Colab opens ``.ipynb`` files from GitHub and nothing else. The chapters are MyST Markdown
notebooks (``book/0*.md``, paired by jupytext), which Binder and the JupyterHub open as
notebooks but Colab cannot, so sphinx-book-theme's Colab link on them would fail. This
removes the Colab button from every page whose source is not an ``.ipynb`` (the exercise
pages keep it; their first cell installs bnref on Colab).
"""


def remove_colab_from_markdown_pages(app, pagename, templatename, context, doctree):
    if context.get("page_source_suffix") == ".ipynb":
        return
    for button in context.get("header_buttons", []):
        if button.get("label") == "launch-buttons":
            button["buttons"] = [b for b in button["buttons"] if b.get("text") != "Colab"]


def setup(app):
    # after sphinx-book-theme's add_launch_buttons (priority 501) has built the buttons
    app.connect("html-page-context", remove_colab_from_markdown_pages, priority=502)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
