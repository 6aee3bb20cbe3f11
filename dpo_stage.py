"""The DPO stage of the human-in-the-loop loop: `train_lora.py --dpo DIR --adapter SFT_DIR`.

Preference pairs exported by `hitl.py export` (DIR/dpo: prompt, chosen, rejected, plus style, system,
user) train the SFT adapter further with TRL's DPOTrainer. The reference model is the SFT adapter
itself, frozen: the adapter is loaded trainable and passed without a peft_config, and TRL copies it into
a frozen "ref" adapter (not the bare base model, which would pull the policy back towards the base).
Pairs exported in another prompt style are re-formatted into the adapter's style, so DPO sees exactly
the prompt the adapter is used with at inference.
"""
import json
import time
from pathlib import Path

from errors import ForecasterError
from models import default_dtype, environment_info, load_model, process_rank, training_engine
from prompt import PromptStyle, get_style

DPO_BETA = 0.1                  # TRL's default KL strength


class DPOError(ForecasterError, ValueError):
    """A DPO stage that cannot start as asked (no pairs, no adapter): one `Error:` line."""


def load_pairs(path):
    """The exported pairs (DIR/dpo, DIR itself, or a .jsonl) as a Dataset."""
    from datasets import Dataset, DatasetDict, load_from_disk
    p = Path(path)
    if (p / "dpo").is_dir():
        p = p / "dpo"
    if p.suffix == ".jsonl" and p.is_file():
        pairs = Dataset.from_json(str(p))
    elif p.is_dir():
        loaded = load_from_disk(str(p))
        pairs = loaded["train"] if isinstance(loaded, DatasetDict) else loaded
    else:
        raise DPOError(f"--dpo {path}: no DPO export there (run `python hitl.py export --db DB --out DIR` and pass DIR)")
    missing = {"prompt", "chosen", "rejected"} - set(pairs.column_names)
    if missing:
        raise DPOError(f"--dpo {path}: missing column(s) {', '.join(sorted(missing))}")
    if len(pairs) == 0:
        raise DPOError(f"--dpo {path}: holds no pairs")
    return pairs


def restyle_pairs(pairs, style):
    """Re-format pairs exported in another prompt style into `style` (from their system/user columns)."""
    def convert(row):
        old = get_style(row.get("style") or style.name)
        if old.name == style.name:
            return {"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"]}
        if not row.get("user"):
            raise ValueError(f"pair {row.get('id')}: exported in style {old.name} without system/user parts; "
                             f"cannot re-format it for {style.name}")
        old_end = old.end_of_answer.format(eos="")
        strip = (lambda t: t[: -len(old_end)] if old_end and t.endswith(old_end) else t)
        return {"prompt": style.format_prompt(row.get("system") or "", row["user"]),
                "chosen": style.format_answer(strip(row["chosen"])),
                "rejected": style.format_answer(strip(row["rejected"]))}
    try:
        return pairs.map(convert, remove_columns=pairs.column_names, desc="format pairs")
    except ValueError as exc:
        raise DPOError(str(exc)) from None


def dpo_config(args, dtype):
    """TRL's DPOConfig from train_lora.py's flags: the same DeepSpeed config (--ds_config) and the same
    non-reentrant gradient checkpointing as the SFT stage (the reentrant kind needs inputs that require
    grad, which a frozen base's embeddings do not give, so LoRA layers could get no gradient)."""
    import torch
    from trl import DPOConfig
    cuda = torch.cuda.is_available()
    return DPOConfig(
        output_dir=args.output_dir, run_name=args.run_name, seed=args.seed, beta=args.dpo_beta,
        per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.learning_rate, num_train_epochs=args.num_epochs, max_steps=args.max_steps,
        max_length=args.max_length, logging_steps=args.log_interval, save_steps=args.save_steps,
        save_total_limit=args.save_total_limit, report_to=[r for r in args.report_to.split(",") if r and r != "none"]
        or "none", use_cpu=not cuda, bf16=cuda and dtype == "bf16", fp16=cuda and dtype == "fp16",
        gradient_checkpointing=args.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if args.gradient_checkpointing else None,
        deepspeed=args.ds_config, dataloader_num_workers=0)


def run_dpo(args):
    """Train args.adapter (an SFT LoRA adapter dir) on the pairs in args.dpo; write args.output_dir (rank 0)."""
    from peft import PeftModel
    from trl import DPOTrainer

    started = time.time()
    adapter = Path(args.adapter or "")
    if not (adapter / "adapter_config.json").is_file():
        raise DPOError(f"--adapter {args.adapter}: not a LoRA adapter folder (train one with train_lora.py first)")
    style = PromptStyle.load(adapter) if (adapter / "prompt_style.json").is_file() else None
    if style is None:
        raise DPOError(f"--adapter {args.adapter}: no prompt_style.json beside the adapter")
    pairs = restyle_pairs(load_pairs(args.dpo), style)
    base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    dtype = args.dtype or default_dtype()
    model, tokenizer, _ = load_model(base, dtype=dtype, cache_dir=args.cache_dir, prompt_style=style.name)
    model = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
    trainer = DPOTrainer(model=model, ref_model=None, args=dpo_config(args, dtype), train_dataset=pairs,
                         processing_class=tokenizer)
    result = trainer.train()
    out = Path(args.output_dir)
    wall = time.time() - started
    timing = {"train_wall_s": round(wall, 1), "global_step": result.global_step,
              "training_loss": result.training_loss, "engine": training_engine(trainer)}
    if process_rank() != 0:                     # every rank holds the same LoRA weights: rank 0 writes
        return {"output_dir": str(out), "pairs": len(pairs), "global_step": result.global_step, "timing": timing}
    model.peft_config["default"].base_model_name_or_path = base      # the registry name, not a local path
    model.save_pretrained(str(out), selected_adapters=["default"])   # not the frozen "ref" copy
    tokenizer.save_pretrained(str(out))
    style.save(out)
    trainer.save_state()
    (out / "args.json").write_text(json.dumps({"args": vars(args), "stage": "dpo", "base_model": base,
                                               "sft_adapter": str(adapter), "pairs": len(pairs), "dtype": dtype,
                                               "prompt_style": style.name}, indent=2, default=str))
    (out / "environment.json").write_text(json.dumps(environment_info(), indent=2))
    (out / "timing.json").write_text(json.dumps(timing, indent=2))
    print(f"DPO adapter written to {out}: {len(pairs)} pairs, {result.global_step} steps, final loss "
          f"{result.training_loss:.4f}, reference = the SFT adapter {adapter} (frozen), {wall / 60:.1f} min "
          f"({timing['engine']['distributed_type']}, {timing['engine']['world_size']} rank(s))")
    return {"output_dir": str(out), "pairs": len(pairs), "global_step": result.global_step, "timing": timing}
