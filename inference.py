"""Generate forecasts: a base model (+ LoRA adapter) x a dataset split -> a run dir; or one live forecast.

    python inference.py --dataset data/sample-demo --out runs/base --max_new_tokens 256
    python inference.py --adapter outputs/demo-lora --dataset data/sample-demo --out runs/lora
    python inference.py --backend openai --base_model gpt-4o-mini --dataset DIR --out runs/teacher
    python inference.py --backend vllm --base_model qwen2.5-7b-instruct --adapter DIR --dataset DIR --out RUN
    python inference.py --ticker AAPL --date 2013-01-11 --n_weeks 3 --use_basics     # live forecast
    python inference.py --backend file --outputs results.csv --dataset DIR --out runs/NAME  # import (run_import.py)

A run dir holds predictions.jsonl (one line per example: id, symbol, period, label, reference, output,
latency_s, output_tokens, hit_max_new_tokens; hf and vllm also p_up, openai with --logprobs where the
server returns logprobs [, hf: p_bins with --bin_probs, samples with --samples N]; appended batch by
batch, so a killed run resumes where it stopped) and run.json (model, adapter, prompt style, decoding,
backend, batch size, dtype, hardware, versions, dataset path/split/fingerprint, wall time, tokens/s, and
`probabilities`: how p_up was computed, or why it is absent). runs.py owns that format (writer, reader,
resume rules, prompt style); comparison.py scores run dirs.

Backends: `hf` batches prompts of similar length (sorted by token count) with left padding; greedy by
default, so the text equals one-at-a-time greedy in fp32. `vllm` (GPU, separate environment, see
requirements-vllm.txt) is imported only when chosen. `openai` sends (system, user) as chat messages to
any OpenAI-compatible server (the teacher, an API model, a vLLM/Ollama server), so it is scored like
any other run. latency_s = the batch's wall time / batch size.
"""
import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import runs
from prompt import PROMPT_STYLES, parse_answer, split_public_prompt
from runs import read_predictions   # main reads its run back for --wandb_project

# ---------------------------------------------------------------------------------------------
# Defaults (CLI flags mirror these one to one)
# ---------------------------------------------------------------------------------------------
BASE_MODEL = "smollm2-135m"       # the embedded model: runs offline on a CPU
SPLIT = "test"
BACKEND = "hf"
BATCH_SIZE = 8                    # hf: ~8x one-at-a-time on CPU (bench/eval_throughput.py); openai: parallel requests
MAX_NEW_TOKENS = 768              # reference answers are 1.3k-3.1k characters, about 300-750 tokens
TEMPERATURE = 0.0                 # 0 = greedy (reproducible, and batched == one-at-a-time in fp32)
TOP_P = 1.0
SAMPLES = 1                       # self-consistency: answers per example (majority direction scored)
SEED = 0                          # sampling seed; each example's generator is seeded from (seed, id)
OPENAI_TIMEOUT = 300.0            # seconds per request
OPENAI_RETRIES = 2                # the openai client's own retries (429/5xx/connection errors)
VLLM_CHUNK = 64                   # prompts per vllm.generate call: the resume granularity
GPU_MEMORY_UTILIZATION = 0.9      # vllm: share of the GPU's memory vLLM takes for weights + KV cache (its default)
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)   # the max_lora_rank values vLLM accepts (LoRAConfig)
TOP_LOGPROBS = 20                 # vllm/openai p_up: top-k logprobs per generated token. 20 is the most either
                                  # gives by default (vLLM's max_logprobs, OpenAI's top_logprobs cap); a model that
                                  # wrote " Up" keeps its other up/down variants far inside its top 20
N_WEEKS = 3                       # live forecast: past weeks in the prompt (upstream demo: 1-4)


class InferenceError(ValueError):
    """A user mistake or an unusable input: printed as one `Error:` line."""


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------
def load_rows(dataset, split, limit=None, weeks=None):
    """(rows, fingerprint, path) of a dataset split: plain dicts with id, symbol, period, label, answer,
    prompt. `limit` keeps the first N rows in dataset order; `weeks` keeps every ticker's rows of the
    last N whole weeks (periods that have a row for every ticker of the split)."""
    from dataset_io import DatasetError, dataset_fingerprint, get_split, load_forecast_dataset
    try:
        dd = load_forecast_dataset(dataset)
        ds = get_split(dd, split, dataset)
    except DatasetError as exc:
        raise InferenceError(str(exc)) from None
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    if weeks is not None:
        keep = set(last_whole_weeks(ds["period"], ds["symbol"], weeks))
        ds = ds.select([k for k, period in enumerate(ds["period"]) if period in keep])
    cols = ["id", "symbol", "period", "label", "answer", "prompt"]
    path = str(Path(dataset).resolve()) if Path(dataset).exists() else str(dataset)
    return ds.select_columns(cols).to_list(), dataset_fingerprint(dd), path


