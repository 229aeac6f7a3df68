# gnorm-kernels: `make demo` and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= runs/demo
DEMO_METHODS ?= greedy-gnorm,static-gnorm,inverse-gnorm,entropy,inverse-entropy,taylor,random
NOTEBOOKS := $(sort $(wildcard notebooks/0*.ipynb))

.PHONY: setup demo test test-fast notebooks lab bench clean

setup: $(STAMP)

# torch goes first, pinned: a looser requirement with no torch installed pulls a CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/gnorm compare --model tiny --task synthetic --methods $(DEMO_METHODS) --out $(DEMO_OUT) --force

test: setup
	$(BIN)/python -m pytest tests --nbmake --nbmake-timeout=1500 --durations=15 $(NOTEBOOKS)

test-fast: setup
	$(BIN)/python -m pytest tests -m "not slow"

notebooks: setup
	$(BIN)/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=900 $(NOTEBOOKS)

lab: setup
	$(BIN)/jupyter lab notebooks/

bench: setup
	$(BIN)/python bench/kernels.py
	$(BIN)/python bench/greedy_speed.py
	$(BIN)/python bench/grain_speed.py

clean:
	rm -rf $(VENV) runs .pytest_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
