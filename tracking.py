"""Weights & Biases for every stage: training, inference and comparison runs in one W&B project.

Who logs where:
    train_lora.py   --report_to auto (default): TensorBoard, plus W&B when it can log without asking for
                    anything: WANDB_API_KEY in the environment or .env (or a `wandb login` in ~/.netrc), or
                    WANDB_MODE=offline. Without either it prints one note and keeps TensorBoard only.
                    The run carries the resolved arguments, model spec, dataset path + fingerprint,
                    supervision audit, memory estimate and git commit as config; train/eval loss, the
                    validation task metrics, tokens/s and peak memory on one step axis
                    (train/global_step); a generations table per evaluation; the adapter as an artifact
                    with --wandb_log_model.
    inference.py    --wandb_project NAME: the run's manifest, throughput and latency distribution.
    comparison.py   --wandb_project NAME: the metrics table (one row per run and baseline) and the
                    per-sample scores.

A run's W&B folder lives in the stage's output folder (<out>/wandb/offline-run-...; WANDB_DIR overrides),
and wandb_run.json beside the outputs names it (id, project, mode, URL), so report.py can list runs
without the network (wandb_reader.py reads them back). Offline runs upload later with `wandb sync <folder>`.
"""
import csv
import importlib.util
import json
import netrc
import os
import re
import resource
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

from dataset_io import DatasetError, dataset_fingerprint, load_forecast_dataset
from errors import ForecasterError

# ---------------------------------------------------------------------------------------------
# Defaults
# ---------------------------------------------------------------------------------------------
PROJECT = "fingpt-forecaster"          # WANDB_PROJECT or --wandb_project win
ENV_KEYS = ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_ENTITY")   # taken from .env when not in the environment
DEFAULT_HOST = "https://api.wandb.ai"
RUN_FILE = "wandb_run.json"            # beside a stage's outputs: which W&B run logged it
PROMPT_EXCERPT_CHARS = 240             # of the user prompt, in the generations table (head and tail)
OUTPUT_CHARS = 4000                    # of each generated answer in tables (W&B cells stay readable)
AUDIT_EXAMPLE_LISTS = "examples"       # audit.json's per-id lists stay in the file, not in the W&B config


class TrackingError(ForecasterError, RuntimeError):
    """W&B was asked for but cannot log (missing key, no package, init failed): one Error line."""


# ---------------------------------------------------------------------------------------------
# Who may log: keys, modes, --report_to
# ---------------------------------------------------------------------------------------------
def load_wandb_env():
    """WANDB_API_KEY / WANDB_PROJECT / WANDB_ENTITY from a .env file (searched from the current folder
    upward) into the environment, where wandb reads them; values already in the environment win."""
    try:
        from dotenv import dotenv_values, find_dotenv
    except ImportError:
        return
    path = find_dotenv(usecwd=True)
    if not path:
        return
    for key, value in dotenv_values(path).items():
        if key in ENV_KEYS and value and not os.environ.get(key):
            os.environ[key] = value


def wandb_mode():
    """WANDB_MODE normalised: online | offline | disabled | '' (unset)."""
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    return {"dryrun": "offline", "run": "online"}.get(mode, mode)


def _netrc_has_key():
    """`wandb login` stores the key in ~/.netrc under the API host; read it without asking anything."""
    host = urlparse(os.environ.get("WANDB_BASE_URL") or DEFAULT_HOST).hostname
    path = os.environ.get("NETRC") or Path.home() / ".netrc"
    try:
        return bool(netrc.netrc(str(path)).authenticators(host))
    except (OSError, netrc.NetrcParseError):
        return False


def has_credentials():
    load_wandb_env()
    return bool(os.environ.get("WANDB_API_KEY", "").strip()) or _netrc_has_key()


def wandb_installed():
    return importlib.util.find_spec("wandb") is not None


def can_log_silently():
    """True when wandb would start a run without prompting: offline, disabled, or a key is known."""
    return wandb_mode() in ("offline", "disabled") or has_credentials()


def reporters(report_to):
    """['tensorboard', 'wandb'] from 'tensorboard,wandb'; 'none' and blanks dropped."""
    return [r.strip() for r in (report_to or "").split(",") if r.strip() and r.strip() != "none"]


