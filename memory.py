"""GPU memory of one LoRA / QLoRA training step, term by term: the dry run's "fits / does not fit".

    from memory import estimate_memory, verdict
    from models import LLAMA_LORA_TARGETS, MODELS
    est = estimate_memory(MODELS["llama3.1-8b"].arch_config, "fp16", 8, LLAMA_LORA_TARGETS, 1, 2048,
                          gradient_checkpointing=True, load_in_4bit=True)
    verdict(est["total_gib"], 15.0)                   # -> (True, margin in GiB)

peak = weights + LoRA adapter/grads/AdamW + activations saved for backward
       + max(logits peak, one layer recomputed [checkpointing only]) + CUDA runtime reserve

Every term follows what the libraries do (transformers 5 Llama/Qwen2, peft 0.21 LoRA, torch autocast as
the Trainer runs it with bf16/fp16, bitsandbytes nf4/int8, peft's prepare_model_for_kbit_training).
tests/test_memory.py checks the weights term against the parameter bytes of a loaded model, the
activation term against the bytes saved for backward (torch.autograd.graph.saved_tensors_hooks) and the
logits term against the live bytes of a training step, on CPU (a tiny Llama-architecture model, and the
embedded SmolLM2-135M as train_lora.build_model builds it); bench/gpu_check.sh compares the total with torch.cuda.max_memory_allocated on a GPU.
Symbols below: h hidden, q = heads x head_dim, kv = kv_heads x head_dim, i intermediate, V vocabulary,
T tokens of a micro-batch (batch x --max_length), r LoRA rank.
"""
import math

from models import count_parameters, lora_parameters

# Hardware presets. gpu_memory_gib = the card's memory as torch.cuda reports it (nvidia-smi MiB / 1024); the
# dry run compares memory.estimate_memory with it (README "Memory estimate" has the per-model verdicts).
PRESETS = {
    # T4 (15.0 GiB, no bf16 -> fp16): an 8B model fits only as 4-bit QLoRA + checkpointing at 2048 tokens
    # (~13.5-13.8 GiB); at 4096 the fp32 logits alone would take 5.9 GiB more
    "colab-t4": dict(load_in_4bit=True, dtype="fp16", gradient_checkpointing=True, max_length=2048,
                     batch_size=1, gradient_accumulation_steps=16, gpu_memory_gib=15.0),
    # L4 ("24 GB" = 22.5 GiB, bf16): bf16 weights (15 GiB) + 4k-token logits (5.9 GiB) + reserve leave no
    # margin, so 4-bit QLoRA + checkpointing keeps upstream's 4096 tokens with ~4.5 GiB to spare
    "l4-24g": dict(load_in_4bit=True, dtype="bf16", gradient_checkpointing=True, max_length=4096,
                   batch_size=1, gradient_accumulation_steps=16, gpu_memory_gib=22.5),
    # A100-40GB: 8B bf16 weights (15 GiB) + 2 x 4k tokens need checkpointing (~30-31 GiB)
    "a100-40g": dict(dtype="bf16", gradient_checkpointing=True, max_length=4096, batch_size=2,
                     gradient_accumulation_steps=8, gpu_memory_gib=40.0),
    # H100 80GB (79.6 GiB): holds 4k-token activations without checkpointing (~53 GiB; about 1/3 faster)
    "h100-80g": dict(dtype="bf16", gradient_checkpointing=False, max_length=4096, batch_size=1,
                     gradient_accumulation_steps=16, gpu_memory_gib=79.6),
    # A100-80GB: the same memory and bf16 as the H100, so the same settings (its own entry so a runtime
    # check can name the card); upstream users ran 8-bit there, which bf16 LoRA does not need (~53 GiB)
    "a100-80g": dict(dtype="bf16", gradient_checkpointing=False, max_length=4096, batch_size=1,
                     gradient_accumulation_steps=16, gpu_memory_gib=80.0),
    # H200 (140.4 GiB): two 4k-token examples per micro-batch without checkpointing (~96 GiB)
    "h200-141g": dict(dtype="bf16", gradient_checkpointing=False, max_length=4096, batch_size=2,
                      gradient_accumulation_steps=8, gpu_memory_gib=140.4),
    # the embedded model on a laptop/CI CPU
    "cpu": dict(max_length=1024, batch_size=1, gradient_accumulation_steps=4, eval_steps=10, save_steps=10),
}
TARGET_MODELS = ("llama3.1-8b", "deepseek-r1-distill-llama-8b", "qwen2.5-7b-instruct")   # the dry run's verdict table


