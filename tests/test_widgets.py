"""Specification of bnref.widgets: frames, budget, static HTML view and live view."""

import base64
import json
import re

import pytest

pytest.importorskip("matplotlib")

from bnref.widgets import Slider, SliderFigure, slider_figure  # noqa: E402

PNG_MAGIC = b"\x89PNG"


def draw_line(fig, gamma, beta=0.0):
    ax = fig.subplots()
    ax.plot([0, 1], [beta, beta + gamma])
    ax.set_ylim(-3, 3)


def small(*sliders, **kw):
    kw.setdefault("figsize", (1.5, 1))
    kw.setdefault("dpi", 30)
    return slider_figure(draw_line, *sliders, **kw)


def frames_json(html):
    m = re.search(r'<script type="application/json" class="bnref-frames">(.*?)</script>', html)
    return json.loads(m.group(1))


def test_one_frame_per_stop_each_a_png():
    w = small(Slider("gamma", [0.5, 1.0, 2.0]))
    assert len(w.frames) == 3
    assert all(base64.b64decode(f).startswith(PNG_MAGIC) for f in w.frames)


def test_draw_receives_values_by_slider_name():
    seen = []
    slider_figure(lambda fig, gamma, beta: seen.append((gamma, beta)),
                  Slider("gamma", [1, 2]), Slider("beta", [-1, 0, 1]),
                  figsize=(1, 1), dpi=20)
    assert seen == [(1, -1), (1, 0), (1, 1), (2, -1), (2, 0), (2, 1)]


def test_frames_differ_between_stops():
    w = small(Slider("gamma", [0.5, 2.0]))
    assert w.frames[0] != w.frames[1]


def test_initial_value_selects_first_frame_shown():
    w = small(Slider("gamma", [0.5, 1.0, 2.0], value=2.0), Slider("beta", [0.0, 1.0], value=1.0))
    html = w.to_html()
    img_src = re.search(r'<img src="data:image/png;base64,([^"]+)"', html).group(1)
    assert img_src == w.frames[2 * 2 + 1]


def test_value_not_in_values_is_rejected():
    with pytest.raises(ValueError, match="not one of its values"):
        Slider("gamma", [0.5, 1.0], value=3.0)


def test_name_must_be_identifier():
    with pytest.raises(ValueError, match="identifier"):
        Slider("not a name", [1])


def test_empty_values_rejected():
    with pytest.raises(ValueError, match="empty"):
        Slider("gamma", [])


def test_two_sliders_with_one_name_rejected():
    with pytest.raises(ValueError, match="share the name"):
        small(Slider("gamma", [1]), Slider("gamma", [2]))


def test_non_slider_argument_rejected():
    with pytest.raises(TypeError, match="Slider"):
        slider_figure(draw_line, [1, 2, 3])


def test_frame_budget_thins_one_slider_keeping_ends_and_initial_value():
    values = list(range(100))
    w = slider_figure(lambda fig, step: None, Slider("step", values, value=37),
                      max_frames=12, figsize=(1, 1), dpi=20)
    kept = w.sliders[0].values
    assert len(w.frames) == len(kept) <= 12
    assert kept[0] == 0 and kept[-1] == 99 and 37 in kept
    assert kept == sorted(kept)


def test_frame_budget_applies_to_the_grid_of_two_sliders():
    w = slider_figure(lambda fig, a, b: None, Slider("a", range(10)), Slider("b", range(10)),
                      max_frames=30, figsize=(1, 1), dpi=20)
    sizes = [len(s.values) for s in w.sliders]
    assert sizes[0] * sizes[1] == len(w.frames) <= 30
    assert abs(sizes[0] - sizes[1]) <= 1


def test_static_view_has_a_labelled_range_input_per_slider():
    w = small(Slider("gamma", [0.5, 1.0, 2.0], value=1.0, label="γ"), Slider("beta", [0, 1]))
    html = w.to_html()
    inputs = re.findall(r'<input type="range" id="([^"]+)" min="0" max="(\d+)"', html)
    assert [m for _, m in inputs] == ["2", "1"]
    for sid, _ in inputs:
        assert f'<label for="{sid}"' in html  # labelled: screen readers announce the control
    assert 'value="1"' in html and 'aria-valuetext="1"' in html
    assert ">γ</label>" in html


def test_static_view_carries_every_frame_and_alt_text():
    w = small(Slider("gamma", [0.5, 1.0]), Slider("beta", [0, 1, 2]),
              alt=lambda gamma, beta: f"line with gamma={gamma}, beta={beta}")
    data = frames_json(w.to_html())
    assert data["frames"] == w.frames
    assert data["sizes"] == [2, 3]
    assert data["alts"][5] == "line with gamma=1.0, beta=2"
    assert data["texts"] == [["0.5", "1"], ["0", "1", "2"]]


def test_static_view_script_needs_no_network():
    html = small(Slider("gamma", [1, 2])).to_html()
    assert "http://" not in html and "https://" not in html
    assert "<script src" not in html


def test_each_widget_gets_its_own_id():
    a, b = small(Slider("gamma", [1, 2])), small(Slider("gamma", [1, 2]))
    assert a.uid != b.uid


def test_default_alt_text_lists_the_values():
    w = small(Slider("gamma", [0.25], label="γ"))
    assert w.alts == ["Figure with γ = 0.25"]


def test_mimebundle_has_static_html_png_and_text():
    w = small(Slider("gamma", [1, 2]))
    bundle = w._repr_mimebundle_()
    assert bundle["text/html"].startswith('<figure class="bnref-slider"')
    assert base64.b64decode(bundle["image/png"]).startswith(PNG_MAGIC)
    assert "SliderFigure" in bundle["text/plain"]


def test_live_widget_redraws_when_slider_moves():
    pytest.importorskip("ipywidgets")
    w = small(Slider("gamma", [0.5, 1.0, 2.0]))
    box = w.widget()
    slider, image = box.children
    assert image.value == base64.b64decode(w.frames[0])
    slider.value = 2
    assert image.value == base64.b64decode(w.frames[2])


def test_live_view_is_offered_to_jupyter_when_ipywidgets_is_installed():
    pytest.importorskip("ipywidgets")
    bundle = small(Slider("gamma", [1, 2]))._repr_mimebundle_()
    assert "model_id" in bundle["application/vnd.jupyter.widget-view+json"]


def test_slider_figure_returns_slider_figure():
    assert isinstance(small(Slider("gamma", [1])), SliderFigure)


def png_width(b64):
    # PNG header: width is the big-endian uint32 at bytes 16..20 of the IHDR chunk
    return int.from_bytes(base64.b64decode(b64)[16:20], "big")


def test_frames_have_twice_the_pixels_they_are_shown_at():
    w = small(Slider("gamma", [0.5, 1.0]), figsize=(2, 1), dpi=40)
    assert w.css_width == 80                              # 2 in x 40 CSS px per inch
    assert png_width(w.frames[0]) == 2 * w.css_width      # sharp on a 2x (HiDPI) screen
    assert 'style="width:80px;max-width:100%' in w.to_html()


def test_no_text_in_a_frame_is_drawn_below_ten_points():
    seen = []

    def draw(fig, gamma):
        import matplotlib as mpl
        ax = fig.subplots()
        seen.append(ax.set_title("t").get_fontsize())
        seen.append(mpl.rcParams["xtick.labelsize"])

    import matplotlib as mpl
    with mpl.rc_context({"font.size": 7, "xtick.labelsize": "small"}):
        slider_figure(draw, Slider("gamma", [1.0]), figsize=(1, 1), dpi=20)
    assert min(seen) >= 10
