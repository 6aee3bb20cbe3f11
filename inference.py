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
import os
import sys
import time
from pathlib import Path

import models
import run_import
import runs
import tracking
from dataset_io import read_split
from errors import ForecasterError, check_args, cli
from generation import (GPU_MEMORY_UTILIZATION, TOP_LOGPROBS, HFGenerator, InferenceError, OpenAIGenerator,
                        VLLMGenerator, plan_batches, vllm_max_model_len)
from openai_chat import openai_api_key
from prompt import PROMPT_STYLES, SYSTEM_PROMPT, neutral_instruction, render_prompt, wrap_public_prompt
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
N_WEEKS = 3                       # live forecast: past weeks in the prompt (upstream demo: 1-4)


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------
def load_hf(args):
    """(model, tokenizer, style, dtype name, model name) for the hf backend."""
    model, tokenizer, spec = models.load_model(args.base_model, dtype=args.dtype, load_in_8bit=args.load_in_8bit,
                                               load_in_4bit=args.load_in_4bit, cache_dir=args.cache_dir,
                                               device_map="auto" if _cuda() else None)
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
        return models.environment_info()
    except Exception as exc:  # noqa: BLE001 - a manifest detail must not stop a run
        import platform
        return {"python": platform.python_version(), "error": f"{type(exc).__name__}: {exc}"}


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
def run_dataset(generator, rows, out, manifest, batch_size, overwrite=False, lengths_fn=None, progress=True):
    """Generate for every row not yet in out/predictions.jsonl; write run.json (runs.RunWriter owns the format).
    Returns a summary dict."""
    from tqdm import tqdm
    writer = runs.RunWriter(out, manifest, len(rows), overwrite)
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
    except ForecasterError as exc:              # no such symbol, no prices then, a source that cannot answer
        raise InferenceError(f"--ticker {args.ticker}: {exc}") from None
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
        problems += tracking.wandb_problems("--wandb_project")   # a key or WANDB_MODE=offline: never a prompt
    return problems


def import_outputs(args):
    """--backend file: run_import.py reads and joins the file; run_dataset writes the run dir."""
    t0 = time.time()
    plan = run_import.plan_import(args.outputs, args.dataset, args.split, args.columns, args.prompt_style,
                                  args.base_model, args.out, args.overwrite)
    if plan.unchanged:
        print(f"{args.out} already holds this import of {args.outputs}; nothing changed")
        return 0
    run_dataset(plan.generator(), plan.rows, args.out, plan.manifest, max(1, len(plan.rows)), args.overwrite,
                progress=False)
    lines = run_import.summary_lines(plan, args.out)
    lines[0] += f" in {time.time() - t0:.1f}s"
    print("\n".join(lines))
    return 0


# ---------------------------------------------------------------------------------------------
# Backends: each builds its generator and says what run.json records about it
# ---------------------------------------------------------------------------------------------
class Backend:
    """A built backend: the generator, run.json's model fields, the batch (resume) size, the token lengths
    batches are planned by (hf), and how p_up is computed (`probabilities`)."""

    def __init__(self, generator, model, style=None, dtype=None, batch=1, lengths_fn=None, probabilities=None):
        self.generator, self.model, self.style, self.dtype = generator, model, style, dtype
        self.batch, self.lengths_fn, self.probabilities = batch, lengths_fn, probabilities


def hf_backend(args, rows):
    model, tokenizer, style, dtype, model_name = load_hf(args)
    generator = HFGenerator(model, tokenizer, style, args.max_new_tokens, args.temperature, args.top_p,
                            args.samples, args.seed, args.bin_probs)
    probabilities = {"p_up": ("up share of the --samples votes" if args.samples > 1 else
                              "P(up words) / P(up + down words) at the Prediction line's direction token; absent "
                              "(null) where the answer has no Prediction direction word"),
                     "p_bins": args.bin_probs}
    return Backend(generator, model_name, style.name, dtype, args.batch_size, generator.token_lengths, probabilities)


def vllm_backend(args, rows):
    spec = models.resolve_model(args.base_model)
    style = runs.style_for(args.adapter, spec.prompt_style, override=args.prompt_style)
    tokenizer = models.load_tokenizer(spec, args.cache_dir)
    max_model_len = vllm_max_model_len(tokenizer, style, rows, args.max_new_tokens,
                                       spec.arch_config.get("max_position_embeddings"))
    generator = VLLMGenerator(models.model_source(spec, args.cache_dir), style, args.adapter, args.dtype,
                              args.max_new_tokens, args.temperature, args.top_p, max_model_len=max_model_len,
                              gpu_memory_utilization=args.gpu_memory_utilization)
    probabilities = {
        "p_up": f"vLLM top-k logprobs (SamplingParams(logprobs={TOP_LOGPROBS})) at the Prediction line's direction "
                "token: sum P(up variants) / (sum P(up) + sum P(down)) over the top k; null where the answer has no "
                "Prediction direction word or no up/down variant is in the top k",
        "top_logprobs": TOP_LOGPROBS, "p_bins": False}
    return Backend(generator, spec.name, style.name, args.dtype, VLLM_CHUNK, probabilities=probabilities)


def openai_backend(args, rows):
    generator = OpenAIGenerator(args.base_model, args.base_url, _api_key(args), args.max_new_tokens,
                                args.temperature, args.top_p, args.timeout, args.max_retries, args.batch_size,
                                logprobs=args.logprobs)
    return Backend(generator, args.base_model, batch=args.batch_size,
                   probabilities=generator.describe_probabilities())    # updated after generation


BACKENDS = {"hf": hf_backend, "vllm": vllm_backend, "openai": openai_backend}   # --backend file: import_outputs


def run_manifest(args, backend, fingerprint, dataset_path):
    """run.json's settings: what was run, on what, how (runs.RunWriter adds the totals)."""
    env = environment()
    return {
        "model": backend.model, "adapter": str(Path(args.adapter).resolve()) if args.adapter else None,
        "prompt_style": backend.style, "backend": args.backend, "batch_size": backend.batch, "dtype": backend.dtype,
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
        "probabilities": backend.probabilities,
    }


@cli
def main(argv=None):
    args = parse_args(argv)
    check_args(validate_args(args))
    if args.backend == "file":
        return import_outputs(args)
    if args.base_model is None:
        args.base_model = (runs.adapter_base_model(args.adapter) if args.adapter else None) or BASE_MODEL
    if args.ticker:
        return live_forecast(args)
    t0 = time.time()
    rows, fingerprint, dataset_path, _ = read_split(args.dataset, args.split, args.limit, args.weeks)
    if not rows:
        raise InferenceError(f"{args.dataset} [{args.split}] has no rows")
    backend = BACKENDS[args.backend](args, rows)
    manifest = run_manifest(args, backend, fingerprint, dataset_path)
    summary = run_dataset(backend.generator, rows, args.out, manifest, backend.batch, args.overwrite,
                          backend.lengths_fn, progress=not args.quiet)
    failed = summary["failed"]
    print(f"Wrote {summary['written']}/{len(rows)} predictions to {args.out}/predictions.jsonl "
          f"({summary['new']} new, {summary['resumed']} resumed) in {time.time() - t0:.1f}s; "
          f"{summary['tokens_per_s']} tok/s; {summary['hit_max']} hit --max_new_tokens; {len(failed)} failed"
          + (f" (rerun the same command to retry them; first: {failed[0]})" if failed else ""))
    if args.wandb_project:                      # manifest, throughput, latency distribution -> W&B
        predictions = read_predictions(Path(args.out) / "predictions.jsonl")[0].values()
        tracking.log_inference_run(args.wandb_project, args.out, list(predictions))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