def last_whole_weeks(periods, symbols, n):
    """The last n periods (by start date) that have a row for every symbol seen in the split.

    >>> last_whole_weeks(["w1", "w1", "w2", "w2", "w3"], ["A", "B", "A", "B", "A"], 1)
    ['w2']
    """
    tickers = set(symbols)
    by_period = {}
    for period, symbol in zip(periods, symbols):
        by_period.setdefault(period, set()).add(symbol)
    whole = sorted(p for p, s in by_period.items() if s == tickers)
    return whole[-n:] if n else []


def chat_parts(row):
    """(system, user) of a dataset prompt, for re-templating in any prompt style."""
    return split_public_prompt(row["prompt"])


# ---------------------------------------------------------------------------------------------
# Backends: each turns a list of rows into [(output text, output tokens, hit max_new_tokens)]
# (hf, vllm, openai --logprobs: Generated tuples whose .extra fields, p_up/p_bins/samples, go into
# predictions.jsonl)
# ---------------------------------------------------------------------------------------------
class Generated(tuple):
    """(text, output tokens, hit max_new_tokens) with `extra`: more predictions.jsonl fields."""

    def __new__(cls, result, extra=None):
        obj = super().__new__(cls, result)
        obj.extra = extra or {}
        return obj


class HFGenerator:
    """Batched generation with transformers: left padding, stop at the style's end token / stop strings."""

    def __init__(self, model, tokenizer, style, max_new_tokens=MAX_NEW_TOKENS, temperature=TEMPERATURE,
                 top_p=TOP_P, samples=SAMPLES, seed=SEED, bin_probs=False, p_up=True):
        self.model, self.tokenizer, self.style = model.eval(), tokenizer, style
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.samples, self.seed, self.bin_probs, self.p_up = samples, seed, bin_probs, p_up or bin_probs
        tokenizer.padding_side = "left"          # decoder-only: new tokens must follow the prompt directly
        vocab = tokenizer.get_vocab()
        self.end_ids = sorted({tokenizer.eos_token_id, *(vocab[s] for s in style.stop_strings if s in vocab)}
                              - {None})
        # stop strings that are not single tokens need the (slower) string matcher
        self.text_stops = [s for s in style.stop_strings if s not in vocab]

    def prompt_text(self, row):
        return self.style.format_prompt(*chat_parts(row))

    def token_lengths(self, rows):
        return [len(self.tokenizer(self.prompt_text(r))["input_ids"]) for r in rows]

    def generate(self, rows):
        """[Generated (text, output tokens, hit max_new_tokens) with .extra {p_up[, p_bins][, samples]}]."""
        import torch
        from transformers import LogitsProcessorList

        from direction_probs import (DirectionProbe, RowSampler, bin_probabilities, direction_step, generation_cache,
                                     seed_for, vote)
        texts = [self.prompt_text(r) for r in rows]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True).to(self.model.device)
        n_samples = self.samples
        if n_samples > 1:                        # every example N times in the batch, each with its own seed
            enc = {k: v.repeat_interleave(n_samples, dim=0) for k, v in enc.items()}
        kwargs = {"max_new_tokens": self.max_new_tokens, "eos_token_id": self.end_ids,
                  "pad_token_id": self.tokenizer.pad_token_id,
                  "do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        sampler = None
        if self.temperature > 0:                 # seeded per (seed, id, sample): batch- and resume-independent
            sampler = RowSampler([seed_for(self.seed, r["id"], k) for r in rows for k in range(n_samples)],
                                 self.temperature, self.top_p)
        probe = DirectionProbe(self.tokenizer, sampler, record=self.p_up) if self.p_up or sampler else None
        if probe is not None:
            kwargs["logits_processor"] = LogitsProcessorList([probe])
        if self.bin_probs:
            kwargs["return_dict_in_generate"] = True     # the KV cache, to score the 12 labels from
        if self.text_stops:
            kwargs.update(stop_strings=self.text_stops, tokenizer=self.tokenizer)
        with torch.inference_mode():
            out = self.model.generate(**enc, **kwargs)
        sequences = out.sequences if self.bin_probs else out
        prompt_len = enc["input_ids"].shape[1]
        new = sequences[:, prompt_len:].tolist()
        ends = set(self.end_ids) | {self.tokenizer.pad_token_id}
        per_sequence = []
        for j, ids in enumerate(new):
            n = next((k for k, t in enumerate(ids) if t in ends), len(ids))
            ended = n < len(ids)
            if ended and ids[n] in self.end_ids:
                n += 1                           # the end token was generated: count it
            text = self.tokenizer.decode(ids[:n], skip_special_tokens=True)
            stopped = False
            for s in self.text_stops:
                if s in text:
                    text, stopped = text[:text.index(s)], True
            p_up = p_bins = None
            if self.p_up:
                step = direction_step(self.tokenizer, ids[:n], text)
                if step is not None and probe.is_direction_token(ids[step]):
                    p_up = probe.p_up(j, step)
                    if self.bin_probs:
                        p_bins = bin_probabilities(self.model, self.tokenizer, probe, generation_cache(out),
                                                   enc["attention_mask"][j], j, step, prompt_len, ids[step])
            per_sequence.append((text.strip(), n, not ended and not stopped and n >= self.max_new_tokens, p_up, p_bins))
        results = []
        for b in range(len(rows)):
            group = per_sequence[b * n_samples:(b + 1) * n_samples]
            pick, p_up = 0, group[0][3]
            extra = {}
            if n_samples > 1:                    # self-consistency: majority direction, p_up = up share of votes
                pick, p_up = vote([parse_answer(g[0]).direction for g in group])
                extra["samples"] = [g[0] for g in group]
            if self.p_up:
                extra["p_up"] = p_up
            if self.bin_probs:
                with_bins = [g[4] for g in group if g[4]]
                extra["p_bins"] = ({c: sum(p[c] for p in with_bins) / len(with_bins) for c in with_bins[0]}
                                   if with_bins else None)
            text, tokens, hit = group[pick][:3]
            if n_samples > 1:
                tokens = sum(g[1] for g in group)        # all N samples were generated: tokens/s counts them
            results.append(Generated((text, tokens, hit), extra))
        return results


class OpenAIGenerator:
    """Any OpenAI-compatible chat server; rows are sent as (system, user) messages, batch_size at a time.
    Request parameters follow openai_chat.ChatRules, the teacher's rules (max_completion_tokens / no
    temperature for reasoning models, learned from the first 400); a bad key, no credits, an unknown model
    or a bad request that persists stop the run with one error (rows already written are kept)."""

    def __init__(self, model_name, base_url=None, api_key=None, max_new_tokens=MAX_NEW_TOKENS,
                 temperature=TEMPERATURE, top_p=TOP_P, timeout=OPENAI_TIMEOUT, max_retries=OPENAI_RETRIES,
                 concurrency=BATCH_SIZE, http_client=None, logprobs=False):
        import threading

        from openai import OpenAI

        from openai_chat import ChatRules
        self.client = OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=max_retries,
                             http_client=http_client)
        self.model_name, self.max_new_tokens, self._key = model_name, max_new_tokens, api_key
        self.temperature, self.top_p, self.concurrency = temperature, top_p, concurrency
        self.rules = ChatRules()
        self.logprobs = logprobs                 # ask for top_logprobs and compute p_up (--logprobs)
        self.with_logprobs = self.without_logprobs = 0
        self._count_lock = threading.Lock()

    def _one(self, row):
        from openai_chat import FatalAPIError, create_chat
        system, user = chat_parts(row)
        try:
            resp = create_chat(self.client, self.model_name, [{"role": "system", "content": system},
                                                              {"role": "user", "content": user}],
                               self.rules, self.max_new_tokens, api_key=self._key,
                               temperature=self.temperature, top_p=self.top_p,
                               **({"logprobs": True, "top_logprobs": TOP_LOGPROBS} if self.logprobs else {}))
        except FatalAPIError as exc:
            raise InferenceError(f"the model server ({self.model_name}): {exc}") from None
        except Exception as exc:  # noqa: BLE001 - the client has many error types; the row is retried on resume
            return exc
        choice = resp.choices[0]
        tokens = resp.usage.completion_tokens if resp.usage else None
        result = ((choice.message.content or "").strip(), tokens, choice.finish_reason == "length")
        if not self.logprobs:
            return result
        content = getattr(getattr(choice, "logprobs", None), "content", None)
        with self._count_lock:
            if content:
                self.with_logprobs += 1
            else:
                self.without_logprobs += 1
        if not content:                          # the server returned none: no p_up (run.json says why)
            return Generated(result)
        return Generated(result, {"p_up": _p_up_openai(content)})

    def describe_probabilities(self):
        """run.json's `probabilities` entry: how p_up was computed, or why it is absent."""
        if not self.logprobs:
            return {"p_up": None, "why": "not requested (--logprobs asks the server for top-k logprobs)"}
        out = {"p_up": f"top_logprobs (k={TOP_LOGPROBS}) at the Prediction line's direction token: sum P(up "
                       "variants) / (sum P(up) + sum P(down)) over the top k; null where the answer has no "
                       "Prediction direction word or no up/down variant is in the top k",
               "top_logprobs": TOP_LOGPROBS, "responses_with_logprobs": self.with_logprobs,
               "responses_without_logprobs": self.without_logprobs}
        if "logprobs" in self.rules.omitted:
            out["why"] = ("the server rejected the logprobs parameter (400), so no answer has p_up: "
                          + "; ".join(r for r in self.rules.learned if r.startswith("logprobs")))
        elif self.without_logprobs:
            out["why"] = (f"the server returned no logprobs for {self.without_logprobs} answer(s); those have "
                          "no p_up field")
        return out

    def generate(self, rows):
        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(rows)))) as pool:
            return list(pool.map(self._one, rows))


