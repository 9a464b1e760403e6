# The two commands of the README: `make install` (environment) and `make test` (the suite).
VENV ?= .venv
PYTHON := $(VENV)/bin/python
# The CPU build lies on the CI machines' disk; on a GPU cluster install your CUDA build first.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install test clean

$(VENV)/.installed: pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet "$(TORCH_SPEC)"
	$(PYTHON) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PYTHON) -m pytest

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
