"""Throughput of inference.py's batched generation against one-at-a-time `generate` (upstream's pattern).

    python bench/eval_throughput.py                                   # CPU: embedded model, 32 sample prompts
    python bench/eval_throughput.py --dtype bf16 --n 16 --max_new_tokens 32
    python bench/eval_throughput.py --gpu                             # GPU: 8B architecture, random weights
    python bench/eval_throughput.py --p_up [--bin_probs] [--adapter runs/demo/lora] --n 8 --max_new_tokens 256

CPU mode runs the same HFGenerator both ways (batch_size prompts per call, length-sorted, left padding vs
one prompt per call) on the embedded model and prints the speed-up and how many texts agree exactly
(greedy; in fp32 they should all agree, in bf16 left padding shifts the numerics, so it is reported).
GPU mode builds the Llama-3.1-8B architecture with random weights (nothing can be downloaded there),
feeds random prompts of --prompt_tokens and forces --new_tokens per answer; one-at-a-time is timed on
--single_n prompts and extrapolated to --n. --p_up / --bin_probs time the same batched generation without
direction probabilities, with p_up (the LogitsProcessor) and with p_up + p_bins (12 label continuations from
the KV cache), `--repeats` rounds each (the fastest round counts: the machine may be shared), and print the
time ratios, how many texts are identical (the probe must not change greedy text) and how many answers had
a Prediction direction word (only those are scored for p_bins). Record results in BENCHMARKS.md.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# ---------------------------------------------------------------------------------------------
# Defaults (CLI flags mirror these one to one)
# ---------------------------------------------------------------------------------------------
DATASET = "data/sample-demo"      # make demo builds it (data_pipeline.py --source sample)
SPLIT = "test"
N = 32                            # CPU: prompts; GPU: the 300 x (3k in / 500 out) workload of the issue
BATCH_SIZE = 8
MAX_NEW_TOKENS = 64               # CPU: enough to time decoding; answers are longer in real runs
DTYPE = "fp32"
GPU_N, GPU_BATCH_SIZE = 300, 32
PROMPT_TOKENS, NEW_TOKENS = 3000, 500
SINGLE_N = 4                      # GPU: one-at-a-time prompts actually timed (then extrapolated)
GPU_MODEL = "llama3.1-8b"
THREADS = 0                       # CPU torch threads; 0 = torch's default


def bench_rows(args, torch):
    """The first --n rows of the split (torch threads set first), or None after one Error: line."""
    from dataset_io import DatasetError, read_split
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return read_split(args.dataset, args.split, limit=args.n)[0]
    except DatasetError as exc:
        print(f"Error: {exc} (the sample: python data_pipeline.py --source sample --teacher offline "
              f"--out {DATASET})", file=sys.stderr)
        return None


def cpu_bench(args):
    import torch
    import models
    from generation import HFGenerator, plan_batches
    from prompt import get_style
    from tqdm import tqdm
    rows = bench_rows(args, torch)
    if rows is None:
        return 1
    model, tokenizer, spec = models.load_model("smollm2-135m", dtype=args.dtype)
    gen = HFGenerator(model, tokenizer, get_style(spec.prompt_style), args.max_new_tokens)
    lengths = gen.token_lengths(rows)
    gen.generate(rows[:1])                                      # warm-up, not timed
    t0 = time.time()
    batched = {}
    for batch in tqdm(plan_batches(rows, args.batch_size, lengths), desc="batched", unit="batch"):
        for row, res in zip(batch, gen.generate(batch)):
            batched[row["id"]] = res
    t_batched = time.time() - t0
    t0 = time.time()
    single = {row["id"]: gen.generate([row])[0] for row in tqdm(rows, desc="one at a time", unit="ex")}
    t_single = time.time() - t0
    agree = sum(batched[i][0] == single[i][0] for i in single)
    tok_b = sum(r[1] for r in batched.values())
    tok_s = sum(r[1] for r in single.values())
    print(f"embedded smollm2-135m {args.dtype}, {len(rows)} prompts (mean {sum(lengths) / len(lengths):.0f} tokens), "
          f"max_new_tokens {args.max_new_tokens}, torch threads {torch.get_num_threads()}")
    print(f"  one at a time : {t_single:7.1f} s  {tok_s / t_single:6.1f} tok/s")
    print(f"  batched (bs {args.batch_size}): {t_batched:7.1f} s  {tok_b / t_batched:6.1f} tok/s")
    print(f"speed-up {t_single / t_batched:.1f}x wall ({(tok_b / t_batched) / (tok_s / t_single):.1f}x tok/s); "
          f"texts identical {agree}/{len(rows)}")
    return 0


def probs_bench(args):
    import torch
    import models
    from generation import HFGenerator, plan_batches
    from runs import style_for
    rows = bench_rows(args, torch)
    if rows is None:
        return 1
    device_map = "auto" if torch.cuda.is_available() else None
    model, tokenizer, spec = models.load_model(args.base_model, dtype=args.dtype, device_map=device_map)
    if args.adapter:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, args.adapter)
    style = style_for(args.adapter, spec.prompt_style)
    modes = {"plain": dict(p_up=False), "p_up": dict(p_up=True)}
    if args.bin_probs:
        modes["p_up + p_bins"] = dict(bin_probs=True)
    gens = {m: HFGenerator(model, tokenizer, style, args.max_new_tokens, **kw) for m, kw in modes.items()}
    batches = plan_batches(rows, args.batch_size, gens["plain"].token_lengths(rows))
    gens["p_up"].generate(rows[:1])                              # warm-up, not timed
    # wall time, and on CPU also process CPU time: on a shared machine the wall time mostly measures the
    # neighbours, the CPU time of a 1-thread run (--threads 1) measures this work
    best, best_cpu, outputs = {m: float("inf") for m in modes}, {m: float("inf") for m in modes}, {}
    for round_ in range(args.repeats):
        for m, gen in gens.items():
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t0, c0 = time.time(), time.process_time()
            outputs[m] = {r["id"]: res for batch in batches for r, res in zip(batch, gen.generate(batch))}
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            wall, cpu = time.time() - t0, time.process_time() - c0
            best[m], best_cpu[m] = min(best[m], wall), min(best_cpu[m], cpu)
            print(f"  round {round_ + 1}: {m:14s} {wall:7.1f} s wall  {cpu:7.1f} s CPU", flush=True)
    found = sum(res.extra.get("p_up") is not None for res in outputs["p_up"].values())
    tokens = sum(res[1] for res in outputs["plain"].values())
    print(f"{args.base_model}{' + ' + args.adapter if args.adapter else ''} {args.dtype}, {len(rows)} prompts, "
          f"batch {args.batch_size}, max_new_tokens {args.max_new_tokens} ({tokens} tokens generated), "
          f"torch threads {torch.get_num_threads()}, fastest of {args.repeats} rounds")
    for m in modes:
        same = sum(outputs[m][i][0] == outputs["plain"][i][0] for i in outputs["plain"])
        print(f"  {m:14s}: {best[m]:7.1f} s wall (ratio {best[m] / best['plain']:.3f}x)  {best_cpu[m]:7.1f} s CPU "
              f"(ratio {best_cpu[m] / best_cpu['plain']:.3f}x)  texts identical to plain {same}/{len(rows)}")
    print(f"answers with a Prediction direction word (p_up found): {found}/{len(rows)}")
    return 0


def gpu_bench(args):
    import torch
    import models
    if not torch.cuda.is_available():
        print("Error: --gpu needs a CUDA GPU", file=sys.stderr)
        return 1
    torch.manual_seed(0)
    model = models.build_random_model(args.model, dtype="bf16", device="cuda").eval()
    vocab = model.config.vocab_size
    prompts = torch.randint(100, vocab - 100, (args.n, args.prompt_tokens), device="cuda")
    kwargs = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "do_sample": False,
              "pad_token_id": 0, "eos_token_id": None}

    def run(batch):
        with torch.inference_mode():
            out = model.generate(input_ids=batch, attention_mask=torch.ones_like(batch), **kwargs)
        return out.shape[1] - batch.shape[1]

    run(prompts[:1, :64])                                     # warm-up
    torch.cuda.synchronize()
    t0 = time.time()
    for k in range(args.single_n):
        run(prompts[k:k + 1])
    torch.cuda.synchronize()
    per_single = (time.time() - t0) / args.single_n
    t0 = time.time()
    done = 0
    for k in range(0, args.n, args.batch_size):
        run(prompts[k:k + args.batch_size])
        done += min(args.batch_size, args.n - k)
        print(f"  batched {done}/{args.n} ({time.time() - t0:.0f} s)", flush=True)
    torch.cuda.synchronize()
    t_batched = time.time() - t0
    gpu = torch.cuda.get_device_name(0)
    print(f"{args.model} architecture, random weights, bf16 on {gpu}; {args.n} x ({args.prompt_tokens} in / "
          f"{args.new_tokens} out); peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    print(f"  one at a time : {per_single:.2f} s/example (timed on {args.single_n}) -> "
          f"{per_single * args.n / 60:.1f} min for {args.n}; {args.new_tokens / per_single:.0f} tok/s")
    print(f"  batched (bs {args.batch_size}): {t_batched / 60:.1f} min for {args.n}; "
          f"{args.n * args.new_tokens / t_batched:.0f} tok/s")
    print(f"speed-up {per_single * args.n / t_batched:.1f}x")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--gpu", action="store_true", help="GPU mode: 8B architecture with random weights")
    ap.add_argument("--dataset", default=DATASET, help="CPU mode: dataset with prompts")
    ap.add_argument("--split", default=SPLIT, help="CPU mode: split")
    ap.add_argument("--n", type=int, default=None, help=f"prompts (default {N} CPU, {GPU_N} GPU)")
    ap.add_argument("--batch_size", type=int, default=None,
                    help=f"prompts per generate call (default {BATCH_SIZE} CPU, {GPU_BATCH_SIZE} GPU)")
    ap.add_argument("--max_new_tokens", type=int, default=MAX_NEW_TOKENS, help="CPU mode: tokens per answer, at most")
    ap.add_argument("--dtype", default=DTYPE, choices=("fp32", "bf16"), help="CPU mode: dtype")
    ap.add_argument("--threads", type=int, default=THREADS, help="CPU mode: torch threads (0 = default)")
    ap.add_argument("--model", default=GPU_MODEL, help="GPU mode: registry entry whose architecture is built")
    ap.add_argument("--p_up", action="store_true", help="time generation with / without the p_up LogitsProcessor")
    ap.add_argument("--bin_probs", action="store_true", help="with --p_up: also time p_up + p_bins")
    ap.add_argument("--base_model", default="smollm2-135m", help="--p_up mode: model (registry name, hub id, folder)")
    ap.add_argument("--adapter", default=None, help="--p_up mode: LoRA adapter (answers in the trained format)")
    ap.add_argument("--repeats", type=int, default=2, help="--p_up mode: timed rounds per mode (fastest counts)")
    ap.add_argument("--prompt_tokens", type=int, default=PROMPT_TOKENS, help="GPU mode: tokens per prompt")
    ap.add_argument("--new_tokens", type=int, default=NEW_TOKENS, help="GPU mode: tokens generated per prompt")
    ap.add_argument("--single_n", type=int, default=SINGLE_N, help="GPU mode: one-at-a-time prompts timed")
    args = ap.parse_args(argv)
    args.n = args.n or (GPU_N if args.gpu else N)
    args.batch_size = args.batch_size or (GPU_BATCH_SIZE if args.gpu else BATCH_SIZE)
    if args.n < 1 or args.batch_size < 1 or args.single_n < 1:
        print("Error: --n, --batch_size and --single_n must be at least 1", file=sys.stderr)
        return 1
    if args.p_up or args.bin_probs:
        return probs_bench(args)
    return gpu_bench(args) if args.gpu else cpu_bench(args)


if __name__ == "__main__":
    sys.exit(main())
