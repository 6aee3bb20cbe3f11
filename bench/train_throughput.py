"""Training throughput: our defaults vs upstream's settings, same data, same run; prints the ratio.

CPU (embedded model):   python bench/train_throughput.py --steps 3 --examples 8 --seq_len 512
GPU (8B architecture, random weights from the shipped config; nothing is downloaded):
    python bench/train_throughput.py --arch llama3.1-8b --random_init --seq_len 3072 --steps 5
    python bench/train_throughput.py --arch llama3.1-8b --random_init --seq_len 3072 --gradient_checkpointing

"ours"     = default dtype (bf16 where supported), micro-batch --batch_size, length-grouped batches
"upstream" = fp32 on CPU (upstream's CPU path) / fp16 autocast on GPU, batch 1, no grouping
Throughput does not depend on weight values, so random weights measure the real model's speed.
Tokens/s counts real (non-padding) tokens through forward + backward + optimizer step of a LoRA model.
"""
import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# defaults
ARCH = "smollm2-135m"
STEPS = 3                 # timed optimizer steps per setting (after one warm-up step)
EXAMPLES = 8              # examples per step in total (micro-batches x batch size)
SEQ_LEN = 512             # mean tokens per example; lengths vary +-25 % like real prompts
BATCH_SIZE = 4            # our micro-batch
LORA_R = 8


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default=ARCH, help="registry name whose architecture to use")
    p.add_argument("--random_init", action="store_true", help="build the architecture from the shipped config "
                   "with random weights on the device (GPU mode; no download)")
    p.add_argument("--steps", type=int, default=STEPS, help="timed optimizer steps per setting")
    p.add_argument("--examples", type=int, default=EXAMPLES, help="examples per optimizer step")
    p.add_argument("--seq_len", type=int, default=SEQ_LEN, help="mean tokens per example")
    p.add_argument("--batch_size", type=int, default=BATCH_SIZE, help="our micro-batch size (examples)")
    p.add_argument("--gradient_checkpointing", action="store_true", help="recompute activations (ours)")
    p.add_argument("--only", choices=["ours", "upstream"], help="measure one setting only")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--estimate_only", action="store_true", help="print (and --json) memory.estimate_memory for "
                   "this setting and exit: no torch, no GPU (bench/gpu_check.sh --dry)")
    args = p.parse_args(argv)
    if min(args.steps, args.examples, args.seq_len, args.batch_size) < 1:
        p.error("--steps, --examples, --seq_len and --batch_size must be at least 1")
    return args


def memory_estimate(args, dtype):
    """memory.estimate_memory for "ours": the longest micro-batch (lengths padded to a multiple of 8 when
    batched), LoRA r=8 on the 7 projections with dropout 0.1, autocast as in measure()."""
    import memory
    import models
    spec = models.resolve_model(args.arch)
    longest = max(make_lengths(args.examples, args.seq_len))
    if args.batch_size > 1:
        longest = -(-longest // 8) * 8
    est = memory.estimate_memory(spec.arch_config, dtype, LORA_R, spec.lora_targets, args.batch_size, longest,
                                 args.gradient_checkpointing, lora_dropout=0.1)
    # torch.cuda.max_memory_allocated does not see the CUDA context: compare it with the total without the reserve
    est["allocated_gib"] = round(est["total_gib"] - est["runtime_reserve_gib"], 2)
    est["seq_len"] = longest
    return est


def make_lengths(n, mean, seed=0):
    rng = random.Random(seed)
    return [max(16, int(mean * rng.uniform(0.75, 1.25))) for _ in range(n)]


def batches(lengths, batch_size, grouped):
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i]) if grouped else list(range(len(lengths)))
    return [[lengths[i] for i in order[k:k + batch_size]] for k in range(0, len(order), batch_size)]


