"""Slider-driven matplotlib figures that work live *and* on a static web page.

A chapter calls :func:`slider_figure` with a ``draw(fig, **values)`` function and one or
two :class:`Slider` objects. The returned :class:`SliderFigure` is displayed by Jupyter
through ``_repr_mimebundle_`` and carries two views of the same figure:

* ``application/vnd.jupyter.widget-view+json``: real ipywidgets sliders that redraw the
  figure, for a reader with a live kernel (JupyterLab, Binder, Colab);
* ``text/html``: every frame drawn in advance (base64 PNG) and switched by a plain
  ``<input type="range">`` with a few lines of inline JavaScript, for the static book,
  which has no kernel. The book tells myst-nb to prefer this view for its HTML builders
  (``nb_mime_priority_overrides`` in ``_config.yml``).

matplotlib and ipywidgets are imported only when a figure is drawn or a live widget is
built, so ``import bnref`` never needs them.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import math
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ._optional import require

__all__ = ["Slider", "SliderFigure", "slider_figure"]


@dataclass
class Slider:
    """One slider: a name passed to ``draw`` and the values it steps through.

    Parameters
    ----------
    name : str
        Keyword under which the current value is passed to ``draw`` (a Python identifier).
    values : sequence
        The stops of the slider, in order. Numbers or strings; each stop is one frame.
    value : optional
        Initial stop; must be one of `values`. Defaults to the first value.
    label : str, optional
        Text shown beside the slider (defaults to `name`).
    fmt : callable, optional
        Turns a value into the text shown beside the slider (defaults to ``str`` with
        floats printed with up to 4 significant digits).

    Examples
    --------
    >>> s = Slider("gamma", values=[0.5, 1.0, 2.0], value=1.0, label="γ")
    >>> s.index
    1
    """

    name: str
    values: Sequence[Any]
    value: Any = None
    label: str | None = None
    fmt: Callable[[Any], str] | None = None
    index: int = field(init=False)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"Slider name must be a Python identifier, got {self.name!r}")
        self.values = list(self.values)
        if not self.values:
            raise ValueError(f"Slider {self.name!r}: values must not be empty")
        if self.value is None:
            self.value = self.values[0]
        self.index = _index_of(self.values, self.value, self.name)
        if self.label is None:
            self.label = self.name

    def text(self, value) -> str:
        """The text shown for one stop."""
        if self.fmt is not None:
            return self.fmt(value)
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    def thinned(self, n: int) -> "Slider":
        """A copy with at most `n` stops, evenly spaced, keeping both ends and the initial stop."""
        if n >= len(self.values):
            return self
        n = max(n, 1)
        last = len(self.values) - 1
        keep = {round(i * last / (n - 1)) for i in range(n)} if n > 1 else {self.index}
        # the initial stop must survive so the page opens on the frame the text describes
        if self.index not in keep:
            keep.remove(min(keep - {0, last} or keep, key=lambda i: abs(i - self.index)))
            keep.add(self.index)
        values = [self.values[i] for i in sorted(keep)]
        return Slider(self.name, values, self.value, self.label, self.fmt)


HIDPI = 2
"""Frames are drawn at this many device pixels per CSS pixel (sharp on HiDPI screens)."""
MIN_FONT_PT = 10
"""Smallest font size (points) in a frame: rcParams below it are raised to it."""
_FONT_KEYS = ("font.size", "axes.titlesize", "axes.labelsize", "xtick.labelsize",
              "ytick.labelsize", "legend.fontsize", "legend.title_fontsize",
              "figure.titlesize")


def _points(key: str):
    """The current rcParams font size of `key` in points (named sizes like "small" resolved);
    None where matplotlib leaves it unset (it then follows another key)."""
    from matplotlib import rcParams
    from matplotlib.font_manager import FontProperties

    value = rcParams[key]
    if value is None:
        return None
    if isinstance(value, str):
        return FontProperties(size=value).get_size_in_points()
    return float(value)


def _small_png(png: bytes) -> bytes:
    """Re-encode a matplotlib PNG with a 256-colour palette: about 2-3x smaller pages.

    Plots use few colours, so the palette is visually lossless; every frame of every slider
    is embedded in the page, so this is what keeps chapters light. Pillow comes with
    matplotlib; without it the PNG is kept as drawn.
    """
    try:
        from PIL import Image
    except ImportError:
        return png
    out = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=256).save(
        out, format="png", optimize=True)
    return out.getvalue() if out.tell() < len(png) else png


def _index_of(values, value, name) -> int:
    for i, v in enumerate(values):
        # numbers compare by value so that value=1 finds 1.0
        if v is value or v == value:
            return i
    raise ValueError(f"Slider {name!r}: value {value!r} is not one of its values {values!r}")


def _fit_budget(sliders: list[Slider], max_frames: int) -> list[Slider]:
    """Thin the sliders until the number of frames (product of stops) fits `max_frames`."""
    counts = [len(s.values) for s in sliders]
    while math.prod(counts) > max_frames:
        # shrink the slider with the most stops: keeps a 2-D grid roughly balanced
        j = max(range(len(counts)), key=lambda k: counts[k])
        if counts[j] == 1:
            break
        counts[j] -= 1
    return [s.thinned(c) for s, c in zip(sliders, counts)]


class SliderFigure:
    """A figure with one or two sliders; build it with :func:`slider_figure`.

    Attributes
    ----------
    sliders : list of Slider
        The sliders after fitting the frame budget.
    frames : list of str
        Base64 PNG of every frame, row-major over the sliders (last slider fastest), drawn at
        ``HIDPI`` times ``dpi`` and shown ``css_width`` CSS pixels wide.
    css_width : int
        Displayed width in CSS pixels (``figsize[0] * dpi``; at most the column's width).
    alts : list of str
        Alt text of every frame, in the same order.
    """

    def __init__(self, draw, sliders, alt=None, figsize=(6, 3.5), dpi=80, caption=None):
        self.draw = draw
        self.sliders = sliders
        self.alt = alt
        self.figsize = figsize
        self.dpi = dpi
        # displayed width: figsize inches at `dpi` CSS pixels each (the bitmap has HIDPI x more)
        self.css_width = round(figsize[0] * dpi)
        self.caption = caption
        self.uid = "bnref-slider-" + uuid.uuid4().hex[:10]
        self._cache: dict[tuple, str] = {}
        combos = list(itertools.product(*(range(len(s.values)) for s in sliders)))
        self.frames = [self._frame(c) for c in combos]
        self.alts = [self._alt(c) for c in combos]

    # -- drawing ---------------------------------------------------------------------------
    def _values(self, combo) -> dict:
        return {s.name: s.values[i] for s, i in zip(self.sliders, combo)}

    def _frame(self, combo) -> str:
        """Base64 PNG of one frame (cached: the live widget reuses the static frames)."""
        if combo not in self._cache:
            # lazy: bnref must import without matplotlib
            Figure = require("matplotlib.figure", "drawing a bnref.widgets figure").Figure

            # a bare Figure, not pyplot: no global state, no backend, nothing left open
            rc_context = require("matplotlib", "drawing a bnref.widgets figure").rc_context

            # Text never below MIN_FONT_PT, whatever the chapter's rcParams say.
            sizes = {k: max(_points(k), MIN_FONT_PT) for k in _FONT_KEYS
                     if _points(k) is not None}
            with rc_context(sizes):
                fig = Figure(figsize=self.figsize, dpi=self.dpi, layout="constrained")
                self.draw(fig, **self._values(combo))
                buf = io.BytesIO()
                # HIDPI times the pixels of the displayed size, so frames are sharp on HiDPI
                # screens (the <img> is shown at figsize * dpi CSS pixels).
                fig.savefig(buf, format="png", dpi=self.dpi * HIDPI)
            self._cache[combo] = base64.b64encode(_small_png(buf.getvalue())).decode("ascii")
        return self._cache[combo]

    def _alt(self, combo) -> str:
        values = self._values(combo)
        if self.alt is not None:
            return str(self.alt(**values))
        return "Figure with " + ", ".join(
            f"{s.label} = {s.text(values[s.name])}" for s in self.sliders
        )

    def _initial(self) -> int:
        """Flat index of the frame shown first."""
        index = 0
        for s in self.sliders:
            index = index * len(s.values) + s.index
        return index

    # -- static view -----------------------------------------------------------------------
    def to_html(self) -> str:
        """The static view: all frames, range inputs and a small inline script."""
        first = self._initial()
        esc = html.escape
        controls = []
        for j, s in enumerate(self.sliders):
            sid = f"{self.uid}-{j}"
            controls.append(
                f'<div style="display:flex;align-items:center;gap:0.6em;margin:0.2em 0">'
                f'<label for="{sid}" style="min-width:6em">{esc(s.label)}</label>'
                f'<input type="range" id="{sid}" min="0" max="{len(s.values) - 1}" step="1" '
                f'value="{s.index}" aria-valuetext="{esc(s.text(s.value))}" '
                f'style="flex:1;max-width:22em">'
                f'<output for="{sid}" id="{sid}-v" style="min-width:4em">'
                f"{esc(s.text(s.value))}</output></div>"
            )
        data = {
            "frames": self.frames,
            "alts": self.alts,
            "sizes": [len(s.values) for s in self.sliders],
            "texts": [[s.text(v) for v in s.values] for s in self.sliders],
        }
        caption = f"<figcaption>{esc(self.caption)}</figcaption>" if self.caption else ""
        # The script finds its own figure by id, so several widgets can share a page; the
        # frame index is row-major over the sliders, the order frames were drawn in.
        script = (
            "(function(){var root=document.getElementById('%s');"
            "var d=JSON.parse(root.querySelector('script.bnref-frames').textContent);"
            "var img=root.querySelector('img');"
            "var ins=root.querySelectorAll('input[type=range]');"
            "function show(){var k=0;ins.forEach(function(el,j){"
            "var i=Number(el.value);k=k*d.sizes[j]+i;var t=d.texts[j][i];"
            "el.setAttribute('aria-valuetext',t);"
            "document.getElementById(el.id+'-v').textContent=t;});"
            "img.src='data:image/png;base64,'+d.frames[k];img.alt=d.alts[k];}"
            "ins.forEach(function(el){el.addEventListener('input',show);"
            "el.addEventListener('change',show);});})();" % self.uid
        )
        return (
            f'<figure class="bnref-slider" id="{self.uid}" style="margin:1em 0">'
            f'<img src="data:image/png;base64,{self.frames[first]}" '
            f'alt="{esc(self.alts[first])}" '
            f'style="width:{self.css_width}px;max-width:100%;height:auto">'
            f'<div class="bnref-slider-controls">{"".join(controls)}</div>{caption}'
            f'<script type="application/json" class="bnref-frames">{json.dumps(data)}</script>'
            f"<script>{script}</script></figure>"
        )

    # -- live view -------------------------------------------------------------------------
    def widget(self):
        """The live view: ipywidgets sliders above an image that is redrawn on change."""
        ipywidgets = require("ipywidgets", "the live view of a bnref.widgets figure")  # lazy: kernels only

        image = ipywidgets.Image(
            value=base64.b64decode(self.frames[self._initial()]), format="png",
            width=str(self.css_width),     # CSS pixels: the bitmap has HIDPI x as many
        )
        controls = [
            ipywidgets.SelectionSlider(
                options=[(s.text(v), i) for i, v in enumerate(s.values)],
                value=s.index,
                description=s.label,
                continuous_update=True,
                style={"description_width": "initial"},
                layout=ipywidgets.Layout(width="28em"),
            )
            for s in self.sliders
        ]

        def redraw(_change=None):
            combo = tuple(c.value for c in controls)
            image.value = base64.b64decode(self._frame(combo))

        for c in controls:
            c.observe(redraw, names="value")
        return ipywidgets.VBox([*controls, image])

    def _repr_mimebundle_(self, include=None, exclude=None):
        bundle = {
            "text/plain": repr(self),
            "text/html": self.to_html(),
            # for builders that cannot show HTML (LaTeX/PDF): the initial frame
            "image/png": self.frames[self._initial()],
        }
        try:
            view = self.widget()._repr_mimebundle_()
        except ImportError:  # no ipywidgets: the static view still works
            view = None
        if view and "application/vnd.jupyter.widget-view+json" in view:
            key = "application/vnd.jupyter.widget-view+json"
            bundle[key] = view[key]
        return bundle

    def __repr__(self):
        stops = " x ".join(f"{s.name}[{len(s.values)}]" for s in self.sliders)
        return f"<SliderFigure {stops}: {len(self.frames)} frames>"


def slider_figure(
    draw: Callable[..., None],
    slider: Slider,
    slider2: Slider | None = None,
    *,
    alt: Callable[..., str] | None = None,
    figsize: tuple[float, float] = (6, 3.5),
    dpi: int = 80,
    max_frames: int = 60,
    caption: str | None = None,
) -> SliderFigure:
    """Draw a figure at every slider stop; show it with live and static sliders.

    Parameters
    ----------
    draw : callable
        ``draw(fig, **values)`` draws into a fresh ``matplotlib.figure.Figure``
        (constrained layout) for one combination of slider values, passed by slider name.
    slider, slider2 : Slider
        One slider, or two for a grid of frames (every combination is drawn).
    alt : callable, optional
        ``alt(**values) -> str``: the alt text of each frame, read by screen readers.
        Defaults to a list of the slider values.
    figsize : (float, float)
        Figure size in inches.
    dpi : int
        Resolution of the frames; with `figsize` and `max_frames` it sets the page weight.
    max_frames : int
        Frame budget. Sliders with more stops are thinned evenly (ends and the initial
        stop kept) until the number of frames fits.
    caption : str, optional
        Caption shown under the static view.

    Returns
    -------
    SliderFigure
        Display it (last expression of a cell). In a live kernel it shows ipywidgets
        sliders; its ``text/html`` view works with no kernel.

    Examples
    --------
    >>> import numpy as np
    >>> def draw(fig, gamma):
    ...     ax = fig.subplots()
    ...     ax.plot(np.linspace(-1, 1, 5) * gamma)
    >>> w = slider_figure(draw, Slider("gamma", values=[0.5, 1.0, 2.0], value=1.0),
    ...                   figsize=(2, 1.5), dpi=40)
    >>> len(w.frames)
    3
    >>> w.to_html().count('type="range"')
    1
    """
    sliders = [slider] if slider2 is None else [slider, slider2]
    for s in sliders:
        if not isinstance(s, Slider):
            raise TypeError(f"slider_figure expects Slider objects, got {type(s).__name__}")
    if slider2 is not None and slider2.name == slider.name:
        raise ValueError(f"the two sliders share the name {slider.name!r}")
    if not isinstance(max_frames, int) or max_frames < 1:
        raise ValueError(f"max_frames must be a positive integer, got {max_frames!r}")
    sliders = _fit_budget(sliders, max_frames)
    return SliderFigure(draw, sliders, alt=alt, figsize=figsize, dpi=dpi, caption=caption)