def _p_up_openai(content):
    """p_up from an OpenAI chat response's logprobs.content (one entry per generated token, with
    top_logprobs); the chosen token counts among the candidates even when a server leaves it out of its top."""
    from direction_probs import direction_index, p_up_from_top_logprobs
    pieces = [c.token for c in content]
    step = direction_index(pieces)
    if step is None:
        return None
    chosen = content[step]
    candidates = {t.token: t.logprob for t in (chosen.top_logprobs or [])}
    candidates.setdefault(chosen.token, chosen.logprob)
    return p_up_from_top_logprobs(chosen.token, candidates.items())


def _p_up_vllm(completion):
    """p_up from a vLLM CompletionOutput generated with SamplingParams(logprobs=k): `logprobs` holds, per
    generated token, {token_id: Logprob(logprob, rank, decoded_token)} (the top k plus the sampled token)."""
    from direction_probs import direction_index, p_up_from_top_logprobs
    steps = getattr(completion, "logprobs", None)
    ids = list(completion.token_ids)
    if not steps or len(steps) < len(ids):
        return None
    pieces = [steps[k][t].decoded_token if t in steps[k] else None for k, t in enumerate(ids)]
    if any(p is None for p in pieces):           # detokenize=False or a malformed entry: no texts to locate in
        return None
    step = direction_index(pieces)
    if step is None:
        return None
    return p_up_from_top_logprobs(pieces[step], [(lp.decoded_token, lp.logprob) for lp in steps[step].values()])


