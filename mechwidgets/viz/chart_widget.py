"""ChartView: an altair chart as an interactive, offline anywidget with an image fallback.

The view draws the chart's Vega-Lite spec with vega-embed, bundled with vega and
vega-lite into ``static/chart.js`` by ``js/build.mjs`` (no CDN, so it works offline):
hover tooltips, the export menu (PNG, SVG) and the notebook theme's colours. Where no
widget can run (an untrusted notebook, ``nbconvert --to html``, GitHub's viewer) the
output's ``image/png`` fallback shows instead: rendered by vl-convert, which draws text
with the fonts it measured it with, so no label is clipped (its SVG would be drawn with
the browser's fonts and clip).

>>> ChartView(res.chart())        # what a result's rich display shows
>>> ChartView(res.charts()["cka_resid"], title="CKA, residual stream")
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import anywidget
import traitlets
import vl_convert

from mechwidgets.extract.cache import CHARTS, cache_dir
from mechwidgets.viz.charts import ChartError

STATIC = Path(__file__).parent / "static"
#: pixels per CSS pixel of the PNG fallback: sharp on high-density screens
PNG_SCALE = 2
#: charts larger than this many CSS pixels fall back at 1x, to keep stored notebooks small
#: (vl-convert 1.9): a 887 x 247 layer-curve chart is 81 kB at 1x and 185 kB at 2x, a
#: 1030 x 540 grid of attention heatmaps 0.34 MB at 1x and 0.86 MB at 2x
PNG_MAX_SHARP = 100_000
#: top-level keys of a Vega-Lite view: a mark, a layer, a facet, or a composition
VIEW_KEYS = frozenset({"mark", "layer", "facet", "spec", "hconcat", "vconcat", "concat", "repeat"})


class ChartView(anywidget.AnyWidget):
    """An interactive chart, drawn in the browser from a Vega-Lite spec.

    Parameters
    ----------
    chart : an altair chart, or a Vega-Lite spec as a dict.
    title : what the plain-text repr calls the chart; default the spec's own title.
    """

    _esm = STATIC / "chart.js"

    #: the Vega-Lite spec, data inlined
    spec = traitlets.Dict().tag(sync=True)

    def __init__(self, chart: Any, title: str | None = None, **kwargs: Any) -> None:
        spec = chart.to_dict() if callable(getattr(chart, "to_dict", None)) else chart
        if not isinstance(spec, dict) or not (VIEW_KEYS & set(spec)):
            raise ChartError(
                f"ChartView needs an altair chart or a Vega-Lite spec dict, got "
                f"{type(chart).__name__}; pass e.g. res.chart()"
            )
        self._title = title or _spec_title(spec)
        super().__init__(spec=spec, **kwargs)

    def __repr__(self) -> str:
        return f"ChartView({self._title!r})"

    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        return with_png_fallback(super()._repr_mimebundle_(**kwargs), self.spec, repr(self))


def with_png_fallback(
    bundle: Any, spec: dict[str, Any], text: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A widget's mimebundle plus the chart ``spec`` as ``image/png`` and ``text`` as plain.

    Frontends without the widget (untrusted notebooks, nbconvert, GitHub) show the PNG.
    """
    data = bundle[0] if isinstance(bundle, tuple) else (bundle or {})  # anywidget: (data, meta)
    png, width, height = fallback_png(spec)
    data = {**data, "text/plain": text, "image/png": base64.b64encode(png).decode("ascii")}
    return data, {"image/png": {"width": width, "height": height}}


def fallback_png(spec: dict[str, Any]) -> tuple[bytes, int, int]:
    """The chart's PNG (at ``PNG_SCALE`` when small) and its size in CSS pixels.

    Kept in the cache folder (``charts/``) by the spec and the vl-convert version: the
    first PNG of a process costs ~0.45 s of CPU to start vl-convert's JavaScript engine,
    and a notebook re-run in a fresh kernel (the cube cached, so the same numbers) draws
    the same charts again. A read-only cache folder only costs the drawing.
    """
    version = vl_convert.__version__  # type: ignore[attr-defined]  # the stub omits it
    text = json.dumps([spec, version, PNG_SCALE, PNG_MAX_SHARP], sort_keys=True, default=str)
    name = hashlib.sha256(text.encode()).hexdigest()[:24]
    folder = cache_dir() / CHARTS
    for scale in (PNG_SCALE, 1):
        with contextlib.suppress(OSError):
            png = (folder / f"{name}-{scale}x.png").read_bytes()
            width, height = _png_size(png)
            return png, width // scale, height // scale
    png = vl_convert.vegalite_to_png(spec, scale=1)
    width, height = _png_size(png)
    scale = PNG_SCALE if width * height <= PNG_MAX_SHARP else 1
    if scale != 1:
        png = vl_convert.vegalite_to_png(spec, scale=scale)
    with contextlib.suppress(OSError):
        folder.mkdir(parents=True, exist_ok=True)
        part = folder / f"{name}-{scale}x.png.{os.getpid()}.part"
        part.write_bytes(png)
        part.replace(folder / f"{name}-{scale}x.png")  # atomic: never half a file
    return png, width, height


def _spec_title(spec: dict[str, Any]) -> str:
    """A spec's title text (a string, a list of lines or ``{"text": ...}``), or "chart"."""
    title = spec.get("title")
    if isinstance(title, dict):
        title = title.get("text")
    if isinstance(title, list):
        title = " ".join(str(t) for t in title)
    return str(title) if title else "chart"


def _png_size(png: bytes) -> tuple[int, int]:
    """Width and height in pixels from a PNG's IHDR chunk."""
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
