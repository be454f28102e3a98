"""course_pages: the static course reads offline (local MathJax, no per-figure CDN MathJax), heroes are found."""

import nbformat
import plotly.graph_objects as go
import pytest

from sheap_lite import course_pages

PAGE = ('<html><head><script src="mathjax/tex-svg.js"></script></head><body><div id="a"></div>'
        '<script src="https://cdnjs.cloudflare.com/ajax/libs/mathjax/3.2.2/es5/tex-svg.min.js"></script>\n'
        '<script>Plotly.newPlot("a", [], {})</script></body></html>')


def test_finish_copies_mathjax_and_drops_the_figures_cdn_mathjax(tmp_path, monkeypatch):
    source = tmp_path / "tex-svg.js"
    source.write_text("// mathjax")
    monkeypatch.setattr(course_pages, "mathjax_source", lambda: source)
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / "01.html").write_text(PAGE)
    sizes = course_pages.finish(tmp_path / "pages")
    html = (tmp_path / "pages" / "01.html").read_text()
    assert (tmp_path / "pages" / course_pages.LOCAL_MATHJAX).read_text() == "// mathjax"
    assert "cdnjs" not in html and 'src="mathjax/tex-svg.js"' in html and "Plotly.newPlot" in html
    assert sizes == [("01.html", len(html.encode()))]


def test_finish_without_the_package_falls_back_to_a_cdn(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(course_pages, "mathjax_source", lambda: None)
    (tmp_path / "01.html").write_text(PAGE)
    course_pages.finish(tmp_path)
    html = (tmp_path / "01.html").read_text()
    assert html.count(course_pages.CDN_MATHJAX) == 1 and "mathjax/tex-svg.js\"" not in html
    assert "django-static-mathjax" in capsys.readouterr().err


def test_hero_figure_is_the_first_plotly_output_of_the_named_cell(tmp_path):
    fig = go.Figure(go.Scatter(y=[1, 2]), layout=dict(title="wanted"))
    cell = nbformat.v4.new_code_cell("show_it(fig)")
    cell.outputs = [nbformat.v4.new_output("stream", text="x"),
                    nbformat.v4.new_output("display_data", data={"application/vnd.plotly.v1+json": fig.to_dict()})]
    notebook = tmp_path / "01.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("other()"), cell]), notebook)
    assert course_pages.hero_figure(notebook, "show_it").layout.title.text == "wanted"
    with pytest.raises(ValueError, match="no code cell"):
        course_pages.hero_figure(notebook, "missing")
    with pytest.raises(ValueError, match="no plotly output"):
        course_pages.hero_figure(notebook, "other()")