class VLLMGenerator:
    """vLLM offline engine (GPU), with the adapter as a LoRARequest. Imported only when chosen.

    max_model_len: the longest prompt + max_new_tokens (vLLM's default is the model's whole context, 131,072
    tokens for Llama-3.1, whose KV cache alone does not fit beside the weights on a 24 GB card);
    max_lora_rank: the adapter's r rounded up to a rank vLLM accepts (vllm_lora_rank); logprobs=TOP_LOGPROBS
    gives p_up (_p_up_vllm) at no extra generation pass."""

    def __init__(self, source, style, adapter=None, dtype=None, max_new_tokens=MAX_NEW_TOKENS,
                 temperature=TEMPERATURE, top_p=TOP_P, max_model_len=None, lora_rank=None,
                 gpu_memory_utilization=GPU_MEMORY_UTILIZATION):
        try:
            from vllm import LLM, SamplingParams
            from vllm.lora.request import LoRARequest
        except ImportError:
            raise InferenceError("--backend vllm needs vLLM: install requirements-vllm.txt in its own "
                                 "environment on a GPU machine and run inference.py with that python") from None
        dtype = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(dtype, "auto")
        engine = {"model": source, "dtype": dtype, "gpu_memory_utilization": gpu_memory_utilization}
        if max_model_len:
            engine["max_model_len"] = max_model_len
        if adapter is not None:
            engine.update(enable_lora=True, max_lora_rank=lora_rank or vllm_lora_rank(adapter_rank(adapter)))
        self.engine_args = engine
        self.llm = LLM(**engine)
        self.params = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                                     stop=list(style.stop_strings) or None, logprobs=TOP_LOGPROBS)
        self.lora = LoRARequest("adapter", 1, str(adapter)) if adapter else None
        self.style = style

    def generate(self, rows):
        prompts = [self.style.format_prompt(*chat_parts(r)) for r in rows]
        outs = self.llm.generate(prompts, self.params, lora_request=self.lora)
        return [Generated((c.text.strip(), len(c.token_ids), c.finish_reason == "length"), {"p_up": _p_up_vllm(c)})
                for c in (o.outputs[0] for o in outs)]


def adapter_rank(adapter):
    """The LoRA rank of an adapter folder: r, or the largest per-module rank in rank_pattern."""
    config = json.loads((Path(adapter) / "adapter_config.json").read_text())
    return max([int(config.get("r") or 8)] + [int(v) for v in (config.get("rank_pattern") or {}).values()])


def vllm_lora_rank(r):
    """The smallest max_lora_rank vLLM accepts that holds rank r.

    >>> vllm_lora_rank(8), vllm_lora_rank(12), vllm_lora_rank(65), vllm_lora_rank(300)
    (8, 16, 128, 320)
    """
    for allowed in VLLM_LORA_RANKS:
        if r <= allowed:
            return allowed
    raise InferenceError(f"the adapter's LoRA rank {r} is above {VLLM_LORA_RANKS[-1]}, the largest vLLM serves; "
                         "use --backend hf")


def vllm_max_model_len(tokenizer, style, rows, max_new_tokens, model_limit=None):
    """Longest tokenized prompt + max_new_tokens: the context vLLM must hold, and no more."""
    longest = max(len(tokenizer(style.format_prompt(*chat_parts(r)))["input_ids"]) for r in rows)
    needed = longest + max_new_tokens
    if model_limit and needed > model_limit:
        raise InferenceError(f"the longest prompt ({longest} tokens) + --max_new_tokens {max_new_tokens} = {needed} "
                             f"tokens exceeds the model's context of {model_limit}; lower --max_new_tokens")
    return needed