def measure(model, device, lengths, batch_size, grouped, steps, autocast_dtype=None, vocab=1000):
    import torch
    from supervision import PaddingCollator
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    collate = PaddingCollator(0, pad_to_multiple_of=8 if batch_size > 1 else None)
    gen = torch.Generator().manual_seed(0)

    def one_step():
        real = padded = 0
        for group in batches(lengths, batch_size, grouped):
            feats = []
            for n in group:
                ids = torch.randint(10, vocab, (n,), generator=gen).tolist()
                feats.append({"input_ids": ids, "attention_mask": [1] * n, "labels": [-100] * (n // 2) + ids[n // 2:]})
            batch = {k: v.to(device) for k, v in collate(feats).items()}
            real += sum(group)
            padded += batch["input_ids"].numel()
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                loss = model(**batch).loss / len(lengths)
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return real, padded

    one_step()                                   # warm-up (allocator, kernels)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    real = padded = 0
    for _ in range(steps):
        r, p = one_step()
        real, padded = real + r, padded + p
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    out = {"tokens_per_s": real / wall, "s_per_step": wall / steps, "padding_waste": 1 - real / padded}
    if device.type == "cuda":
        out["gpu_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def build(args, dtype_name, device):
    from peft import LoraConfig, get_peft_model
    import models
    spec = models.resolve_model(args.arch)
    if args.random_init:
        model = models.build_random_model(spec, dtype_name, device=str(device))
    else:
        model, _, spec = models.load_model(args.arch, dtype=dtype_name)
        model.to(device)
    model.config.use_cache = False
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(r=LORA_R, lora_alpha=16, lora_dropout=0.1,
                                             target_modules=list(spec.lora_targets), task_type="CAUSAL_LM"))
    model.train()
    return model, spec


def main(argv=None):
    args = parse_args(argv)
    if args.estimate_only:
        import memory
        est = memory_estimate(args, "bf16")
        print(f"memory estimate, {args.arch} bf16 LoRA r={LORA_R}, micro-batch {args.batch_size} x {est['seq_len']} "
              f"tokens, checkpointing {'on' if args.gradient_checkpointing else 'off'}: "
              + memory.format_estimate(est) + f" (allocated by torch: {est['allocated_gib']} GiB)")
        if args.json:
            Path(args.json).write_text(json.dumps({"arch": args.arch, "batch_size": args.batch_size,
                                                   "gradient_checkpointing": args.gradient_checkpointing,
                                                   "memory_estimate": est}, indent=2))
        return est
    import torch
    import models
    cuda = torch.cuda.is_available()
    if args.random_init and not cuda and models.resolve_model(args.arch).name != "smollm2-135m":
        print(f"Error: --random_init {args.arch} is a GPU mode (an 8B model needs ~16 GB in bf16); run it on a "
              "CUDA machine", file=sys.stderr)
        sys.exit(1)
    device = torch.device("cuda" if cuda else "cpu")
    lengths = make_lengths(args.examples, args.seq_len)
    ours_dtype = models.default_dtype()
    settings = {
        # on GPU we load bf16 weights (fp16 on pre-Ampere) and autocast; on CPU the weights are the dtype
        "ours": dict(dtype=ours_dtype, batch_size=args.batch_size, grouped=True,
                     autocast=models.torch_dtype(ours_dtype) if cuda and ours_dtype != "fp32" else None),
        "upstream": dict(dtype="fp16" if cuda else "fp32", batch_size=1, grouped=False,
                         autocast=None),
    }
    results = {"arch": args.arch, "device": torch.cuda.get_device_name(0) if cuda else models.environment_info()["cpu"],
               "seq_len": args.seq_len, "examples_per_step": args.examples, "steps": args.steps,
               "gradient_checkpointing": args.gradient_checkpointing, "date": time.strftime("%Y-%m-%d")}
    for name, s in settings.items():
        if args.only and name != args.only:
            continue
        if cuda and name == "upstream" and args.random_init:
            s["dtype"] = "fp16"                  # upstream: fp16 on GPU (DeepSpeed fp16 auto)
        model, spec = build(args, s["dtype"], device)
        vocab = model.config.vocab_size if hasattr(model, "config") else 1000
        r = measure(model, device, lengths, s["batch_size"], s["grouped"], args.steps, s["autocast"], vocab)
        results[name] = dict(r, dtype=s["dtype"], batch_size=s["batch_size"], grouped=s["grouped"])
        if name == "ours" and cuda and s["dtype"] != "fp32":
            est = memory_estimate(args, s["dtype"])
            results[name]["memory_estimate"] = est
            print(f"GPU peak {r['gpu_peak_gib']:.1f} GiB allocated vs estimate {est['allocated_gib']:.1f} GiB "
                  f"({est['allocated_gib'] / r['gpu_peak_gib'] - 1:+.0%})", flush=True)
        print(f"{name:9s} {s['dtype']} batch {s['batch_size']}: {r['tokens_per_s']:.0f} tokens/s, "
              f"{r['s_per_step']:.1f} s/step, padding waste {r['padding_waste']:.1%}"
              + (f", GPU peak {r['gpu_peak_gib']:.1f} GiB" if "gpu_peak_gib" in r else ""), flush=True)
        del model
        if cuda:
            torch.cuda.empty_cache()
    if "ours" in results and "upstream" in results:
        results["ratio_ours_vs_upstream"] = results["ours"]["tokens_per_s"] / results["upstream"]["tokens_per_s"]
        print(f"ratio ours / upstream: {results['ratio_ours_vs_upstream']:.2f}x")
    if cuda and "ours" in results and args.random_init:
        n_params = models.count_parameters(models.resolve_model(args.arch).arch_config)
        # LoRA on a frozen base ~ 4 N FLOPs per token (forward 2N + input gradients 2N; no weight
        # gradients for the base), + 2N recompute with checkpointing: the 12k tok/s = 49 % of 790
        flops = (6 if args.gradient_checkpointing else 4) * n_params * results["ours"]["tokens_per_s"]
        results["model_tflops"] = flops / 1e12
        print(f"~{flops / 1e12:.0f} TFLOP/s of model compute")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
