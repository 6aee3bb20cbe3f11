"""Compare inference runs: one metrics row per run, baselines, week-clustered uncertainty, plots.

    python comparison.py runs/base runs/lora --out runs/compare
    python comparison.py runs/student --reference runs/teacher --out runs/vs-teacher

Each RUN_DIR is what inference.py writes (predictions.jsonl + run.json; `--backend file` imports outputs
made elsewhere); the run's name is its folder name. Runs are scored on the ids they all share. Written to
--out: metrics.json (everything), metrics.md (the table, printed at the end), metrics.csv (one row per run
and baseline), per_sample.csv (one row per run and id), confusion_<run>.csv (12 bins) and accuracy.png,
rouge.png, rouge_distribution.png, latency.png.

Why clustered by week: a test split is a few weeks x many stocks, and stocks move together within a week,
so 300 rows are nowhere near 300 independent trials. The CI resamples whole weeks; the test against the
majority baseline flips the sign of whole weeks' differences.
"""
import argparse
import sys
import time
from pathlib import Path

import signals
import tracking
from clustered_stats import BOOTSTRAP_SAMPLES, SEED
from comparison_files import write_outputs
from errors import check_args, cli
# the comparison core lives in scoring.py, its files in comparison_files.py (report.py uses both)
from scoring import PER_SAMPLE_FIELDS, compare  # noqa: F401 - tests/test_run_import.py reads comparison.PER_SAMPLE_FIELDS


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="folders written by inference.py --out")
    ap.add_argument("--out", required=True, help="folder for metrics.json/.md/.csv and plots")
    ap.add_argument("--reference", default=None, metavar="RUN_DIR",
                    help="score texts against this run's outputs instead of the dataset answers")
    ap.add_argument("--dataset", default=None, help="dataset for baselines and weekly returns "
                    "(default: the path in the first run's run.json)")
    ap.add_argument("--split", default=None, help="dataset split the runs were made on (default: from run.json)")
    ap.add_argument("--bootstrap", type=int, default=BOOTSTRAP_SAMPLES, help="week-blocked bootstrap resamples")
    ap.add_argument("--seed", type=int, default=SEED, help="seed for the bootstrap")
    ap.add_argument("--cost_bps", type=float, default=signals.COST_BPS,
                    help="backtest: cost per unit of turnover, in basis points")
    ap.add_argument("--top_k", type=int, default=signals.TOP_K, help="backtest: tickers long and short in the "
                    "top-k / bottom-k strategy (capped at half of each week's forecasts)")
    ap.add_argument("--wandb_project", default=None, metavar="NAME", help="also log the metrics table and "
                    "per-sample scores to this W&B project (WANDB_API_KEY or WANDB_MODE=offline)")
    return ap.parse_args(argv)


def validate_args(args):
    """Every problem with the arguments, at once."""
    problems = [f"{d}: not a folder" for d in [*args.run_dirs, *([args.reference] if args.reference else [])]
                if not Path(d).is_dir()]
    if args.bootstrap < 100:
        problems.append(f"--bootstrap {args.bootstrap}: use at least 100 resamples")
    if args.cost_bps < 0 or args.top_k < 1:
        problems.append(f"--cost_bps {args.cost_bps:g} / --top_k {args.top_k}: cost must be >= 0 and k >= 1")
    if args.wandb_project:
        problems += tracking.wandb_problems("--wandb_project")   # a key or WANDB_MODE=offline: never a prompt
    return problems


@cli
def main(argv=None):
    args = parse_args(argv)
    t0 = time.time()
    check_args(validate_args(args))
    report, details = compare(args.run_dirs, args.reference, args.dataset, args.split, args.bootstrap, args.seed,
                              args.cost_bps, args.top_k)
    md, plots = write_outputs(report, details, args.out)
    print(md)
    if report["signal_settings"]["warning"]:
        print(f"Warning: {report['signal_settings']['warning']}")
    print(f"Compared {len(args.run_dirs)} run(s) on {report['n_ids']} shared ids ({report['weeks']} weeks) "
          f"-> {args.out}/metrics.{{json,md,csv}} + {', '.join(plots)} in {time.time() - t0:.1f}s")
    if args.wandb_project:                      # metrics table + per-sample scores -> W&B
        tracking.log_comparison_run(args.wandb_project, args.out, args.run_dirs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