# ---------------------------------------------------------------------------------------------
# Model + style resolution
# ---------------------------------------------------------------------------------------------
def load_hf(args):
    """(model, tokenizer, style, dtype name, model name) for the hf backend."""
    import models
    try:
        model, tokenizer, spec = models.load_model(args.base_model, dtype=args.dtype, load_in_8bit=args.load_in_8bit,
                                                   load_in_4bit=args.load_in_4bit, cache_dir=args.cache_dir,
                                                   device_map="auto" if _cuda() else None)
    except models.ModelError as exc:
        raise InferenceError(str(exc)) from None
    if args.adapter:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, args.adapter)
    style = runs.style_for(args.adapter, spec.prompt_style, override=args.prompt_style)
    dtype = args.dtype or models.default_dtype()
    return model, tokenizer, style, dtype, spec.name


def _cuda():
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


def environment():
    try:
        import models
        return models.environment_info()
    except Exception as exc:  # noqa: BLE001 - a manifest detail must not stop a run
        import platform
        return {"python": platform.python_version(), "error": f"{type(exc).__name__}: {exc}"}


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
def plan_batches(rows, batch_size, lengths=None):
    """Batches of rows, longest prompts first, so each batch pads little and memory trouble shows at once."""
    order = sorted(range(len(rows)), key=lambda i: -lengths[i]) if lengths else list(range(len(rows)))
    return [[rows[i] for i in order[k:k + batch_size]] for k in range(0, len(order), batch_size)]


def run_dataset(generator, rows, out, manifest, batch_size, overwrite=False, lengths_fn=None, progress=True):
    """Generate for every row not yet in out/predictions.jsonl; write run.json (runs.RunWriter owns the format).
    Returns a summary dict."""
    from tqdm import tqdm
    try:
        writer = runs.RunWriter(out, manifest, len(rows), overwrite)
    except runs.RunError as exc:
        raise InferenceError(str(exc)) from None
    t0, failed = time.time(), []
    todo = [r for r in rows if r["id"] not in writer.done]
    batches = plan_batches(todo, batch_size, lengths_fn(todo) if lengths_fn and todo else None)
    bar = tqdm(total=len(todo), unit="ex", desc="generating", disable=not progress)
    with writer:
        for batch in batches:
            tb = time.time()
            results = generator.generate(batch)
            latency = (time.time() - tb) / len(batch)
            for row, res in zip(batch, results):
                if isinstance(res, Exception):
                    failed.append(f"{row['id']}: {type(res).__name__}: {str(res)[:200]}")
                    continue
                text, tokens, hit_max, *given = res      # an imported output brings its own latency (or None)
                writer.write(row, text, tokens, hit_max, given[0] if given else round(latency, 4),
                             getattr(res, "extra", {}))
            writer.flush()
            bar.update(len(batch))
        describe = getattr(generator, "describe_probabilities", None)
        if describe and todo:                    # known after generation (openai: did the server give logprobs?)
            writer.manifest["probabilities"] = describe()
    bar.close()
    return dict(writer.summary, new=len(todo) - len(failed), failed=failed, wall=time.time() - t0)


# ---------------------------------------------------------------------------------------------
# Live forecast
# ---------------------------------------------------------------------------------------------
def build_live_prompt(ticker, date, n_weeks=N_WEEKS, use_basics=False, source="sample"):
    """The prompt for forecasting `ticker`'s week after `date`, from the sources data_pipeline.py uses.

    Returns {"system": str, "user": str, "info": str (the information block to print), "period": str}.
    The prediction week starts on the first Sunday on or after `date`; the prompt holds the `n_weeks`
    weeks before it (financials only with use_basics), built by records.py, the leak-free record code
    data_pipeline.py builds datasets with.
    """
    from dotenv import load_dotenv

    import records            # records and sources import pandas: lazy, so dataset runs and --help skip it
    from prompt import SYSTEM_PROMPT, neutral_instruction, render_prompt
    from sources import open_source
    load_dotenv()
    record = records.live_record(open_source(source), ticker.upper(), date, n_weeks=n_weeks,
                                 use_basics=use_basics)
    instruction = neutral_instruction(record["symbol"], record["curday"], record["period"])
    user = render_prompt(record, instruction)
    info = user[: -len(instruction)].rstrip()
    outcome = (f"Realised: {record['label']} ({record['weekly_return'] * 100:+.2f}%)" if record["label"]
               else "Realised: not known yet")
    return {"system": SYSTEM_PROMPT, "user": user, "period": record["period"],
            "info": f"{info}\n\nForecast for {record['symbol']}, week {record['period']}. {outcome}"}


def live_forecast(args):
    try:
        live = build_live_prompt(args.ticker, args.date, args.n_weeks, args.use_basics, args.source)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise InferenceError(f"--ticker {args.ticker}: {exc.args[0] if exc.args else exc}") from None
    print(live["info"])
    row = {"id": f"{args.ticker}|{live.get('period', args.date)}", "prompt": None}
    if args.backend == "openai":
        gen = OpenAIGenerator(args.base_model, args.base_url, _api_key(args), args.max_new_tokens, args.temperature,
                              args.top_p)
        result = gen._one({**row, "prompt": _wrap(live)})
    else:
        model, tokenizer, style, _, _ = load_hf(args)
        result = HFGenerator(model, tokenizer, style, args.max_new_tokens, args.temperature, args.top_p).generate(
            [{**row, "prompt": _wrap(live)}])[0]
    if isinstance(result, Exception):
        raise InferenceError(f"the model server failed: {result}")
    print("\n" + result[0])
    return 0


