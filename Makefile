# Two entry points for a fresh machine: `make demo` and `make test` (see README.md).
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
# torch==2.13.0 first: on a CPU machine it is the local CPU wheel; an open range would pull a
# multi-GB CUDA build. On a GPU machine the same pin gets PyPI's CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: setup browser demo test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

setup: $(VENV)/.installed

# The browser tests drive Debian's Chromium (never a downloaded browser). Needs root or sudo.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium fonts-noto-color-emoji >/dev/null \
	  || echo "warning: could not install chromium; the browser test will be skipped"; }

# The Gradio app on this machine's default models: offline, the tiny model (built on first start).
demo: setup
	$(VENV)/bin/vichat serve

test: setup browser
	$(VENV)/bin/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
