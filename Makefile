# sheap_lite: one-command set-up, demo, tests and notebooks (GNU make).
# Everything runs in the project's own virtual environment, .venv, created on first use.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

# pytest's exit code 5 means "no tests collected": not a failure for this project (e.g. no notebooks yet).
PYTEST_OK = rc=$$?; if [ $$rc -eq 5 ]; then echo "(no tests collected: ok)"; rc=0; fi; exit $$rc

.DEFAULT_GOAL := help
.PHONY: help setup demo test test-full lab docs heroes doctor strip clean

help:
	@echo "sheap_lite make targets:"
	@echo "  make setup   create .venv and install the pinned requirements (only reruns when they change)"
	@echo "  make demo    run the end-to-end demo (python -m sheap_lite.demo)"
	@echo "  make test    what CI runs: unit tests without the slow ones, then every notebook at CI sizes (SHEAP_LITE_CI=1)"
	@echo "  make test-full  every unit test (slow ones too), then every notebook at full size"
	@echo "  make lab     open JupyterLab on notebooks/"
	@echo "  make docs    execute every notebook (CI sizes) into static HTML in docs/course/ (not committed)"
	@echo "  make heroes  export one figure per notebook to docs/img/NN.png (after make docs; needs kaleido + Chromium)"
	@echo "  make doctor  report what is installed and found (CUDA, gsplat, FLAME file, ...) and how to fix it"
	@echo "  make strip   remove outputs and execution counts from notebooks/*.ipynb (nbstripout)"
	@echo "  make clean   remove runs/ and caches (keeps .venv)"
	@echo "Variables: PYTHON=$(PYTHON) (used to create .venv), PYTEST_ARGS=... (extra arguments for the unit-test run),"
	@echo "  DOCS_ENV='env -u SHEAP_LITE_CI' (make docs at full size)"

# The stamp is newer than both files once an install succeeded, so a second `make setup` does nothing,
# and editing requirements.txt or pyproject.toml reinstalls. torch is pinned first in requirements.txt and
# installed in the same pip call as gsplat (otherwise pip pulls a newer, multi-GB torch).
$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --disable-pip-version-check --no-deps -e .
	touch $@

setup: $(STAMP)

demo: setup
	$(PY) -m sheap_lite.demo

# One recipe, two sizes: $(1) = environment for pytest and the notebooks, $(2) = extra pytest arguments.
define run_tests
	@echo "$(1) $(PY) -m pytest tests $(2) $(PYTEST_ARGS)"; $(1) $(PY) -m pytest tests $(2) $(PYTEST_ARGS); $(PYTEST_OK)
	@if [ -d notebooks ]; then \
		echo "$(1) $(PY) -m pytest --nbval-lax --nbval-current-env notebooks/"; \
		$(1) $(PY) -m pytest --nbval-lax --nbval-current-env notebooks/; $(PYTEST_OK); \
	else echo "no notebooks/ folder: nothing to execute"; fi
endef

# CI sizes, `slow` tests left out: what .ci/run runs.
test: setup
	$(call run_tests,SHEAP_LITE_CI=1,-m 'not slow')

# Everything: slow tests too, notebooks at full size (SHEAP_LITE_CI removed even if set outside).
test-full: setup
	$(call run_tests,env -u SHEAP_LITE_CI,)

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

# The course as static HTML, readable without a kernel: each notebook executed (kept beside the pages, for
# `make heroes`), then written with docs/course_template (MathJax 3 from a local copy, no require.js; a progress
# bar kept as its last state, not one line per redraw), plotly figures embedded with plotly.js inlined once per
# page (the "notebook" renderer). `course_pages finish` copies
# MathJax beside the pages and drops plotly's CDN MathJax tags: no network needed to read them. The slider
# explorers are live widgets: not stored (they need a kernel). docs/course/ is a build output, ignored by git.
DOCS_ENV ?= SHEAP_LITE_CI=1
docs: setup
	mkdir -p docs/course
	$(DOCS_ENV) PLOTLY_RENDERER=plotly_mimetype+notebook $(VENV)/bin/jupyter nbconvert --to notebook --execute \
		--ExecutePreprocessor.store_widget_state=False --output-dir docs/course notebooks/*.ipynb
	$(VENV)/bin/jupyter nbconvert --to html --template-file docs/course_template/course.html.j2 \
		--CoalesceStreamsPreprocessor.enabled=True \
		--HTMLExporter.mathjax_url=mathjax/tex-svg.js docs/course/*.ipynb
	$(PY) -m sheap_lite.course_pages finish docs/course

# The README's pictures, docs/img/NN.png: one key figure per notebook, from the pages `make docs` executed.
# Needs plotly's static export (pip install kaleido) and a Chromium on the machine (apt-get install chromium).
heroes:
	$(PY) -m sheap_lite.course_pages heroes docs/course docs/img

# The doctor must run even when set-up failed, so it does not depend on `setup`: it uses .venv if present.
doctor:
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) -m sheap_lite.doctor

strip: setup
	@if ls notebooks/*.ipynb >/dev/null 2>&1; then \
		$(VENV)/bin/nbstripout notebooks/*.ipynb && echo "stripped: $$(ls notebooks/*.ipynb | tr '\n' ' ')"; \
	else echo "no notebooks to strip"; fi

clean:
	rm -rf runs/ .pytest_cache/ .ipynb_checkpoints/ notebooks/.ipynb_checkpoints/ build/ dist/ docs/course/
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