def _wrap(live):
    from prompt import wrap_public_prompt
    return wrap_public_prompt(live["system"], live["user"])


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--base_model", default=None, help=f"registry name, hub id or folder; with --backend openai "
                    f"the served model name (default: the adapter's base model, else {BASE_MODEL})")
    ap.add_argument("--adapter", default=None, help="LoRA adapter folder (its prompt_style.json is used)")
    ap.add_argument("--prompt_style", default=None, choices=sorted(PROMPT_STYLES),
                    help="override the adapter's / model's prompt style")
    ap.add_argument("--dataset", default=None, help="dataset folder, .jsonl/.parquet file or hub id")
    ap.add_argument("--split", default=SPLIT, help="dataset split")
    ap.add_argument("--limit", type=int, default=None, help="only the first N examples of the split")
    ap.add_argument("--weeks", type=int, default=None, help="only the last N whole weeks of the split, every "
                    "ticker (so each week's cross-section is complete for the IC and the backtest)")
    ap.add_argument("--out", default=None, help="run dir: predictions.jsonl + run.json (resumes if present)")
    ap.add_argument("--overwrite", action="store_true", help="start the run dir again instead of resuming "
                    "(--backend file: replace an import of another file)")
    ap.add_argument("--backend", default=BACKEND, choices=("hf", "vllm", "openai", "file"),
                    help="generation backend; file = import outputs made elsewhere (--outputs)")
    ap.add_argument("--outputs", default=None, help="--backend file: the outputs file to import "
                    "(.csv, .jsonl, .json list or .parquet; see README 'Scoring outputs you already have')")
    ap.add_argument("--columns", default=None, help="--backend file: ROLE=COLUMN,... overriding the column "
                    "detection; roles: output, prompt, reference, truth, latency, id, symbol, period")
    ap.add_argument("--batch_size", type=int, default=BATCH_SIZE,
                    help="prompts per generate call (openai: parallel requests)")
    ap.add_argument("--max_new_tokens", type=int, default=MAX_NEW_TOKENS, help="tokens per answer, at most")
    ap.add_argument("--temperature", type=float, default=TEMPERATURE, help="0 = greedy")
    ap.add_argument("--top_p", type=float, default=TOP_P, help="nucleus sampling mass (with --temperature > 0)")
    ap.add_argument("--samples", type=int, default=SAMPLES, help="hf: answers per example (self-consistency, needs "
                    "--temperature > 0); all are kept in `samples`, the first with the majority direction is scored "
                    "and p_up = the up share of the votes")
    ap.add_argument("--seed", type=int, default=SEED, help="sampling seed: each example's generators are seeded "
                    "from (seed, id, sample), so resuming and --batch_size do not change the texts")
    ap.add_argument("--bin_probs", action="store_true", help="hf: also p_bins, the probability of each of the 12 "
                    "labels at the Prediction step (scored from the generation's KV cache)")
    ap.add_argument("--logprobs", action="store_true", help=f"openai backend: ask the server for the top "
                    f"{TOP_LOGPROBS} logprobs per token and record p_up where it returns them (run.json says when it "
                    "does not); hf and vllm always record p_up")
    ap.add_argument("--gpu_memory_utilization", type=float, default=GPU_MEMORY_UTILIZATION,
                    help="vllm backend: share of the GPU's memory (0-1] vLLM may take for weights + KV cache")
    ap.add_argument("--dtype", default=None, choices=("bf16", "fp16", "fp32"),
                    help="weights/compute dtype (default: bf16 where supported, else fp16/fp32)")
    ap.add_argument("--load_in_8bit", action="store_true", help="bitsandbytes 8-bit weights (CUDA)")
    ap.add_argument("--load_in_4bit", action="store_true", help="bitsandbytes 4-bit nf4 weights (CUDA)")
    ap.add_argument("--cache_dir", default=None, help="model cache folder")
    ap.add_argument("--base_url", default=None, help="openai backend: server URL, e.g. http://127.0.0.1:8000/v1 "
                    "(default: $OPENAI_BASE_URL, else api.openai.com)")
    ap.add_argument("--timeout", type=float, default=OPENAI_TIMEOUT, help="openai backend: seconds per request")
    ap.add_argument("--max_retries", type=int, default=OPENAI_RETRIES, help="openai backend: retries per request")
    ap.add_argument("--ticker", default=None, help="live forecast: ticker symbol")
    ap.add_argument("--date", default=None, help="live forecast: YYYY-MM-DD, forecast the week after it")
    ap.add_argument("--n_weeks", type=int, default=N_WEEKS, help="live forecast: past weeks in the prompt")
    ap.add_argument("--use_basics", action="store_true", help="live forecast: include basic financials")
    ap.add_argument("--source", default="sample", choices=["sample", "finnhub"],
                    help="live forecast: data source (sample = offline; finnhub = Finnhub + yfinance, needs FINNHUB_KEY)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--wandb_project", default=None, metavar="NAME", help="also log the run (manifest, "
                    "throughput, latency distribution) to this W&B project (WANDB_API_KEY or WANDB_MODE=offline)")
    return ap.parse_args(argv)


