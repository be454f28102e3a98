"""The demo's HTML report (`runs/demo/index.html`): sections of captioned figures, written whole or not at all.

Every figure sits in a `<figure>` with a `<figcaption>` saying what it shows and what to look for. Plotly figures
are embedded without their mode bar (it would cover their titles; drag still rotates and zooms), plotly.js once in
the page, so the file opens anywhere without a network; images are embedded as PNG data URIs.
"""

from __future__ import annotations

import base64
import html
import io
import os

import numpy as np

from .outputs import write_atomic

__all__ = ["Report", "PAGE_TITLE", "png_data_uri"]

PAGE_TITLE = "<title>sheap_lite demo</title>"  # demo.check_out_dir recognises a demo folder by it

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1250px; margin: 1em auto; padding: 0 1em; color: #222; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
figure { margin: 1.2em 0; }
figcaption { color: #444; font-size: .95em; max-width: 1000px; margin-top: .4em; line-height: 1.4; }
figcaption b { color: #222; }
table { border-collapse: collapse; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; }
th { background: #f3f3f3; }
.images { display: flex; flex-wrap: wrap; gap: 12px; }
.images div { text-align: center; font-size: .85em; color: #555; }
.images img { image-rendering: pixelated; display: block; }
.note { background: #fff8e0; border-left: 4px solid #e0b000; padding: .5em 1em; }
"""


def png_data_uri(image) -> str:
    """A PIL image, or an (H,W,3) uint8 array, as a `data:image/png;base64,...` URI."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image, np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


class Report:
    """A page built section by section: `section`, then `plot` / `images` / `table` / `note` under it; `write`."""

    def __init__(self, heading: str, intro: str) -> None:
        self.heading, self.intro, self.parts, self._plotly_js = heading, intro, [], True

    def section(self, title: str, text: str = "") -> None:
        """A new section: a heading and an optional paragraph (HTML)."""
        self.parts.append(f"<h2>{html.escape(title)}</h2>" + (f"<p>{text}</p>" if text else ""))

    def _figure(self, body: str, caption: str) -> None:
        self.parts.append(f"<figure>{body}<figcaption>{caption}</figcaption></figure>")

    def plot(self, fig, caption: str) -> None:
        """A plotly figure without its mode bar; caption: HTML (what it shows, what to look for)."""
        body = fig.to_html(full_html=False, include_plotlyjs=self._plotly_js, config={"displayModeBar": False})
        self._plotly_js = False
        self._figure(body, caption)

    def images(self, images: list[tuple[object, str]], caption: str, width: int = 256) -> None:
        """A row of (image (PIL or (H,W,3) uint8), label) shown `width` px wide, pixels kept sharp."""
        cells = "".join(f"<div><img src='{png_data_uri(image)}' alt='{html.escape(label)}' width='{width}' "
                        f"height='{width}'>{html.escape(label)}</div>" for image, label in images)
        self._figure(f"<div class='images'>{cells}</div>", caption)

    def table(self, markdown_text: str, caption: str) -> None:
        """A markdown table (e.g. `evaluate.markdown_table`) rendered as HTML."""
        import markdown  # Python-Markdown, a dependency of tensorboard (pinned in requirements.txt)

        self._figure(markdown.markdown(markdown_text, extensions=["tables"]), caption)

    def note(self, text: str) -> None:
        """A highlighted paragraph (HTML), e.g. why a stage was skipped."""
        self.parts.append(f"<p class='note'>{text}</p>")

    def html(self, seconds: dict[str, float]) -> str:
        """The page; `seconds`: {stage: seconds it took}, shown as a table under the introduction."""
        rows = "".join(f"<tr><td>{html.escape(name)}</td><td>{s:.1f}</td></tr>" for name, s in seconds.items())
        total = f"<tr><th>total</th><th>{sum(seconds.values()):.1f}</th></tr>"
        timing = f"<table><tr><th>stage</th><th>seconds</th></tr>{rows}{total}</table>"
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'>{PAGE_TITLE}<style>{_STYLE}</style></head><body>"
                f"<h1>{html.escape(self.heading)}</h1><p>{self.intro}</p>{timing}{''.join(self.parts)}</body></html>")

    def write(self, path: str | os.PathLike, seconds: dict[str, float]):
        """Write the page atomically (`outputs.write_atomic`); returns the path."""
        return write_atomic(path, self.html(seconds))
