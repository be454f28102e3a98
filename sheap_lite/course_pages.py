"""The course as static pages, readable without a kernel (`make docs`, `make heroes`).

    python -m sheap_lite.course_pages finish docs/course          # after nbconvert: pages readable offline
    python -m sheap_lite.course_pages heroes docs/course docs/img  # one PNG per executed notebook, for the README

`finish` copies MathJax 3 beside the pages (docs/course/mathjax/tex-svg.js, from the `django-static-mathjax`
package: MathJax's own files, no Django needed) for the template docs/course_template/course.html.j2, which loads
it from there, and removes the MathJax script tags that plotly's notebook renderer puts after every figure (a
CDN address; a second MathJax). Without the package the pages fall back to a CDN MathJax, and it says so.

`heroes` exports one key figure of each executed notebook (the first plotly output of the cell named in `HEROES`)
to docs/img/NN.png with plotly's static export (kaleido, which drives a Chromium installed on the machine:
`pip install kaleido`, `apt-get install chromium`), quantised to 256 colours to stay under `MAX_HERO_BYTES`.
"""

from __future__ import annotations

import argparse
import io
import re
import shutil
import sys
from pathlib import Path

LOCAL_MATHJAX = "mathjax/tex-svg.js"  # relative to the pages; what the Makefile passes as mathjax_url
CDN_MATHJAX = "https://cdnjs.cloudflare.com/ajax/libs/mathjax/3.2.2/es5/tex-svg.min.js"
MAX_PAGE_BYTES = 10_000_000
MAX_HERO_BYTES = 150_000
# notebook stem -> (a piece of the source of the cell whose first plotly output is the hero, width px, height px)
HEROES = {
    "01_flame": ('title="The template with its 68 landmarks', 560, 480),
    "02_rigged_gaussians": ('title="SH-shaded surfels', 560, 480),
    "03_splatting": ('kinds=[None, None, None, None, "normal", None]', 900, None),
    "04_data": ("show_frames(clip.frames", 900, None),
    "05_reanimation_and_losses": ('["the composited render", *maps]', 900, None),
    "06_training": ("show_grid(trained,", 760, None),
    "07_evaluation_and_inference": ('"the photograph"', 900, None),
}
_FIGURE_MATHJAX = re.compile(r'<script src="https?://[^"]*mathjax[^"]*"></script>\s*', re.IGNORECASE)


def mathjax_source() -> Path | None:
    """MathJax 3's self-contained tex-svg.js from the installed `django-static-mathjax`, or None."""
    try:
        import mathjax
    except ImportError:
        return None
    path = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5" / "tex-svg.js"
    return path if path.is_file() else None


def finish(pages: Path) -> list[tuple[str, int]]:
    """Make the nbconvert pages in `pages` readable offline (see the module doc); returns [(page, bytes)]."""
    source = mathjax_source()
    if source is not None:
        (pages / "mathjax").mkdir(exist_ok=True)
        shutil.copyfile(source, pages / LOCAL_MATHJAX)
    else:
        print("course_pages: django-static-mathjax is not installed: the pages load MathJax from a CDN, so math "
              "shows only online (pip install -r requirements.txt).", file=sys.stderr)
    sizes = []
    for page in sorted(pages.glob("*.html")):
        html = _FIGURE_MATHJAX.sub("", page.read_text(encoding="utf-8"))
        if source is None:
            html = html.replace(f'src="{LOCAL_MATHJAX}"', f'src="{CDN_MATHJAX}"')
        page.write_text(html, encoding="utf-8")
        sizes.append((page.name, len(html.encode("utf-8"))))
    return sizes


def hero_figure(notebook: Path, needle: str):
    """The first plotly output (a go.Figure) of the cell of the executed `notebook` whose source holds `needle`."""
    import nbformat
    import plotly.graph_objects as go

    cells = [c for c in nbformat.read(notebook, as_version=4).cells if c.cell_type == "code" and needle in c.source]
    if not cells:
        raise ValueError(f"{notebook.name}: no code cell contains {needle!r}; update course_pages.HEROES.")
    for output in cells[0].get("outputs", []):
        figure = output.get("data", {}).get("application/vnd.plotly.v1+json")
        if figure is not None:
            return go.Figure(figure)
    raise ValueError(f"{notebook.name}: the cell with {needle!r} has no plotly output; was the notebook executed "
                     "with PLOTLY_RENDERER=plotly_mimetype+notebook (make docs)?")


def export_hero(fig, path: Path, width: int, height: int | None) -> int:
    """fig without its title (the README's table says what it is) as a PNG of `width` px (height: the figure's
    own, scaled alike, unless given), in at most 256 colours; returns its bytes."""
    from PIL import Image

    fig.update_layout(title=None, margin=dict(t=30 if fig.layout.annotations else 10))
    own_width, own_height = fig.layout.width, fig.layout.height
    if height is None:
        height = round(own_height * width / own_width) if own_width and own_height else round(width * 0.6)
    fig.update_layout(width=width, height=height)
    png = Image.open(io.BytesIO(fig.to_image(format="png", width=width, height=height))).convert("RGB")
    for colours in (256, 128, 64):
        buffer = io.BytesIO()
        png.quantize(colours, method=Image.Quantize.MEDIANCUT).save(buffer, format="png", optimize=True)
        if buffer.tell() <= MAX_HERO_BYTES:
            break
    path.write_bytes(buffer.getvalue())
    return buffer.tell()


def heroes(executed: Path, out: Path) -> list[tuple[str, int]]:
    """docs/img/NN.png for every notebook of `HEROES` found executed in `executed`; returns [(png, bytes)]."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, (needle, width, height) in HEROES.items():
        notebook = executed / f"{stem}.ipynb"
        if not notebook.is_file():
            print(f"course_pages: {notebook} not found (run make docs first); skipped", file=sys.stderr)
            continue
        target = out / f"{stem[:2]}.png"
        written.append((target.name, export_hero(hero_figure(notebook, needle), target, width, height)))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("finish", help="make nbconvert's pages readable offline").add_argument("pages", type=Path)
    hero = commands.add_parser("heroes", help="one PNG per executed notebook (needs kaleido and Chromium)")
    hero.add_argument("executed", type=Path)
    hero.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if args.command == "finish":
        for name, size in finish(args.pages):
            print(f"{name}: {size / 1e6:.1f} MB" + ("  (over 10 MB: shrink its figures)" if size > MAX_PAGE_BYTES
                                                    else ""))
        return 0
    for name, size in heroes(args.executed, args.out):
        print(f"{args.out / name}: {size / 1e3:.0f} KB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
