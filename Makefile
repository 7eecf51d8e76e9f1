# The two commands of the quick start: `make demo` (the main job) and `make test`. Both build .venv/ on first use.
VENV   := .venv
STAMP  := $(VENV)/.bootstrapped
DEPS   := pyproject.toml scripts/bootstrap $(wildcard requirements/*.txt) $(wildcard boot/*)

.PHONY: demo test bench matrix venv clean

demo: $(STAMP)
	$(VENV)/bin/metagpt-vllm-fix demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/startup.py $(BENCH_ARGS)

matrix:
	scripts/python-matrix

venv: $(STAMP)

$(STAMP): $(DEPS)
	./scripts/bootstrap
	@touch $@

clean:
	rm -rf $(VENV) .venv-py*/ build dist
