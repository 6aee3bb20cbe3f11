"""Supervision for causal-LM fine-tuning: (system, user, answer) -> input_ids + labels masked by position,
over-long handling (trim the oldest news weeks, or drop), the audit that counts what happened to every
example, the padding collator and the padding-waste measure; and the training rows themselves (train /
validation rows of a dataset, a carved validation split, human corrections mixed in). Split off
train_lora.py to keep it readable; the HITL DPO stage and tests use it too.
"""
import math
import re
from pathlib import Path

from dataset_io import DatasetError, get_split, length_stats, load_forecast_dataset, rows_of
from prompt import chat_parts, get_style

OVERLONG = "trim"              # trim the oldest news weeks so instruction + answer survive; or "drop" (upstream)
MIN_ANSWER_TOKENS = 32         # a trimmed example keeping fewer answer tokens is dropped instead
SEED = 42


# ---------------------------------------------------------------------------------------------
# Supervision: (system, user, answer) -> input_ids + labels masked by position
# ---------------------------------------------------------------------------------------------
_WEEK_START = re.compile(r"^From \d{4}-\d{2}-\d{2} to \d{4}-\d{2}-\d{2},", re.M)
_AFTER_WEEKS = re.compile(r"^(?:Some recent basic financials|\[Basic Financials\]|Based on all the information)",
                          re.M)


def split_news_weeks(user):
    """(head, [week blocks oldest first], tail) with head + ''.join(weeks) + tail == user.

    >>> head, weeks, tail = split_news_weeks("[Company Introduction]:\\n\\nX\\n\\nFrom 2024-01-07 to "
    ...     "2024-01-14, a.\\n\\nFrom 2024-01-14 to 2024-01-21, b.\\n\\nBased on all the information ...")
    >>> [w[:26] for w in weeks], tail
    (['From 2024-01-07 to 2024-01', 'From 2024-01-14 to 2024-01'], 'Based on all the information ...')
    """
    starts = [m.start() for m in _WEEK_START.finditer(user)]
    if not starts:
        return user, [], ""
    after = _AFTER_WEEKS.search(user, starts[-1])
    end = after.start() if after else len(user)
    bounds = starts + [end]
    return user[:starts[0]], [user[a:b] for a, b in zip(bounds, bounds[1:])], user[end:]


def prompt_token_ids(tokenizer, style, system, user):
    """Prompt tokens exactly as inference tokenizes them (with BOS when the tokenizer adds one)."""
    ids = tokenizer(style.format_prompt(system, user), add_special_tokens=True)["input_ids"]
    if tokenizer.eos_token_id is not None and ids and ids[-1] == tokenizer.eos_token_id \
            and not style.format_prompt(system, user).endswith(tokenizer.eos_token):
        ids = ids[:-1]                          # tokenizers that append EOS to every text
    return list(ids)


