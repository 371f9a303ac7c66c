"""The built book in a real browser: every page of the toc opened in headless Chromium.

For each page: no console errors, no request to any host but the local server, math rendered
by the vendored MathJax, no ipywidgets html manager (require.js / embed-amd) on the page, and
every slider figure moves when its slider is moved by keyboard or by setting its value.
A full-page screenshot of every page goes to ``_build/screenshots/``.

Needs ``_build/html`` (``make book`` builds it first). With ``BOOK_OPTIONAL=1`` a missing
build is a skip; otherwise it is a failure. Uses Playwright for Python with the machine's
Chromium or Chrome (``tools/find_chromium.sh``: ``$CHROMIUM``, the usual names, the macOS
applications; never a downloaded browser). Where there is none and no apt to install one,
the test skips and says so; on a machine with apt a missing browser is a failure.
"""

import functools
import http.server
import shutil
import subprocess
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
def find_chromium():
    res = subprocess.run([str(ROOT / "tools" / "find_chromium.sh")], capture_output=True, text=True)
    return res.stdout.strip() if res.returncode == 0 else ""


CHROMIUM = find_chromium()
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
CHAPTER_PREFIX = "book/0"          # book/01_... to book/07_...: each must have a moving widget
MAX_PAGE_BYTES = 3_000_000         # every widget frame is inlined: keep pages light to load

pytestmark = [pytest.mark.slow, pytest.mark.book]


def toc_pages():
    """Every page listed in _toc.yml, as paths of .html files relative to the site root."""
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [entry["file"] for entry in part.get("chapters", [])]
    return [f"{f}.html" for f in files]


PAGES = toc_pages()