def resolve_report_to(report_to):
    """(report_to, note) for train_lora.py's --report_to. 'auto' becomes 'tensorboard,wandb' when W&B can
    log without asking (a key in the environment / .env / netrc, or WANDB_MODE=offline), else
    'tensorboard' with a one-line note saying why. Explicit values are returned unchanged."""
    if report_to != "auto":
        return report_to, None
    mode = wandb_mode()
    if mode == "disabled":
        return "tensorboard", None
    if not (mode == "offline" or has_credentials()):
        return "tensorboard", ("W&B is off: no WANDB_API_KEY in the environment or .env, so training logs to "
                               "TensorBoard only (set WANDB_API_KEY, or WANDB_MODE=offline for a local W&B run)")
    if not wandb_installed():
        return "tensorboard", "W&B is off: wandb is not installed (pip install wandb); logging to TensorBoard only"
    return "tensorboard,wandb", None


def wandb_problems(flag):
    """Why W&B, asked for by `flag`, cannot log without prompting ([] when it can)."""
    if not wandb_installed():
        return [f"{flag} needs wandb: pip install wandb (WANDB_MODE=offline works without a key)"]
    if not can_log_silently():
        return [f"{flag} needs WANDB_API_KEY (environment or .env) or WANDB_MODE=offline; without either, "
                "wandb would stop and ask for a key"]
    return []


def is_main_process():
    """Rank 0 under torchrun / deepspeed / accelerate (they set RANK); a plain run is rank 0."""
    return int(os.environ.get("RANK") or os.environ.get("LOCAL_RANK") or 0) == 0


# ---------------------------------------------------------------------------------------------
# What a run carries
# ---------------------------------------------------------------------------------------------
def git_info(folder=None):
    """The project's commit and whether the working tree had changes (None outside a git checkout)."""
    folder = Path(folder or Path(__file__).resolve().parent)

    def git(*cmd):
        return subprocess.run(["git", *cmd], cwd=folder, capture_output=True, text=True, timeout=10).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": dirty if commit else None}


def audit_summary(audit):
    """The supervision audit without its per-id example lists (they stay in audit.json)."""
    if not audit:
        return None
    out = {k: v for k, v in audit.items() if k != "splits"}
    out["splits"] = {split: {k: v for k, v in counts.items() if k != AUDIT_EXAMPLE_LISTS}
                     for split, counts in (audit.get("splits") or {}).items()}
    return out


def dataset_description(path, from_remote=False, cache_dir=None):
    """{path, fingerprint, teacher_mode} of a training dataset; the fingerprint is the one inference run
    manifests carry (dataset_io.dataset_fingerprint), so runs on the same data can be matched."""
    local = Path(path)
    described = {"path": str(local.resolve()) if local.exists() else str(path), "fingerprint": None,
                 "teacher_mode": None}
    try:
        dd = load_forecast_dataset(path, from_remote=from_remote, cache_dir=cache_dir)
        described["fingerprint"] = dataset_fingerprint(dd)
        first = next(iter(dd.values()))
        if "teacher_mode" in first.column_names and len(first):
            described["teacher_mode"] = first[0]["teacher_mode"]
    except (DatasetError, OSError, ValueError):
        pass
    build = local / "build.json" if local.is_dir() else None
    if build is not None and build.is_file():
        described["teacher_mode"] = json.loads(build.read_text()).get("teacher_mode") or described["teacher_mode"]
    if described["teacher_mode"] is None and str(path).startswith("FinGPT/fingpt-forecaster"):
        described["teacher_mode"] = "hindsight"       # the public dataset: labels shown to the teacher
    return described


def prompt_excerpt(user_prompt, chars=PROMPT_EXCERPT_CHARS):
    """Head (company) and tail (the week asked about) of a user prompt."""
    text = " ".join((user_prompt or "").split())
    if len(text) <= chars:
        return text
    half = chars // 2
    return text[:half].rstrip() + " … " + text[-half:].lstrip()