# ---------------------------------------------------------------------------------------------
# Constants (each a decision or a library fact; see the README "Memory estimate" section)
# ---------------------------------------------------------------------------------------------
GIB = 2 ** 30
NF4_BLOCK = 64                # bitsandbytes 4-bit blocksize: one absmax per 64 weights
NF4_NESTED_BLOCK = 256        # double quantization: the absmaxes are 8-bit, one fp32 scale per 256 of them
ADAPTER_BYTES_PER_PARAM = 16  # LoRA weights are fp32 (peft autocast_adapter_dtype): weight 4 + grad 4 + AdamW 2 x 4
LOGIT_BYTES_PER_ENTRY = 12    # per token per vocabulary entry at the peak (log_softmax backward): the fp32 log-softmax
#                               saved for backward + its incoming gradient + the outgoing gradient (3 x 4 bytes);
#                               forward peaks lower (half logits 2 + fp32 upcast 4 + log-softmax 4). Measured on CPU.
LOGITS_SAVED_BYTES = 4        # of those, saved for backward from the forward pass (the fp32 log-softmax)
RUNTIME_RESERVE_GIB = 1.0     # CUDA context (~0.3-0.5 GiB), cuBLAS workspaces, allocator rounding: outside
#                               torch.cuda.max_memory_allocated but inside the card's memory
DROPOUT_MASK_BYTES = {"cuda": 1, "cpu": 4}   # CUDA's fused dropout saves a bool mask; CPU saves the fp32 noise
#                               (peft casts the LoRA input to the fp32 adapter dtype before dropout)
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


