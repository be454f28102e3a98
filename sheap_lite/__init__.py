"""sheap_lite: a runnable, notebook-first reproduction of SHeaP (arXiv 2504.12292)."""

__version__ = "0.1.0"