def peak_memory_gib():
    """(host, gpu) peak memory of this process in GiB (gpu None without CUDA)."""
    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    gpu = None
    try:
        import torch
        if torch.cuda.is_available():
            gpu = torch.cuda.max_memory_allocated() / 2**30
    except ImportError:
        pass
    return round(host, 3), (round(gpu, 3) if gpu is not None else None)


# ---------------------------------------------------------------------------------------------
# Starting and finishing runs
# ---------------------------------------------------------------------------------------------
def _project(explicit=None):
    load_wandb_env()
    return explicit or os.environ.get("WANDB_PROJECT") or PROJECT


def _slug(text):
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-") or "run"


def start_run(project, name, out_dir, job_type, config, group=None, tags=(), notes=None):
    """wandb.init with the run's folder inside out_dir (unless WANDB_DIR is set). Raises TrackingError."""
    problems = wandb_problems("W&B logging")
    if problems:
        raise TrackingError(problems[0])
    import wandb
    folder = os.environ.get("WANDB_DIR") or str(out_dir)
    Path(folder).mkdir(parents=True, exist_ok=True)
    try:
        return wandb.init(project=_project(project), name=name, dir=folder, job_type=job_type, group=group,
                          tags=[t[:64] for t in tags if t], notes=notes, config=config, reinit="finish_previous")
    except Exception as exc:          # wandb raises its own error types (CommError, UsageError, ...)
        raise TrackingError(f"W&B could not start a run ({type(exc).__name__}: {exc}); set WANDB_MODE=offline "
                            "to log locally and upload later with `wandb sync`") from None


def finish_run(out_dir, extra=None):
    """Write wandb_run.json into out_dir, finish the active run, and return the run description."""
    import wandb
    run = wandb.run
    if run is None:
        return None
    mode = "offline" if run.settings.mode in ("offline", "dryrun") else run.settings.mode
    if mode == "disabled":                              # WANDB_MODE=disabled: nothing was recorded
        wandb.finish()
        return None
    folder = Path(run.dir).parent                       # <dir>/wandb/offline-run-DATE-ID
    described = {"id": run.id, "name": run.name, "project": run.project, "entity": run.entity or None,
                 "group": run.group or None, "job_type": run.job_type or None, "mode": mode,
                 "url": run.url if mode == "online" else None, "folder": str(folder.resolve())} | (extra or {})
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / RUN_FILE).write_text(json.dumps(described, indent=2))
    wandb.finish()
    where = described["url"] or f"{described['folder']} (upload: wandb sync {described['folder']})"
    print(f"W&B run {described['id']} in project {described['project']}: {where}")
    return described


# ---------------------------------------------------------------------------------------------
# Training (train_lora.py)
# ---------------------------------------------------------------------------------------------
def start_training_run(args, resolved, audit):
    """The W&B run of a training, started before the Trainer so transformers' WandbCallback logs into
    it. None when W&B is not among --report_to or on a rank other than 0. Raises TrackingError."""
    if "wandb" not in reporters(args.report_to) or not is_main_process():
        return None
    model = resolved.get("model") or {}
    dataset = dataset_description(args.dataset, getattr(args, "from_remote", False), getattr(args, "cache_dir", None))
    config = {"args": resolved.get("args") or vars(args), "model": model, "dtype": resolved.get("dtype"),
              "prompt_style": resolved.get("prompt_style"), "scheduler": resolved.get("scheduler"),
              "memory_estimate": resolved.get("memory_estimate"), "dataset": dataset,
              "supervision": audit_summary(audit), "git": git_info()}
    tags = [f"preset:{args.preset or 'none'}", f"teacher:{dataset['teacher_mode'] or 'unknown'}",
            "dpo" if getattr(args, "dpo", None) else "sft"] + (["hitl"] if getattr(args, "hitl_data", None) else [])
    return start_run(getattr(args, "wandb_project", None), args.run_name, args.output_dir, "train", config,
                     group=model.get("name") or args.base_model, tags=tags)


def training_callbacks(args, generator=None):
    """Trainer callbacks for W&B (empty unless W&B is among --report_to): throughput and peak memory
    at each loss log, the generations table at each evaluation, totals at the end."""
    if "wandb" not in reporters(args.report_to):
        return []
    return [_wandb_training_callback(generator)]