def answer_token_ids(tokenizer, style, answer):
    """Answer tokens + the end-of-answer marker (EOS appended by id, so it is always one token)."""
    if style.end_of_answer == "{eos}":
        return list(tokenizer(answer, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
    return list(tokenizer(style.format_answer(answer, tokenizer.eos_token), add_special_tokens=False)["input_ids"])


def fit_prompt(tokenizer, style, system, user, budget):
    """Prompt ids within `budget` tokens by removing the oldest news weeks (keeping the newest one).
    Returns (prompt_ids, weeks_removed)."""
    ids = prompt_token_ids(tokenizer, style, system, user)
    if len(ids) <= budget:
        return ids, 0
    head, weeks, tail = split_news_weeks(user)
    removed = 0
    while len(ids) > budget and len(weeks) - removed > 1:
        removed += 1
        ids = prompt_token_ids(tokenizer, style, system, head + "".join(weeks[removed:]) + tail)
    return ids, removed


def tokenize_example(tokenizer, style, system, user, answer, max_length, overlong=OVERLONG,
                     min_answer_tokens=MIN_ANSWER_TOKENS):
    """One supervised example. Prompt and answer are tokenized separately and concatenated (the prompt
    tokens then match inference exactly); labels are -100 on the prompt positions, the answer tokens
    (end-of-answer marker included) elsewhere.

    Over max_length: overlong="drop" drops it; "trim" removes the oldest news weeks, then cuts the
    answer's tail if still needed (the end marker is lost: a cut answer must not teach stopping), and
    drops it if fewer than min_answer_tokens answer tokens would remain.
    Returns dict(input_ids, attention_mask, labels, prompt_tokens, supervised_tokens, overlong,
    weeks_removed, answer_cut, dropped, reason).
    """
    style = get_style(style)
    prompt_ids = prompt_token_ids(tokenizer, style, system, user)
    answer_ids = answer_token_ids(tokenizer, style, answer)
    info = {"overlong": len(prompt_ids) + len(answer_ids) > max_length, "weeks_removed": 0,
            "answer_cut": False, "dropped": False, "reason": None}
    if info["overlong"]:
        if overlong == "drop":
            return dict(info, dropped=True, reason=f"over --max_length ({len(prompt_ids) + len(answer_ids)} tokens)")
        prompt_ids, info["weeks_removed"] = fit_prompt(tokenizer, style, system, user, max_length - len(answer_ids))
        room = max_length - len(prompt_ids)
        if room < len(answer_ids):
            if room < min_answer_tokens:
                return dict(info, dropped=True, reason=f"prompt of {len(prompt_ids)} tokens after trimming news "
                                                       f"leaves {room} answer tokens")
            answer_ids, info["answer_cut"] = answer_ids[:room], True
    input_ids = prompt_ids + answer_ids
    return dict(info, input_ids=input_ids, attention_mask=[1] * len(input_ids),
                labels=[-100] * len(prompt_ids) + answer_ids, prompt_tokens=len(prompt_ids),
                supervised_tokens=len(answer_ids))


def row_parts(row):
    """(system, user, answer) of a dataset row; public prompts carry Llama-2 markers."""
    return (*chat_parts(row), row["answer"])


class PaddingCollator:
    """Right-pads a batch: pad id on inputs, 0 on the mask, -100 on labels (padding is masked by
    position, so a pad id equal to EOS never hides the supervised final EOS)."""

    def __init__(self, pad_token_id, pad_to_multiple_of=None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features):
        import torch
        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            longest = math.ceil(longest / self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {"input_ids": [], "attention_mask": [], "labels": []}
        for f in features:
            gap = longest - len(f["input_ids"])
            batch["input_ids"].append(list(f["input_ids"]) + [self.pad_token_id] * gap)
            batch["attention_mask"].append(list(f["attention_mask"]) + [0] * gap)
            batch["labels"].append(list(f["labels"]) + [-100] * gap)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}


def tokenize_split(tokenizer, style, rows, max_length, overlong=OVERLONG, desc="tokenize"):
    """(features, audit) of a list of rows; the audit counts what happened to every example."""
    from tqdm import tqdm
    features, dropped, cut, trimmed, weeks_removed, overlong_ids = [], [], [], [], 0, []
    for row in tqdm(rows, desc=desc, unit="ex", leave=False):
        system, user, answer = row_parts(row)
        ex = tokenize_example(tokenizer, style, system, user, answer, max_length, overlong)
        rid = row.get("id", f"{row.get('symbol')}|{row.get('period')}")
        if ex["overlong"]:
            overlong_ids.append(rid)
        if ex["dropped"]:
            dropped.append({"id": rid, "reason": ex["reason"]})
            continue
        if ex["weeks_removed"]:
            trimmed.append(rid)
            weeks_removed += ex["weeks_removed"]
        if ex["answer_cut"]:
            cut.append(rid)
        features.append({"id": rid, "input_ids": ex["input_ids"], "attention_mask": ex["attention_mask"],
                         "labels": ex["labels"], "length": len(ex["input_ids"]),
                         "supervised_tokens": ex["supervised_tokens"]})
    audit = {"examples_in": len(rows), "examples_out": len(features),
             "over_max_length": len(overlong_ids), "trimmed_news": len(trimmed),
             "news_weeks_removed": weeks_removed, "answers_cut": len(cut), "dropped": len(dropped),
             "supervised_tokens_per_example": length_stats([f["supervised_tokens"] for f in features]),
             "tokens_per_example": length_stats([f["length"] for f in features]),
             "examples": {"over_max_length": overlong_ids[:20], "trimmed_news": trimmed[:20],
                          "answers_cut": cut[:20], "dropped": dropped[:20]}}
    return features, audit


def padding_waste(lengths, batch_size, group_by_length, seed=SEED, group_size=None):
    """Share of padded positions over one epoch of micro-batches, with the sampler training uses."""
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler
    if not lengths:
        return 0.0
    gen = torch.Generator().manual_seed(seed)
    if group_by_length and batch_size > 1:
        order = list(LengthGroupedSampler(group_size or batch_size, lengths=list(lengths), generator=gen))
    else:
        order = torch.randperm(len(lengths), generator=gen).tolist()
    real = padded = 0
    for i in range(0, len(order), batch_size):
        batch = [lengths[j] for j in order[i:i + batch_size]]
        real += sum(batch)
        padded += max(batch) * len(batch)
    return round(1 - real / padded, 4)


def format_audit(audit):
    lines = [f"Supervision audit (max_length {audit['max_length']}, over-long examples: {audit['overlong']}, "
             f"tokenizer: {audit['tokenizer']})"]
    for split, a in audit["splits"].items():
        s = a["supervised_tokens_per_example"]
        t = a["tokens_per_example"]
        lines.append(f"  [{split}] examples in {a['examples_in']}, out {a['examples_out']}; over max_length "
                     f"{a['over_max_length']}: trimmed {a['trimmed_news']} (news weeks removed "
                     f"{a['news_weeks_removed']}), answers cut {a['answers_cut']}, dropped {a['dropped']}")
        if s.get("n"):
            lines.append(f"           supervised tokens/example min {s['min']} mean {s['mean']} max {s['max']} "
                         f"(total {s['total']}); tokens/example mean {t['mean']} max {t['max']}")
        for d in a["examples"]["dropped"][:3]:
            lines.append(f"           dropped {d['id']}: {d['reason']}")
    w = audit.get("padding_waste")
    if w:
        lines.append(f"  padding waste at batch {w['batch_size']}: {w['measured_share']:.1%} with "
                     f"{'length-grouped' if w['group_by_length'] else 'random'} batches "
                     f"(random batches: {w['random_share']:.1%})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Training rows: a dataset (+ human corrections) -> train / validation rows -> supervised features + audit
# ---------------------------------------------------------------------------------------------
def carve_validation(dd, weeks):
    """Hold out the last `weeks` periods of train (chronological, all symbols) as validation."""
    from datasets import DatasetDict
    periods = sorted(set(dd["train"]["period"]))
    if weeks <= 0 or len(periods) <= weeks:
        return dd, None
    held = set(periods[-weeks:])
    out = DatasetDict(dict(dd))
    out["validation"] = dd["train"].filter(lambda r: r["period"] in held)
    out["train"] = dd["train"].filter(lambda r: r["period"] not in held)
    return out, f"no validation split: held out the last {weeks} train weeks ({min(held)} ... {max(held)})"


def prepare_data(args):
    """(train rows, validation rows, note) under train_lora.py's flags: lists of dicts. The test split is never
    read. Human-in-the-loop corrections (--hitl_data) are mixed into the train rows here."""
    dd = load_forecast_dataset(args.dataset, from_remote=args.from_remote, cache_dir=args.cache_dir)
    get_split(dd, "train", args.dataset)
    note = None
    if "validation" not in dd and args.evaluation_strategy != "no":
        dd, note = carve_validation(dd, args.validation_weeks)
    train_rows = rows_of(dd["train"])
    val_rows = rows_of(dd["validation"]) if "validation" in dd else []
    if args.hitl_data:
        corrections = hitl_rows(args.hitl_data, {r["id"] for r in val_rows})
        train_rows += [dict(r, id=f"{r['id']}#hitl{k}") for k in range(args.hitl_weight) for r in corrections]
        note = (note + "; " if note else "") + (f"mixed in {len(corrections)} HITL corrections x "
                                                 f"{args.hitl_weight} from {args.hitl_data}")
    if 0 < args.eval_examples < len(val_rows):   # evenly spaced: every symbol and week range stays represented
        step = len(val_rows) / args.eval_examples
        val_rows = [val_rows[int(k * step)] for k in range(args.eval_examples)]
    return train_rows, val_rows, note


def hitl_rows(path, validation_ids):
    """SFT rows of a hitl.py export (DIR/sft or DIR). Corrections of validation examples are allowed (that
    is where reviews happen) but then that example's validation loss is no longer an honest measure: say so."""
    folder = Path(path) / "sft" if (Path(path) / "sft").is_dir() else Path(path)
    try:
        rows = rows_of(load_forecast_dataset(folder)["train"])
    except (DatasetError, KeyError) as exc:
        raise DatasetError(f"--hitl_data {path}: {exc}") from None
    overlap = [r["id"] for r in rows if r["id"] in validation_ids]
    if overlap:
        print(f"note: {len(overlap)} HITL corrections are validation examples (e.g. {overlap[0]}); validation "
              "metrics on them now measure recall of the correction")
    return rows


def build_supervision(args, tokenizer, style, train_rows, val_rows, tokenizer_name):
    """(train features, validation features, audit) under train_lora.py's flags (max_length, overlong,
    batch size): the audit says what happened to every example and how much padding the batches waste."""
    train_feats, train_audit = tokenize_split(tokenizer, style, train_rows, args.max_length, args.overlong,
                                              "tokenize train")
    val_feats, val_audit = tokenize_split(tokenizer, style, val_rows, args.max_length, args.overlong,
                                          "tokenize validation")
    lengths = [f["length"] for f in train_feats]
    group_size = args.batch_size * args.gradient_accumulation_steps
    audit = {"max_length": args.max_length, "overlong": args.overlong, "tokenizer": tokenizer_name,
             "splits": {"train": train_audit, "validation": val_audit},
             "padding_waste": {"batch_size": args.batch_size, "group_by_length": args.group_by_length,
                               "measured_share": padding_waste(lengths, args.batch_size, args.group_by_length,
                                                               args.seed, group_size),
                               "random_share": padding_waste(lengths, args.batch_size, False, args.seed)}}
    return train_feats, val_feats, audit
