"""Export of human reviews (the review DB, see review_store.py) as training data for the next fine-tune:

    python hitl.py export --db reviews.sqlite --out DIR

DIR/sft: SFT corrections in our dataset format (train_lora.py --hitl_data DIR); DIR/dpo + DIR/dpo.jsonl:
preference pairs in TRL's format (train_lora.py --dpo DIR --adapter SFT_DIR); DIR/export.json: counts,
flagged edits and inter-reviewer agreement. A library module: hitl.py's `export` command calls it, and
report.py reuses `agreement`. It reads the db only through review_store (read only).
"""
import json
import shutil
from collections import Counter, defaultdict
from itertools import combinations
from pathlib import Path

from prompt import _PREDICTION_LINE_RE, PromptStyle, parse_answer, split_public_prompt
from review_store import DPO_COLUMNS, RATING_SCALE, SFT_COLUMNS, HitlError, ReviewStore, now

# ---------------------------------------------------------------------------------------------
# Defaults (hitl.py export's --min_mean_rating and --include_hindsight_edits mirror these)
# ---------------------------------------------------------------------------------------------
MIN_MEAN_RATING_FOR_SFT = 4.0    # a preferred answer joins the SFT set only when reviewers rate it this well
INCLUDE_HINDSIGHT_EDITS = False  # Prediction-only edits made after the reveal teach the outcome, not analysis


# ---------------------------------------------------------------------------------------------
# Export: reviews -> SFT corrections + DPO pairs (pure functions over store records, then files)
# ---------------------------------------------------------------------------------------------
def changes_only_prediction(original, edited):
    """True when an edit differs from the original only in its Prediction line.

    >>> changes_only_prediction("x\\nPrediction: Up by 1-2%\\nAnalysis: y",
    ...                         "x\\nPrediction: Down by 0-1%\\nAnalysis: y")
    True
    >>> changes_only_prediction("x\\nPrediction: Up by 1-2%", "x (fixed)\\nPrediction: Down by 0-1%")
    False
    """
    def rest(text):
        return " ".join(_PREDICTION_LINE_RE.sub("", text).split())   # the parser's Prediction line
    return rest(original) == rest(edited) and original.strip() != edited.strip()


def cohen_kappa(pairs):
    """Cohen's kappa of two raters over [(label_1, label_2), ...]; None when undefined.

    >>> cohen_kappa([("A", "A"), ("B", "B"), ("A", "B"), ("B", "B")])
    0.5
    """
    if not pairs:
        return None
    n = len(pairs)
    observed = sum(a == b for a, b in pairs) / n
    first, second = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    expected = sum(first[k] * second[k] for k in first) / (n * n)
    return None if expected == 1 else round((observed - expected) / (1 - expected), 4)


def agreement(judgements):
    """judgements = {example_id: {reviewer: label}} -> percent agreement over all reviewer pairs on
    shared examples, and Cohen's kappa per reviewer pair."""
    by_pair = defaultdict(list)
    for per_reviewer in judgements.values():
        for r1, r2 in combinations(sorted(per_reviewer), 2):
            by_pair[(r1, r2)].append((per_reviewer[r1], per_reviewer[r2]))
    all_pairs = [p for pairs in by_pair.values() for p in pairs]
    return {"examples_with_several_reviewers": sum(len(v) > 1 for v in judgements.values()),
            "percent_agreement": round(100 * sum(a == b for a, b in all_pairs) / len(all_pairs), 1)
            if all_pairs else None,
            "pairs": [{"reviewers": list(k), "examples": len(v), "cohen_kappa": cohen_kappa(v),
                       "percent_agreement": round(100 * sum(a == b for a, b in v) / len(v), 1)}
                      for k, v in sorted(by_pair.items())]}


