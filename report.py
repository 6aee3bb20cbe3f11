r"""Research report: dataset + training logs + inference runs (+ comparison, reviews) -> report.md,
a self-contained report.html and the figures beside them.

    python report.py --dataset data/sample-demo --train_dirs runs/demo/lora \
        --runs runs/demo/base-test runs/demo/lora-test --out report/
    python report.py --dataset DIR --comparison runs/compare --reviews runs/demo/reviews.sqlite --out report/

Sections: 1 hardware and environment, 2 dataset, 3 fine-tuning, 4 evaluation, 5 human review, 6 findings.
Every number is read from what the stages recorded (environment.json / run.json, build.json, args.json,
audit.json, timing.json, trainer_state.json, metrics.json, the review db); the machine the report runs on
is described only with --describe_this_machine. A section without its input is left out with one line
naming the flag that would fill it. report.html embeds its figures as data URIs: no external URL.
"""
# This script checks the inputs and assembles the report; report_sections.py (sections 1, 2, 3, 5) and
# report_evaluation.py (4, 6) build the sections, report_document.py renders them.
import argparse
import sys
import time
from pathlib import Path

from comparison_files import write_outputs
from dataset_io import DatasetError, load_forecast_dataset
from errors import ForecasterError, check_args, cli
from report_document import Document, to_html, to_markdown
from report_evaluation import evaluation_section, findings_section, signal_section
from report_sections import (dataset_section, find_export, first_model, hardware_section, hitl_section, read_json,
                             training_section)
from review_store import HitlError, ReviewStore
from runs import RunError
from scoring import ComparisonError, compare

# ---------------------------------------------------------------------------------------------
# Defaults (CLI flags mirror these one to one)
# ---------------------------------------------------------------------------------------------
OUT = "report"
TOKENIZER = "auto"          # auto = the first model's tokenizer (first train dir, else first run); chars = characters
FIGURE_DPI = 110
EXAMPLE_CHARS = 1500        # per answer in the side-by-side examples; full texts stay in predictions.jsonl
SECTION_TITLES = {1: "Hardware and environment", 2: "Dataset", 3: "Fine-tuning", 4: "Evaluation",
                  5: "Human review (HITL)", 6: "Findings"}


class ReportError(ForecasterError, ValueError):
    """A user mistake or unusable input: printed as one `Error:` line."""


# ---------------------------------------------------------------------------------------------
# Inputs of the evaluation
# ---------------------------------------------------------------------------------------------
def load_metrics(comparison_dir, runs, out):
    """metrics.json of --comparison, or compare() over --runs written to OUT/comparison. Returns (metrics, dir)."""
    if comparison_dir:
        return read_json(Path(comparison_dir) / "metrics.json"), Path(comparison_dir)
    target = Path(out) / "comparison"
    try:
        report, details = compare(runs)
    except (ComparisonError, RunError) as exc:      # the flag that named the runs, in front of the reason
        raise ReportError(f"--runs: {exc}") from None
    write_outputs(report, details, target)
    return read_json(target / "metrics.json"), target


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", help="dataset folder from data_pipeline.py (build.json beside it is read too)")
    ap.add_argument("--train_dirs", nargs="+", default=[], metavar="DIR", help="adapter folders from train_lora.py")
    ap.add_argument("--runs", nargs="+", default=[], metavar="RUN_DIR", help="run dirs from inference.py; scored "
                    "with scoring.compare() (comparison.py's core) into OUT/comparison unless --comparison is given")
    ap.add_argument("--comparison", metavar="DIR", help="a comparison.py --out folder (metrics.json and plots)")
    ap.add_argument("--reviews", metavar="DB", help="review SQLite file from hitl.py serve (read only)")
    ap.add_argument("--hitl_export", metavar="JSON", help="export.json of hitl.py export (default: one found "
                    "next to --reviews or in a folder beside it)")
    ap.add_argument("--out", default=OUT, help="report folder: report.md, report.html and the PNG figures")
    ap.add_argument("--tokenizer", default=TOKENIZER, help="lengths in tokens of this model (registry name, hub id, "
                    "folder); auto = the first model's; chars = characters")
    ap.add_argument("--describe_this_machine", action="store_true",
                    help="also describe the machine building the report (section 1 otherwise shows only what "
                         "training/inference recorded)")
    ap.add_argument("--title", default="Stock-movement forecasting with LoRA: research report", help="report title")
    return ap.parse_args(argv)


def check_inputs(args):
    """Every problem with the inputs, at once, before anything is computed. Returns (problems, dataset, build)."""
    problems = []
    if not any([args.dataset, args.train_dirs, args.runs, args.comparison, args.reviews, args.describe_this_machine]):
        problems.append("nothing to report: pass --dataset, --train_dirs, --runs, --comparison or --reviews")
    for d in args.train_dirs:
        if not any((Path(d) / f).is_file() for f in ("args.json", "trainer_state.json", "timing.json")):
            problems.append(f"--train_dirs {d}: no args.json, trainer_state.json or timing.json (a train_lora.py "
                            "--output_dir)")
    for r in args.runs:
        missing = [f for f in ("predictions.jsonl", "run.json") if not (Path(r) / f).is_file()]
        if missing:
            problems.append(f"--runs {r}: no {' or '.join(missing)} (an inference.py --out folder)")
    if args.comparison and not (Path(args.comparison) / "metrics.json").is_file():
        problems.append(f"--comparison {args.comparison}: no metrics.json (a comparison.py --out folder)")
    if args.reviews:
        try:
            ReviewStore.read_only(args.reviews)
        except HitlError as exc:
            problems.append(f"--reviews {exc}")
    if args.hitl_export and not Path(args.hitl_export).is_file():
        problems.append(f"--hitl_export {args.hitl_export}: no such file")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        problems.append(f"--out {args.out}: is a file, not a folder")
    dd = build = None
    if args.dataset:
        try:
            dd = load_forecast_dataset(args.dataset)
            build = read_json(Path(args.dataset) / "build.json")
        except DatasetError as exc:
            problems.append(f"--dataset: {exc}")
    return problems, dd, build


@cli
def main(argv=None):
    started = time.time()
    args = parse_args(argv)
    problems, dd, build = check_inputs(args)
    check_args(problems)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = Document(out, SECTION_TITLES, FIGURE_DPI, EXAMPLE_CHARS)
    hardware_section(doc, args.train_dirs, args.runs, build, args.describe_this_machine)
    dataset_section(doc, args.dataset, dd, build, args.tokenizer, first_model(args.train_dirs, args.runs))
    training_section(doc, args.train_dirs)
    metrics, comparison_dir = (load_metrics(args.comparison, args.runs, out)
                               if args.comparison or args.runs else (None, None))
    contamination = evaluation_section(doc, metrics, comparison_dir, args.runs, args.train_dirs, dd, build)
    signal_section(doc, metrics, comparison_dir)
    hitl_section(doc, args.reviews, find_export(args.reviews, args.hitl_export) if args.reviews else None)
    findings_section(doc, metrics, contamination)
    (out / "report.md").write_text(to_markdown(doc, args.title))
    (out / "report.html").write_text(to_html(doc, args.title))
    print(f"{out / 'report.md'}\n{out / 'report.html'}")
    print(f"report: sections {', '.join(map(str, doc.sections))}" + (f" (left out: {', '.join(map(str, doc.omitted))})"
                                                                     if doc.omitted else "")
          + f", {len(doc.figures)} figures, in {time.time() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