def _api_key(args):
    """OPENAI_API_KEY or upstream's OPENAI_KEY (as the teacher reads them); any value for a local server."""
    from openai_chat import openai_api_key
    return openai_api_key() or ("local" if (args.base_url or os.environ.get("OPENAI_BASE_URL")) else None)


def validate_args(args):
    problems = []
    live = args.ticker or args.date
    if live and not (args.ticker and args.date):
        problems.append("--ticker and --date go together")
    if args.backend == "file":      # importing outputs: no model, the dataset is optional
        if live:
            problems.append("--backend file imports a file of outputs; it does not make live forecasts")
        if not args.outputs:
            problems.append("--backend file needs --outputs FILE (.csv, .jsonl, .json or .parquet)")
        if args.adapter:
            problems.append("--adapter does not apply to --backend file")
        if args.limit is not None:
            problems.append("--limit does not apply to --backend file (every row of the file is imported)")
    elif args.outputs or args.columns:
        problems.append("--outputs/--columns apply to --backend file only")
    if not live:
        if not args.dataset and args.backend != "file":
            problems.append("--dataset is required (or --ticker/--date for a live forecast)")
        if not args.out:
            problems.append("--out is required: the run dir to write")
    if args.batch_size < 1:
        problems.append(f"--batch_size {args.batch_size}: must be at least 1")
    if args.max_new_tokens < 1:
        problems.append(f"--max_new_tokens {args.max_new_tokens}: must be at least 1")
    if args.limit is not None and args.limit < 1:
        problems.append(f"--limit {args.limit}: must be at least 1")
    if args.weeks is not None and (args.weeks < 1 or args.limit is not None):
        problems.append(f"--weeks {args.weeks}: must be at least 1, and not combined with --limit")
    if args.samples < 1:
        problems.append(f"--samples {args.samples}: must be at least 1")
    if args.samples > 1 and args.temperature == 0:
        problems.append(f"--samples {args.samples} needs --temperature > 0 (greedy samples are all the same)")
    if (args.samples > 1 or args.bin_probs) and args.backend != "hf":
        problems.append("--samples > 1 and --bin_probs apply to --backend hf only")
    if args.logprobs and args.backend != "openai":
        problems.append("--logprobs applies to --backend openai only (hf and vllm always record p_up)")
    if args.temperature < 0:
        problems.append(f"--temperature {args.temperature}: must be >= 0 (0 = greedy)")
    if not 0 < args.top_p <= 1:
        problems.append(f"--top_p {args.top_p}: must be in (0, 1]")
    if not 0 < args.gpu_memory_utilization <= 1:
        problems.append(f"--gpu_memory_utilization {args.gpu_memory_utilization}: must be in (0, 1]")
    if args.adapter:
        if not (Path(args.adapter) / "adapter_config.json").is_file():
            problems.append(f"--adapter {args.adapter}: no adapter_config.json there (a train_lora.py output dir)")
        if args.backend == "openai":
            problems.append("--adapter does not apply to --backend openai (serve the adapter on the server)")
    if args.backend == "openai":
        if not args.base_model:
            problems.append("--backend openai needs --base_model: the model name the server serves")
        if not _api_key(args):
            problems.append("--backend openai needs OPENAI_API_KEY (any string for a local server) or --base_url")
    if args.backend != "hf" and (args.load_in_8bit or args.load_in_4bit):
        problems.append("--load_in_8bit/--load_in_4bit apply to --backend hf only")
    if args.wandb_project:
        import tracking
        problems += tracking.wandb_problems("--wandb_project")   # a key or WANDB_MODE=offline: never a prompt
    return problems