@pytest.fixture(scope="module")
def server(site):
    """Serve the built site on 127.0.0.1 on a free port, for this module only."""

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):       # keep pytest output readable
            pass

    handler = functools.partial(QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM:
        message = ("no Chromium or Chrome on this machine (set CHROMIUM=/path/to/it; Debian: apt-get "
                   "install chromium; macOS: brew install --cask chromium)")
        if shutil.which("apt-get"):
            pytest.fail(message)           # `make test` installs it where apt exists
        pytest.skip(message)
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def open_page(browser, url):
    """Open `url`; return (page, problems) where problems collects errors and foreign requests."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    problems = {"console": [], "foreign": []}

    def route(r):
        # Anything not served by our server is recorded and blocked, so the test is offline.
        url_ = r.request.url
        if url_.startswith(("data:", "blob:", "about:")) or urlsplit(url_).hostname == "127.0.0.1":
            r.continue_()
        else:
            problems["foreign"].append(url_)
            r.abort()

    context.route("**/*", route)
    page.on("console", lambda m: m.type == "error" and problems["console"].append(m.text))
    page.on("pageerror", lambda e: problems["console"].append(f"uncaught: {e}"))
    page.goto(url, wait_until="load")
    page.wait_for_load_state("networkidle")
    return page, problems


def has_math(page):
    return page.evaluate("document.querySelectorAll('.math, div.math, span.math').length") > 0


def check_slider(page, figure, index):
    """Move each slider of one figure two ways; the shown frame must change each time."""
    img = figure.locator("img").first
    sliders = figure.locator('input[type="range"]')
    assert sliders.count() >= 1, f"widget {index} has no range input"
    for k in range(sliders.count()):
        s = sliders.nth(k)
        label = figure.locator(f'label[for="{s.get_attribute("id")}"]')
        assert label.count() == 1 and label.inner_text().strip(), "slider without a label"
        lo, hi = int(s.get_attribute("min")), int(s.get_attribute("max"))
        if hi == lo:
            continue                               # a one-stop slider cannot move
        # 1. keyboard: focus the slider and press an arrow key
        before, value = img.get_attribute("src"), int(s.input_value())
        s.focus()
        page.keyboard.press("ArrowRight" if value < hi else "ArrowLeft")
        assert int(s.input_value()) != value, f"widget {index} slider {k}: arrow key did nothing"
        assert img.get_attribute("src") != before, f"widget {index} slider {k}: frame unchanged (key)"
        assert img.get_attribute("alt"), f"widget {index}: frame without alt text"
        # 2. set the value directly and fire the input event, as a pointer drag does
        before, value = img.get_attribute("src"), int(s.input_value())
        target = lo if value != lo else hi
        s.evaluate("(el, v) => { el.value = v; el.dispatchEvent(new Event('input', {bubbles: true})); }",
                   str(target))
        assert img.get_attribute("src") != before, f"widget {index} slider {k}: frame unchanged (input)"
        shown = figure.locator(f'output[for="{s.get_attribute("id")}"]').inner_text()
        assert shown.strip(), f"widget {index} slider {k}: value display empty"


@pytest.mark.parametrize("path", PAGES)
def test_page_renders_offline_with_math_and_moving_widgets(browser, server, path):
    assert (SITE / path).exists(), f"{path} is in _toc.yml but was not built"
    size = (SITE / path).stat().st_size
    assert size < MAX_PAGE_BYTES, f"{path} is {size / 1e6:.1f} MB: fewer or smaller frames"
    page, problems = open_page(browser, f"{server}/{path}")
    try:
        if has_math(page):
            page.wait_for_selector("mjx-container", state="attached", timeout=20_000)
            assert page.locator("mjx-merror").count() == 0, "MathJax reported a TeX error"
        # The ipywidgets html manager would come from a CDN and is not needed: never load it.
        loaders = page.evaluate(
            "[...document.scripts].map(s => s.src).filter(s => /require|embed-amd|html-manager/.test(s))")
        assert loaders == [], f"widget manager scripts loaded: {loaders}"
        # Screenshot first, as a reader sees the page: from the top, nothing focused.
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / (path.replace("/", "__")[:-5] + ".png")), full_page=True)
        figures = page.locator("figure.bnref-slider")
        for i in range(figures.count()):
            check_slider(page, figures.nth(i), i)
        if path.startswith(CHAPTER_PREFIX):
            assert figures.count() >= 1, f"chapter {path} has no slider figure"
        page.wait_for_load_state("networkidle")
        assert problems["foreign"] == [], f"requests to other hosts: {problems['foreign']}"
        assert problems["console"] == [], f"console errors: {problems['console']}"
    finally:
        page.context.close()


# -- Legibility: measured in the browser at a laptop's and a phone's width -------------------
# An element may be wider than its column only inside a box that scrolls sideways by design
# (code blocks, long equations, wide tables); nothing may widen the page itself.
LEGIBILITY_JS = """
() => {
  const art = document.querySelector('article.bd-article');
  const col = art.getBoundingClientRect();
  const scrolls = el => {
    for (let e = el.parentElement; e && e !== art; e = e.parentElement) {
      const o = getComputedStyle(e).overflowX;
      if (o === 'auto' || o === 'scroll') return true;
    }
    return false;
  };
  const wide = [];
  // MathJax's assistive MathML is clipped to nothing: screen readers read it, no one sees it
  for (const el of art.querySelectorAll('*:not(mjx-assistive-mml):not(mjx-assistive-mml *)')) {
    const r = el.getBoundingClientRect();
    if (r.width > 0 && r.right > col.right + 1 && !scrolls(el)) {
      wide.push(`<${el.tagName.toLowerCase()} class="${el.className}"> ends at ${Math.round(r.right)} px, ` +
                `column at ${Math.round(col.right)} px: ${(el.textContent || '').trim().slice(0, 60)}`);
    }
  }
  // drawn: the CSS width a figure was made for (its 10 pt text is 10 pt there)
  const figures = [...art.querySelectorAll('img')].map(img => ({
    shown: img.getBoundingClientRect().width, bitmap: img.naturalWidth, alt: img.alt || '',
    drawn: parseFloat(img.style.width || img.getAttribute('width') || '0'),
    hinted: !!img.closest('.bnref-scrolls'),
    box: (img.closest('div.cell_output, figure.bnref-slider') || art).clientWidth}));
  // printed outputs: tables (lines with columns) keep them and scroll, the rest wrap on a phone
  const outputs = [...art.querySelectorAll('div.cell_output pre')].map(pre => {
    const hinted = pre.classList.contains('bnref-scrolls');
    pre.classList.remove('bnref-scrolls');           // the text's own width, without the hint line
    const overflows = pre.scrollWidth > pre.clientWidth + 1;
    pre.classList.toggle('bnref-scrolls', hinted);
    return {table: pre.classList.contains('bnref-table-output'), hinted, overflows,
            text: pre.textContent.trim().slice(0, 60)};
  });
  return {pageWidth: document.documentElement.scrollWidth, screen: window.innerWidth, column: col.width,
          wide: wide.slice(0, 10), figures, outputs};
}
"""
MIN_BITMAP_RATIO = 1.5             # bitmap pixels per displayed CSS pixel: sharp on HiDPI
MIN_SHOWN_RATIO = 0.95             # a figure shrunk below this makes its 10 pt labels smaller


def test_printed_tables_keep_their_columns_on_a_phone(browser, server):
    # chapter 6's landscape table: wrapping would put each row's numbers under the wrong heading
    context = browser.new_context(viewport={"width": 390, "height": 900})
    page = context.new_page()
    try:
        page.goto(f"{server}/book/06_what_bn_does.html", wait_until="load")
        page.wait_for_load_state("networkidle")
        pre = page.locator("div.cell_output pre", has_text="beta-smoothness").first
        assert "bnref-table-output" in pre.get_attribute("class")
        assert pre.evaluate("p => getComputedStyle(p).whiteSpace") == "pre"
        hint = pre.evaluate("p => getComputedStyle(p, '::after').content")
        assert "Swipe sideways" in hint
    finally:
        context.close()


@pytest.mark.parametrize("width", [1280, 390])
@pytest.mark.parametrize("path", PAGES)
def test_page_fits_its_screen_with_sharp_described_figures(browser, server, path, width):
    context = browser.new_context(viewport={"width": width, "height": 900})
    page = context.new_page()
    try:
        page.goto(f"{server}/{path}", wait_until="load")
        page.wait_for_load_state("networkidle")
        if has_math(page):
            page.wait_for_selector("mjx-container", state="attached", timeout=20_000)
        page.wait_for_timeout(300)                     # MathJax lays out after it attaches
        m = page.evaluate(LEGIBILITY_JS)
        assert m["pageWidth"] <= m["screen"], f"{path} at {width} px is {m['pageWidth']} px wide"
        assert m["wide"] == [], f"{path} at {width} px: wider than the column: {m['wide']}"
        for out in m["outputs"]:
            if width < 600:                            # a phone: prose printouts wrap
                assert out["table"] or not out["overflows"], (
                    f"{path} at {width} px: a printout runs past its box instead of wrapping: {out['text']!r}")
            assert out["hinted"] == out["overflows"], (
                f"{path} at {width} px: a printout that {'scrolls' if out['overflows'] else 'fits'} "
                f"{'lacks' if out['overflows'] else 'has'} the 'swipe sideways' hint: {out['text']!r}")
        for fig in m["figures"]:
            if fig["shown"] < 40:                      # icons and logos
                continue
            assert fig["bitmap"] >= MIN_BITMAP_RATIO * fig["shown"], (
                f"{path} at {width} px: a {fig['bitmap']} px bitmap shown {fig['shown']:.0f} px "
                f"wide is blurry on a HiDPI screen: {fig['alt'][:60]}")
            if width >= 1280:                          # a laptop shows every figure whole
                assert fig["shown"] <= m["column"] + 1, (
                    f"{path}: a figure {fig['shown']:.0f} px wide does not fit the "
                    f"{m['column']:.0f} px column at {width} px: {fig['alt'][:60]}")
            # on a phone a figure scrolls sideways in its own box rather than shrink its text,
            # and a line under the box says so (phones hide scrollbars)
            assert fig["hinted"] == (fig["shown"] > fig["box"] + 1), (
                f"{path} at {width} px: a figure {fig['shown']:.0f} px wide in a {fig['box']:.0f} px "
                f"box {'lacks' if not fig['hinted'] else 'has'} the 'swipe sideways' hint: {fig['alt'][:60]}")
            assert fig["shown"] >= MIN_SHOWN_RATIO * fig["drawn"], (
                f"{path} at {width} px: a figure drawn {fig['drawn']:.0f} px wide is shown "
                f"{fig['shown']:.0f} px wide, its labels shrunk: {fig['alt'][:60]}")
            alt = fig["alt"].strip()
            assert alt and " " in alt and not alt.startswith(("_build", "/", "..")), (
                f"{path}: a figure whose alt text does not say what it shows: {alt!r}")
    finally:
        context.close()