def build_export(runs, examples, reviews, min_mean_rating=MIN_MEAN_RATING_FOR_SFT,
                 include_hindsight_edits=INCLUDE_HINDSIGHT_EDITS):
    """Store records -> (sft_rows, dpo_rows, report). Rules:

    SFT, one row per example: the latest well-formed corrected answer; else the preferred output when
    its mean rating over reviewers >= min_mean_rating (with one run, the only output counts as preferred).
    DPO: preferred vs other output when every reviewer who chose agrees (ties and conflicts dropped);
    each well-formed edit vs the original it corrects. Edits that change only the Prediction line after
    the reveal are flagged and left out (of DPO, and of SFT: their analysis still argues the old call)
    unless include_hindsight_edits.
    """
    styles = {r["slot"]: PromptStyle(**{**json.loads(r["style"]), "stop_strings": tuple(
        json.loads(r["style"]).get("stop_strings", ()))}) for r in runs}
    reviews_of = defaultdict(list)
    for r in reviews:
        reviews_of[r["example_id"]].append(r)
    counts = Counter()
    flagged, sft, dpo, preferences, ratings_agreement = [], [], [], {}, {}
    for e in examples:
        mine = reviews_of.get(e["id"])
        if not mine:
            continue
        counts["examples reviewed"] += 1
        system, user = split_public_prompt(e["prompt"])

        def pair(style_slot, chosen, rejected, source, who):
            style = styles[style_slot]
            dpo.append({"prompt": style.format_prompt(system, user), "chosen": style.format_answer(chosen),
                        "rejected": style.format_answer(rejected), "style": style.name, "system": system,
                        "user": user, "id": e["id"], "source": source, "reviewers": ",".join(who)})

        corrections = []
        for r in sorted(mine, key=lambda r: r["updated_at"]):
            for slot in e["outputs"]:
                edited = r.get(f"edit_{slot}")
                if not edited:
                    continue
                counts["edits"] += 1
                if not parse_answer(edited).ok:
                    counts["edits dropped: not well-formed"] += 1
                    continue
                original = e["outputs"][slot]
                if r.get(f"edit_{slot}_after_reveal") and changes_only_prediction(original, edited):
                    counts["edits flagged: Prediction line only, after the reveal"] += 1
                    flagged.append({"id": e["id"], "reviewer": r["reviewer"], "slot": slot})
                    if not include_hindsight_edits:
                        continue
                corrections.append(edited)
                pair(slot, edited, original, "edit", [r["reviewer"]])
        chosen_slots = {r["reviewer"]: r["preference"] for r in mine if r.get("preference")}
        if chosen_slots:
            preferences[e["id"]] = chosen_slots
        votes = set(chosen_slots.values())
        preferred = None
        if len(e["outputs"]) == 1:
            preferred = next(iter(e["outputs"]))
        elif votes == {"tie"}:
            counts["preferences dropped: tie"] += 1
        elif len(votes) > 1:
            counts["preferences dropped: conflicting"] += 1
        elif votes:
            preferred = votes.pop()
            other = next(s for s in e["outputs"] if s != preferred)
            if e["outputs"][preferred].strip() != e["outputs"][other].strip():
                # formatted for run A, the model being improved; rows carry system/user to re-format
                pair("A", e["outputs"][preferred], e["outputs"][other], "preference", sorted(chosen_slots))
        per_slot = {s: {r["reviewer"]: r[f"rating_{s}"] for r in mine if r.get(f"rating_{s}")} for s in e["outputs"]}
        for s, given in per_slot.items():
            if len(given) > 1:
                ratings_agreement[f"{e['id']}|{s}"] = {k: v for k, v in given.items()}
        answer, source = None, None
        if corrections:
            answer, source = corrections[-1], "correction"
            if len(set(corrections)) > 1:
                counts["examples with several corrections (latest kept)"] += 1
        elif preferred and per_slot[preferred]:
            mean = sum(per_slot[preferred].values()) / len(per_slot[preferred])
            if mean >= min_mean_rating and parse_answer(e["outputs"][preferred]).ok:
                answer, source = e["outputs"][preferred], "preferred answer"
        if answer:
            counts[f"SFT rows from {source}s"] += 1
            sft.append({"prompt": e["prompt"], "answer": answer, "period": e["period"], "label": e["label"],
                        "symbol": e["symbol"], "id": e["id"]})
    counts["DPO pairs from preferences"] = sum(p["source"] == "preference" for p in dpo)
    counts["DPO pairs from edits"] = sum(p["source"] == "edit" for p in dpo)
    report = {"counts": dict(counts), "sft_rows": len(sft), "dpo_pairs": len(dpo), "flagged_edits": flagged,
              "agreement": {"preferences": agreement(preferences),
                            "ratings_exact": agreement(ratings_agreement)},
              "settings": {"min_mean_rating": min_mean_rating, "include_hindsight_edits": include_hindsight_edits},
              "styles": {s: st.name for s, st in styles.items()}}
    return sft, dpo, report