def import_outputs(args):
    """--backend file: run_import.py reads and joins the file; run_dataset writes the run dir."""
    import run_import
    t0 = time.time()
    try:
        plan = run_import.plan_import(args.outputs, args.dataset, args.split, args.columns, args.prompt_style,
                                      args.base_model, args.out, args.overwrite)
        if plan.unchanged:
            print(f"{args.out} already holds this import of {args.outputs}; nothing changed")
            return 0
        run_dataset(plan.generator(), plan.rows, args.out, plan.manifest, max(1, len(plan.rows)), args.overwrite,
                    progress=False)
    except (run_import.OutputsError, InferenceError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    lines = run_import.summary_lines(plan, args.out)
    lines[0] += f" in {time.time() - t0:.1f}s"
    print("\n".join(lines))
    return 0


def main(argv=None):
    args = parse_args(argv)
    problems = validate_args(args)
    if problems:
        print("Error: " + "; ".join(problems), file=sys.stderr)
        return 1
    if args.backend == "file":
        return import_outputs(args)
    if args.base_model is None:
        args.base_model = (runs.adapter_base_model(args.adapter) if args.adapter else None) or BASE_MODEL
    t0 = time.time()
    try:
        if args.ticker:
            return live_forecast(args)
        rows, fingerprint, dataset_path = load_rows(args.dataset, args.split, args.limit, args.weeks)
        if not rows:
            raise InferenceError(f"{args.dataset} [{args.split}] has no rows")
        lengths_fn = None
        if args.backend == "openai":
            generator = OpenAIGenerator(args.base_model, args.base_url, _api_key(args), args.max_new_tokens,
                                        args.temperature, args.top_p, args.timeout, args.max_retries, args.batch_size,
                                        logprobs=args.logprobs)
            style_name, dtype, model_name, batch = None, None, args.base_model, args.batch_size
        elif args.backend == "vllm":
            import models
            spec = models.resolve_model(args.base_model)
            style = runs.style_for(args.adapter, spec.prompt_style, override=args.prompt_style)
            try:
                tokenizer = models.load_tokenizer(spec, args.cache_dir)
            except models.ModelError as exc:
                raise InferenceError(str(exc)) from None
            max_model_len = vllm_max_model_len(tokenizer, style, rows, args.max_new_tokens,
                                               spec.arch_config.get("max_position_embeddings"))
            generator = VLLMGenerator(models.model_source(spec, args.cache_dir), style, args.adapter, args.dtype,
                                      args.max_new_tokens, args.temperature, args.top_p, max_model_len=max_model_len,
                                      gpu_memory_utilization=args.gpu_memory_utilization)
            style_name, dtype, model_name, batch = style.name, args.dtype, spec.name, VLLM_CHUNK
        else:
            model, tokenizer, style, dtype, model_name = load_hf(args)
            generator = HFGenerator(model, tokenizer, style, args.max_new_tokens, args.temperature, args.top_p,
                                    args.samples, args.seed, args.bin_probs)
            style_name, batch, lengths_fn = style.name, args.batch_size, generator.token_lengths
        env = environment()
        manifest = {
            "model": model_name, "adapter": str(Path(args.adapter).resolve()) if args.adapter else None,
            "prompt_style": style_name, "backend": args.backend, "batch_size": batch, "dtype": dtype,
            "decoding": {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
                         "top_p": args.top_p, "do_sample": args.temperature > 0,
                         # only when set, so run dirs made before these flags still resume
                         **({"seed": args.seed} if args.temperature > 0 else {}),
                         **({"samples": args.samples} if args.samples > 1 else {}),
                         **({"bin_probs": True} if args.bin_probs else {})},
            "base_url": args.base_url if args.backend == "openai" else None,
            "hardware": {k: env.get(k) for k in ("cpu", "cpu_count", "ram_gib", "gpu", "gpu_count", "gpu_memory_gib",
                                                 "cuda", "driver")},
            "versions": {k: env.get(k) for k in ("python", "torch", "transformers", "peft", "datasets")},
            "dataset": {"path": dataset_path, "split": args.split, "fingerprint": fingerprint, "limit": args.limit,
                        **({"weeks": args.weeks} if args.weeks else {})},
        }
        if args.backend == "hf":
            manifest["probabilities"] = {
                "p_up": ("up share of the --samples votes" if args.samples > 1 else
                         "P(up words) / P(up + down words) at the Prediction line's direction token; absent "
                         "(null) where the answer has no Prediction direction word"),
                "p_bins": args.bin_probs}
        elif args.backend == "vllm":
            manifest["probabilities"] = {
                "p_up": f"vLLM top-k logprobs (SamplingParams(logprobs={TOP_LOGPROBS})) at the Prediction line's "
                        "direction token: sum P(up variants) / (sum P(up) + sum P(down)) over the top k; null where "
                        "the answer has no Prediction direction word or no up/down variant is in the top k",
                "top_logprobs": TOP_LOGPROBS, "p_bins": False}
        elif args.backend == "openai":
            manifest["probabilities"] = generator.describe_probabilities()   # updated after generation
        summary = run_dataset(generator, rows, args.out, manifest, batch, args.overwrite, lengths_fn,
                              progress=not args.quiet)
    except InferenceError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    failed = summary["failed"]
    print(f"Wrote {summary['written']}/{len(rows)} predictions to {args.out}/predictions.jsonl "
          f"({summary['new']} new, {summary['resumed']} resumed) in {time.time() - t0:.1f}s; "
          f"{summary['tokens_per_s']} tok/s; {summary['hit_max']} hit --max_new_tokens; {len(failed)} failed"
          + (f" (rerun the same command to retry them; first: {failed[0]})" if failed else ""))
    if args.wandb_project:                      # manifest, throughput, latency distribution -> W&B
        import tracking
        try:
            predictions = read_predictions(Path(args.out) / "predictions.jsonl")[0].values()
            tracking.log_inference_run(args.wandb_project, args.out, list(predictions))
        except tracking.TrackingError as exc:
            print(f"Error: {exc}", file=sys.stderr)
            return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