def linear_shapes(arch):
    """(in_features, out_features) of the 7 projections of one Llama/Qwen2-shaped decoder layer."""
    h, i = arch["hidden_size"], arch["intermediate_size"]
    heads, kv_heads = arch["num_attention_heads"], arch.get("num_key_value_heads") or arch["num_attention_heads"]
    d = arch.get("head_dim") or h // heads
    return {"q_proj": (h, heads * d), "k_proj": (h, kv_heads * d), "v_proj": (h, kv_heads * d),
            "o_proj": (heads * d, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def parameter_split(arch):
    """(parameters in the 7 projections' weights, all other parameters: embeddings, lm_head, norms, biases)."""
    n = arch["num_hidden_layers"]
    shapes = linear_shapes(arch)
    linear = n * sum(a * b for a, b in shapes.values())
    h = arch["hidden_size"]
    other = arch["vocab_size"] * h * (1 if arch.get("tie_word_embeddings") else 2) + (2 * n + 1) * h
    if arch.get("model_type") == "qwen2":                     # q/k/v biases stay unquantized
        other += n * sum(shapes[p][1] for p in ("q_proj", "k_proj", "v_proj"))
    return linear, other


def lora_parameter_count(arch, r, targets):
    """Trainable LoRA parameters: r x (in + out) per targeted projection per layer (models.lora_parameters)."""
    return lora_parameters(arch, r, tuple(targets))


def weight_bytes(arch, dtype, load_in_8bit=False, load_in_4bit=False, prepared=True):
    """Bytes of the base model's weights on the GPU.

    bf16/fp16/fp32: every parameter at that width. 4-bit nf4 (double quantization): the projections'
    weights packed two per byte + one 8-bit absmax per 64 weights + one fp32 scale per 256 absmaxes;
    8-bit: one byte per weight + an fp32 scale per output row. Everything else (embeddings, lm_head,
    norms, biases) stays at the load dtype, and peft's prepare_model_for_kbit_training (`prepared`)
    casts it to fp32: for Llama-3.1-8B that is 1.05 G parameters going from 2 to 4 bytes (+2 GiB)."""
    linear, other = parameter_split(arch)
    width = DTYPE_BYTES[dtype]
    if not (load_in_4bit or load_in_8bit):
        return (linear + other) * width
    other_bytes = other * (4 if prepared else width)
    if load_in_4bit:
        per_layer = 0
        for a, b in linear_shapes(arch).values():
            blocks = math.ceil(a * b / NF4_BLOCK)
            per_layer += math.ceil(a * b / 2) + blocks + 4 * math.ceil(blocks / NF4_NESTED_BLOCK)
        return arch["num_hidden_layers"] * per_layer + other_bytes
    rows = arch["num_hidden_layers"] * sum(b for _, b in linear_shapes(arch).values())
    return linear + 4 * rows + other_bytes


def activation_bytes(arch, dtype, r, targets, micro_batch, seq_len, gradient_checkpointing,
                     quantized=False, lora_dropout=0.1, device="cuda"):
    """Bytes held for backward after the forward pass (what saved_tensors_hooks sees), without the
    log-softmax (that is in the logits term), plus one layer's worth recomputed under checkpointing.

    Returns {"saved": bytes, "per_layer": bytes of one decoder layer, "recompute": bytes}.
    Widths: s = the residual stream (fp32 after prepare_model_for_kbit_training, which casts the
    embeddings and norms to fp32; else the weights' dtype), c = the compute dtype (autocast bf16/fp16,
    or fp32), m = the dropout mask. Per token, per decoder layer:
      2 RMSNorms             2 x (4h + 4)      the fp32 upcast of the input and the fp32 rsqrt
      each LoRA projection   (m + c) d_in + c r  the dropout mask, the compute-dtype copy lora_A keeps,
                                                 lora_B's r-wide input (frozen base layers keep nothing)
      attention (SDPA)       c (2q + 2kv) + 4 heads   q, k, v, output, fp32 logsumexp; with a padded
                                                 micro-batch (batch > 1) k, v are repeated to q's width
      SwiGLU MLP             3 s i             gate output, SiLU output, up output
    per layer: the autocast copies of the fp32 LoRA weights (c bytes each) and, with padding, the SDPA
    mask converted to the compute dtype (batch x T^2 x c). The first layer's input (frozen embeddings)
    needs no gradient, so its first RMSNorm and its q/k/v dropout masks are not kept. Per step: the
    final RMSNorm, cos/sin, int64 labels, and a compute-dtype copy of an fp32 lm_head (QLoRA) that the
    lm_head matmul keeps. Checkpointing keeps only each layer's input (s h per token) and recomputes
    one layer at a time in backward. 8-bit is modelled like 4-bit (the same fp32 stream after kbit
    preparation); bitsandbytes' int8 matmul keeps its input outside autograd's saved tensors, so only a
    step's live peak can check it: on CPU it was 9 % under this estimate (BENCHMARKS.md).
    """
    h, i, n, vocab = (arch["hidden_size"], arch["intermediate_size"], arch["num_hidden_layers"],
                      arch["vocab_size"])
    heads = arch["num_attention_heads"]
    kv_heads = arch.get("num_key_value_heads") or heads
    d = arch.get("head_dim") or h // heads
    q_width, kv_width = heads * d, kv_heads * d
    padded = micro_batch > 1                                  # padding mask -> SDPA repeats k/v, keeps a mask
    if padded:
        kv_width = q_width
    c = DTYPE_BYTES[dtype]
    s = 4 if (quantized or dtype == "fp32") else DTYPE_BYTES[dtype]
    m = DROPOUT_MASK_BYTES[device] if lora_dropout > 0 else 0
    autocast = dtype != "fp32"
    shapes = linear_shapes(arch)
    tokens = micro_batch * seq_len

    norm = 4 * h + 4
    lora = sum((m + c) * shapes[t][0] + c * r for t in targets if t in shapes)
    attention = c * (2 * q_width + 2 * kv_width) + 4 * heads
    mlp = 3 * s * i
    per_token = 2 * norm + lora + attention + mlp
    weight_copies = c * lora_parameter_count(dict(arch, num_hidden_layers=1), r, targets) if autocast else 0
    mask = micro_batch * seq_len * seq_len * c if padded else 0
    per_layer = tokens * per_token + weight_copies + mask

    qkv = [t for t in ("q_proj", "k_proj", "v_proj") if t in targets]
    first_layer_saving = tokens * (norm + m * h * len(qkv)) + (c * r * h * len(qkv) if autocast else 0)
    lm_head_copy = vocab * h * c if (autocast and quantized) else 0
    head = tokens * (norm + 2 * d * s + 8) + lm_head_copy
    if gradient_checkpointing:
        saved = n * tokens * h * s + head
        recompute = per_layer
    else:
        saved = n * per_layer - first_layer_saving + head
        recompute = 0
    return {"saved": saved, "per_layer": per_layer, "recompute": recompute}


def logits_bytes(vocab_size, tokens):
    """(peak bytes, bytes saved for backward) of the loss over `tokens` tokens: transformers upcasts the
    logits to fp32 and cross-entropy keeps the fp32 log-softmax; its backward holds two more fp32 copies."""
    return LOGIT_BYTES_PER_ENTRY * vocab_size * tokens, LOGITS_SAVED_BYTES * vocab_size * tokens


def estimate_memory(arch, dtype, r, targets, micro_batch, seq_len, gradient_checkpointing,
                    load_in_8bit=False, load_in_4bit=False, lora_dropout=0.1, device="cuda"):
    """Peak GPU memory of one training step at `seq_len` tokens per example (use --max_length: a batch of
    the longest examples is what must fit). Returns the terms in GiB (and counts), plus total_gib."""
    quantized = load_in_8bit or load_in_4bit
    weights = weight_bytes(arch, dtype, load_in_8bit, load_in_4bit)
    lora = lora_parameter_count(arch, r, targets)
    acts = activation_bytes(arch, dtype, r, targets, micro_batch, seq_len, gradient_checkpointing, quantized,
                            lora_dropout, device)
    logits_peak, _ = logits_bytes(arch["vocab_size"], micro_batch * seq_len)
    transient = max(logits_peak, acts["recompute"])
    out = {"parameters": count_parameters(arch), "lora_parameters": lora, "tokens": micro_batch * seq_len,
           "weights_gib": weights / GIB, "adapter_and_optimizer_gib": lora * ADAPTER_BYTES_PER_PARAM / GIB,
           "activations_gib": acts["saved"] / GIB, "logits_gib": logits_peak / GIB,
           "recompute_gib": acts["recompute"] / GIB, "runtime_reserve_gib": RUNTIME_RESERVE_GIB}
    out["total_gib"] = (weights + lora * ADAPTER_BYTES_PER_PARAM + acts["saved"] + transient) / GIB \
        + RUNTIME_RESERVE_GIB
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()}


def verdict(total_gib, gpu_gib):
    """(fits, margin in GiB): margin = the card's memory minus the estimate (negative = short by)."""
    margin = round(gpu_gib - total_gib, 1)
    return margin >= 0, margin


def format_estimate(est, gpu_gib=None):
    """One line: the terms and, with a GPU size, the verdict."""
    line = (f"weights {est['weights_gib']:.2f} + adapter/AdamW {est['adapter_and_optimizer_gib']:.2f} + activations "
            f"{est['activations_gib']:.2f} + max(logits {est['logits_gib']:.2f}, recompute {est['recompute_gib']:.2f})"
            f" + CUDA reserve {est['runtime_reserve_gib']:.1f} = {est['total_gib']:.2f} GiB")
    if gpu_gib:
        fits, margin = verdict(est["total_gib"], gpu_gib)
        line += (f" -> fits in {gpu_gib} GiB ({margin:+.1f} GiB margin)" if fits
                 else f" -> does not fit in {gpu_gib} GiB (short by {-margin:.1f} GiB)")
    return line


def preset_table(presets, models, r, targets=None, lora_dropout=0.1):
    """Rows (preset, model, settings, estimate, GPU GiB, fits, margin) for every preset that names its GPU
    memory x every model with an architecture config. `presets`: name -> dict of train_lora.py settings
    (dtype, load_in_4bit/8bit, gradient_checkpointing, max_length, batch_size, gpu_memory_gib)."""
    rows = []
    for preset, settings in presets.items():
        gpu = settings.get("gpu_memory_gib")
        if not gpu:
            continue
        for name, spec in models.items():
            arch = spec.arch_config
            est = estimate_memory(arch, settings.get("dtype", "bf16"), r, targets or spec.lora_targets,
                                  settings.get("batch_size", 1), settings.get("max_length", 4096),
                                  settings.get("gradient_checkpointing", False), settings.get("load_in_8bit", False),
                                  settings.get("load_in_4bit", False), lora_dropout)
            fits, margin = verdict(est["total_gib"], gpu)
            rows.append({"preset": preset, "model": name, "settings": settings, "estimate": est,
                         "gpu_memory_gib": gpu, "fits": fits, "margin_gib": margin})
    return rows


def describe_settings(settings):
    quant = "4-bit" if settings.get("load_in_4bit") else "8-bit" if settings.get("load_in_8bit") else \
        settings.get("dtype", "bf16")
    ckpt = "ckpt" if settings.get("gradient_checkpointing") else "no ckpt"
    return f"{quant}, {ckpt}, {settings.get('max_length', 4096)} tok x {settings.get('batch_size', 1)}"


def format_preset_table(rows):
    """A Markdown table: preset, GPU, settings, model, estimate, verdict."""
    lines = ["| preset | GPU GiB | settings | model | estimate GiB | verdict |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        verdict_text = (f"fits ({row['margin_gib']:+.1f} GiB)" if row["fits"]
                        else f"does not fit (short {-row['margin_gib']:.1f} GiB)")
        lines.append(f"| {row['preset']} | {row['gpu_memory_gib']} | {describe_settings(row['settings'])} | "
                     f"{row['model']} | {row['estimate']['total_gib']:.1f} | {verdict_text} |")
    return "\n".join(lines)