def export_problems(db_path, out_dir, min_mean_rating=MIN_MEAN_RATING_FOR_SFT, overwrite=False):
    """Every reason `export` would refuse, at once, before anything is written: (problems, store).
    Reads only the db (read only) and the --out folder's listing."""
    problems, store = [], None
    try:
        store = ReviewStore.read_only(db_path)
    except HitlError as exc:
        problems.append(f"--db {exc}")
    if store is not None:
        reviews, split_of = store.reviews(), store.example_splits()
        if not reviews:
            problems.append(f"--db {db_path}: holds no reviews yet (review some examples with `hitl.py serve "
                            f"--db {db_path}` first)")
        on_test = sorted({r["example_id"] for r in reviews if split_of.get(r["example_id"]) == "test"})
        if on_test:
            problems.append(f"{len(on_test)} reviewed example(s) are from the test split (e.g. {on_test[0]!r}); "
                            "review validation or train runs so the test split stays clean for the comparison")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        problems.append(f"--out {out_dir}: is a file, not a folder")
    elif out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        problems.append(f"--out {out_dir} is not empty; pass --overwrite to replace it")
    low, high = min(RATING_SCALE), max(RATING_SCALE)
    if not low <= min_mean_rating <= high:
        problems.append(f"--min_mean_rating {min_mean_rating} is outside the {low}-{high} rating scale")
    return problems, store


def export(db_path, out_dir, min_mean_rating=MIN_MEAN_RATING_FOR_SFT,
           include_hindsight_edits=INCLUDE_HINDSIGHT_EDITS, overwrite=False):
    """Write OUT/sft (DatasetDict, split train), OUT/dpo (DatasetDict, split train) + OUT/dpo.jsonl,
    OUT/export.json. Refuses reviews of test-split examples; never writes to the db."""
    problems, store = export_problems(db_path, out_dir, min_mean_rating, overwrite)
    if problems:
        raise HitlError("; ".join(problems))
    from datasets import Dataset, DatasetDict, Features, Value
    from datasets.utils.logging import disable_progress_bar
    disable_progress_bar()   # the summary printed at the end is what users read
    db_path, out_dir = Path(db_path), Path(out_dir)
    examples, reviews = store.examples(), store.reviews()
    sft, dpo, report = build_export(store.runs(), examples, reviews, min_mean_rating, include_hindsight_edits)
    for stale in ("sft", "dpo"):
        shutil.rmtree(out_dir / stale, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows, columns in (("sft", sft, SFT_COLUMNS), ("dpo", dpo, DPO_COLUMNS)):
        features = Features({c: Value("string") for c in columns})
        ds = Dataset.from_dict({c: [r[c] for r in rows] for c in columns}, features=features)
        DatasetDict({"train": ds}).save_to_disk(str(out_dir / name))
    with open(out_dir / "dpo.jsonl", "w") as f:
        for row in dpo:
            f.write(json.dumps({c: row[c] for c in DPO_COLUMNS}) + "\n")
    report |= {"db": str(db_path), "exported_at": now(),
               "runs": [{"slot": r["slot"], "run_dir": r["run_dir"]} for r in store.runs()]}
    (out_dir / "export.json").write_text(json.dumps(report, indent=2))
    return report


def format_report(report, out_dir):
    lines = [f"Exported {report['sft_rows']} SFT rows and {report['dpo_pairs']} DPO pairs to {out_dir}"]
    lines += [f"  {k}: {v}" for k, v in sorted(report["counts"].items())]
    for name, a in report["agreement"].items():
        if a["examples_with_several_reviewers"]:
            kappas = ", ".join(f"{'/'.join(p['reviewers'])} kappa {p['cohen_kappa']}" for p in a["pairs"])
            lines.append(f"  agreement on {name.replace('_', ' ')}: {a['percent_agreement']}% over "
                         f"{a['examples_with_several_reviewers']} examples with several reviewers ({kappas})")
    return "\n".join(lines)