def _wandb_training_callback(generator):
    from transformers import TrainerCallback

    class WandbTrainingCallback(TrainerCallback):
        """Runs after transformers' WandbCallback (report_to callbacks come first), on its step axis."""

        def __init__(self):
            self.started = self.last_time = None
            self.last_tokens = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = self.last_time = time.time()
            self.first_tokens = self.last_tokens = int(state.num_input_tokens_seen or 0)

        def on_log(self, args, state, control, logs=None, **kwargs):
            import wandb
            if wandb.run is None or not state.is_world_process_zero or "loss" not in (logs or {}):
                return
            now, tokens = time.time(), int(state.num_input_tokens_seen or 0)
            host, gpu = peak_memory_gib()
            row = {"train/global_step": state.global_step, "train/host_peak_gib": host}
            if gpu is not None:
                row["train/gpu_peak_gib"] = gpu
            if now > self.last_time and tokens > self.last_tokens:
                row["train/tokens_per_s"] = (tokens - self.last_tokens) / (now - self.last_time)
            self.last_time, self.last_tokens = now, tokens
            wandb.log(row)

        def on_evaluate(self, args, state, control, **kwargs):
            import wandb
            self.last_time = time.time()            # tokens/s counts training time, not evaluation time
            if wandb.run is None or not state.is_world_process_zero or generator is None:
                return
            records = getattr(generator, "last_generations", None)
            if records:
                wandb.log({"eval/generations": generations_table(records, state.global_step),
                           "train/global_step": state.global_step})

        def on_train_end(self, args, state, control, **kwargs):
            import wandb
            if wandb.run is None or not state.is_world_process_zero or self.started is None:
                return
            wall = time.time() - self.started
            tokens = int(state.num_input_tokens_seen or 0) - self.first_tokens
            host, gpu = peak_memory_gib()
            wandb.run.summary.update({"train_tokens_per_s": tokens / wall if wall > 0 else None,
                                      "train_tokens_seen": tokens, "train_wall_s": wall,
                                      "host_peak_gib": host, "gpu_peak_gib": gpu})

    return WandbTrainingCallback()


GENERATION_COLUMNS = ["step", "id", "prompt_excerpt", "output", "parsed_direction", "truth", "correct", "format_ok"]


def generations_table(records, step):
    """A wandb.Table of one evaluation's generations (records from GenerationEvalCallback)."""
    import wandb
    rows = [[step, r.get("id"), r.get("prompt_excerpt"), (r.get("output") or "")[:OUTPUT_CHARS],
             r.get("direction"), r.get("label"), r.get("correct"), r.get("format_ok")] for r in records]
    return wandb.Table(columns=GENERATION_COLUMNS, data=rows)


def finish_training_run(args, outputs=None):
    """Totals into the summary, the adapter folder as an artifact (--wandb_log_model), wandb_run.json,
    and the run finished. A no-op without an active W&B run."""
    if not wandb_installed():
        return None
    import wandb
    if wandb.run is None:
        return None
    out = Path(args.output_dir)
    timing = (outputs or {}).get("timing") or {}
    wandb.run.summary.update({k: v for k, v in timing.items() if isinstance(v, (int, float)) and v is not None})
    artifact = None
    if getattr(args, "wandb_log_model", False):
        files = sorted(p for p in out.iterdir() if p.is_file() and p.name != RUN_FILE)
        art = wandb.Artifact(f"adapter-{_slug(args.run_name)}", type="model",
                             description=f"LoRA adapter of {args.base_model} (train_lora.py output folder)",
                             metadata={"base_model": args.base_model, "global_step": timing.get("global_step"),
                                       "training_loss": timing.get("training_loss")})
        for path in files:
            art.add_file(str(path), name=path.name)
        wandb.run.log_artifact(art, aliases=["latest", f"step-{timing.get('global_step', 0)}"])
        artifact = {"name": art.name, "type": "model", "files": [p.name for p in files]}
    return finish_run(out, {"artifact": artifact})


# ---------------------------------------------------------------------------------------------
# Inference (inference.py) and comparison (comparison.py)
# ---------------------------------------------------------------------------------------------
def _percentiles(values):
    import numpy as np
    if not values:
        return {}
    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()), "p50": float(np.percentile(arr, 50)), "p90": float(np.percentile(arr, 90)),
            "p99": float(np.percentile(arr, 99)), "max": float(arr.max())}


def log_inference_run(project, run_dir, predictions):
    """One W&B run for an inference run dir: its manifest (run.json) as config; throughput, completion and
    latency percentiles in the summary; the latency distribution as a histogram and a per-example table.
    predictions: the run's rows (dicts with id, latency_s, output_tokens, hit_max_new_tokens)."""
    import wandb
    run_dir = Path(run_dir)
    manifest = json.loads((run_dir / "run.json").read_text())
    name = run_dir.resolve().name
    dataset = manifest.get("dataset") or {}
    tags = [f"backend:{manifest.get('backend')}", f"split:{dataset.get('split')}"] + \
        (["adapter"] if manifest.get("adapter") else ["base"])
    start_run(project, name, run_dir, "inference", {"manifest": manifest, "run_dir": str(run_dir.resolve())},
              group=manifest.get("model"), tags=tags)
    rows = [p for p in predictions if p.get("latency_s") is not None]
    latencies = [float(p["latency_s"]) for p in rows]
    summary = {k: manifest.get(k) for k in ("tokens_per_s", "wall_time_s", "completed", "status")}
    summary.update({f"latency_s/{k}": v for k, v in _percentiles(latencies).items()})
    summary["hit_max_new_tokens"] = sum(bool(p.get("hit_max_new_tokens")) for p in predictions)
    if latencies:
        wandb.log({"latency_s": wandb.Histogram(latencies),
                   "latencies": wandb.Table(columns=["id", "latency_s", "output_tokens", "hit_max_new_tokens"],
                                            data=[[p["id"], p["latency_s"], p.get("output_tokens"),
                                                   p.get("hit_max_new_tokens")] for p in rows])})
    wandb.run.summary.update({k: v for k, v in summary.items() if v is not None})
    return finish_run(run_dir)


def _csv_table(path):
    import wandb
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return None, 0

    def cell(value):
        for kind in (int, float):
            try:
                return kind(value) if value not in ("", None) else None
            except ValueError:
                continue
        return value
    return wandb.Table(columns=rows[0], data=[[cell(v) for v in r] for r in rows[1:]]), len(rows) - 1


def log_comparison_run(project, out_dir, run_dirs):
    """One W&B run for a comparison folder: metrics.csv as the metrics table (one row per run and
    baseline), per_sample.csv as the per-sample scores when the comparison wrote one (else the per-run
    metrics of metrics.json), headline numbers in the summary, and the plots."""
    import wandb
    out = Path(out_dir)
    report = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").is_file() else {}
    config = {k: v for k, v in report.items() if not isinstance(v, dict) or k != "rows"}
    config["run_dirs"] = [str(Path(d).resolve()) for d in run_dirs]
    start_run(project, out.resolve().name, out, "comparison", config, group="comparison",
              tags=[f"runs:{len(run_dirs)}"])
    logged = {}
    table, n = _csv_table(out / "metrics.csv") if (out / "metrics.csv").is_file() else (None, 0)
    if table is not None:
        logged["metrics"] = table
    per_sample = out / "per_sample.csv"
    if per_sample.is_file():
        table, n_samples = _csv_table(per_sample)
        if table is not None:
            logged["per_sample"] = table
    else:
        per_run = [[name, row.get("kind"), json.dumps(row.get("metrics"), default=str)]
                   for name, row in (report.get("rows") or {}).items()]
        if per_run:
            logged["per_run_metrics"] = wandb.Table(columns=["name", "kind", "metrics_json"], data=per_run)
    for png in sorted(out.glob("*.png")):
        logged[f"plots/{png.stem}"] = wandb.Image(str(png))
    if logged:
        wandb.log(logged)
    for name, row in (report.get("rows") or {}).items():
        metrics = row.get("metrics") or {}
        for key in ("binary_accuracy", "mse", "format_failures"):
            if isinstance(metrics.get(key), (int, float)):
                wandb.run.summary[f"{name}/{key}"] = metrics[key]
    return finish_run(out)
