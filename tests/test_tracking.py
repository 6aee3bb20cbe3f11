"""tracking.py: W&B for training, inference and comparison, tested offline only (WANDB_MODE=offline).

The training run is the real command line (a subprocess, OMP_NUM_THREADS=1) on the embedded model; what
it logged is read back from the offline run's .wandb file with wandb's own record schema
(wandb_reader.read_offline_run), never by grepping. A fake API key sits in the environment and must not
appear in any file written or in the output.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tracking
import wandb_reader

ROOT = Path(__file__).resolve().parents[1]
FAKE_KEY = "fake" + "0123456789abcdef" * 2 + "feedbeef"      # 40 characters, the shape of a real key
TRAIN_ARGS = ["--max_length", "512", "--max_steps", "2", "--batch_size", "1", "--gradient_accumulation_steps", "1",
              "--learning_rate", "1e-3", "--warmup_ratio", "0", "--log_interval", "1", "--eval_steps", "2",
              "--save_steps", "2", "--dtype", "fp32", "--eval_generate", "2", "--eval_max_new_tokens", "8",
              "--preset", "cpu", "--seed", "5"]


def clean_env(tmp_path, **extra):
    """The environment of a fresh shell: no W&B settings, HOME (~/.netrc, caches) in a temp dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
               XDG_CACHE_HOME=str(home / ".cache"), XDG_DATA_HOME=str(home / ".local/share"),
               XDG_CONFIG_HOME=str(home / ".config"))
    env.update(extra)
    return env


def run_script(args, env, cwd, timeout=600):
    """A stage as the user runs it; stdin stays open and empty, so a prompt would hang until the timeout."""
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, stdin=subprocess.PIPE, capture_output=True,
                          text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def logged_ids(run_dir):
    return [json.loads(line)["id"] for line in (Path(run_dir) / "predictions.jsonl").read_text().splitlines()]


def files_containing(root, needle):
    hits = []
    for path in Path(root).rglob("*"):
        if path.is_file() and needle.encode() in path.read_bytes():
            hits.append(str(path))
    return hits


@pytest.fixture(scope="module")
def offline_training(short_forecast_dataset, embedded_model_dir, tmp_path_factory):
    """A 2-step training with the generation eval, W&B offline, a fake key in the environment."""
    tmp = tmp_path_factory.mktemp("wandb-train")
    out = tmp / "adapter"
    env = clean_env(tmp, WANDB_MODE="offline", WANDB_API_KEY=FAKE_KEY, WANDB_PROJECT="forecaster-tests",
                    FORECASTER_CACHE=os.environ["FORECASTER_CACHE"])
    rc, log = run_script([str(ROOT / "train_lora.py"), "--dataset", str(short_forecast_dataset), "--output_dir",
                          str(out), "--run_name", "wandb-test", "--wandb_log_model"] + TRAIN_ARGS, env, cwd=tmp)
    assert rc == 0, log[-3000:]
    folders = sorted((out / "wandb").glob("offline-run-*"))
    assert len(folders) == 1, log[-2000:]
    return {"out": out, "log": log, "tmp": tmp, "run": wandb_reader.read_offline_run(folders[0])}


def test_offline_training_run_carries_config_naming_and_tags(offline_training, short_forecast_dataset):
    from dataset_io import dataset_fingerprint, load_forecast_dataset
    run = offline_training["run"]
    assert run["run"]["project"] == "forecaster-tests" and run["run"]["name"] == "wandb-test"
    assert run["run"]["group"] == "smollm2-135m" and run["run"]["job_type"] == "train"
    assert {"preset:cpu", "teacher:unknown", "sft"} <= set(run["run"]["tags"])
    config = run["config"]
    assert config["args"]["max_steps"] == 2 and config["args"]["report_to"] == "tensorboard,wandb"
    assert config["model"]["name"] == "smollm2-135m" and config["model"]["prompt_style"] == "chatml"
    assert config["dataset"]["path"] == str(Path(short_forecast_dataset).resolve())
    assert config["dataset"]["fingerprint"] == dataset_fingerprint(load_forecast_dataset(short_forecast_dataset))
    assert config["supervision"]["splits"]["train"]["examples_in"] == 8
    assert "examples" not in config["supervision"]["splits"]["train"]          # per-id lists stay in audit.json
    assert config["memory_estimate"]["total_gib"] > 0
    assert len(config["git"]["commit"]) == 40
    assert config["learning_rate"] == 1e-3                     # transformers' WandbCallback logged into our run


def test_offline_training_history_has_losses_task_metrics_and_throughput_on_one_step_axis(offline_training):
    history = offline_training["run"]["history"]
    train = {r["train/global_step"]: r["train/loss"] for r in history if "train/loss" in r}
    evals = [r for r in history if "eval/binary_accuracy" in r]
    assert sorted(train) == [1, 2] and all(v > 0 for v in train.values())
    assert [r["train/global_step"] for r in evals] == [2]
    assert 0 <= evals[0]["eval/binary_accuracy"] <= 1 and 0 <= evals[0]["eval/format_failure_rate"] <= 1
    assert any("eval/loss" in r for r in history)
    speeds = [r["train/tokens_per_s"] for r in history if "train/tokens_per_s" in r]
    assert speeds and all(s > 0 for s in speeds)
    assert all(r["train/host_peak_gib"] > 0 for r in history if "train/host_peak_gib" in r)
    summary = offline_training["run"]["summary"]
    assert summary["train_tokens_per_s"] > 0 and summary["host_peak_gib"] > 0 and summary["global_step"] == 2
    assert any(sample.get("proc.memory.rssMB", 0) > 0 for sample in offline_training["run"]["system"])


def test_offline_training_logs_a_generations_table_per_eval_and_saves_them_beside_the_adapter(offline_training):
    tables = wandb_reader.read_table(offline_training["run"], "eval/generations")
    assert len(tables) == 1
    row, table = tables[0]
    assert row["train/global_step"] == 2 and table["columns"] == tracking.GENERATION_COLUMNS
    assert len(table["data"]) == 2
    by_column = [dict(zip(table["columns"], r)) for r in table["data"]]
    assert all(r["id"] and "|" in r["id"] and r["truth"] and r["prompt_excerpt"] for r in by_column)
    saved = [json.loads(line) for line in
             (offline_training["out"] / "eval_generations" / "step-2.jsonl").read_text().splitlines()]
    assert [s["output"] for s in saved] == [r["output"] for r in by_column]


def test_the_adapter_is_an_artifact_and_wandb_run_json_names_the_run(offline_training):
    run = offline_training["run"]
    model = [a for a in run["artifacts"] if a["type"] == "model"]
    assert len(model) == 1 and model[0]["name"] == "adapter-wandb-test"
    assert {"adapter_model.safetensors", "adapter_config.json", "prompt_style.json", "args.json"} <= set(model[0]["files"])
    described = json.loads((offline_training["out"] / tracking.RUN_FILE).read_text())
    assert described["id"] == run["run"]["id"] and described["mode"] == "offline" and described["url"] is None
    assert "wandb sync" in offline_training["log"]
    assert list((offline_training["out"] / "runs").rglob("events.out.tfevents.*"))   # TensorBoard as well


def test_the_api_key_is_in_no_file_and_no_log(offline_training):
    assert FAKE_KEY not in offline_training["log"]
    assert files_containing(offline_training["tmp"], FAKE_KEY) == []     # run dirs, wandb/, home caches


def test_without_a_key_or_wandb_mode_training_never_waits_and_uses_tensorboard_only(
        short_forecast_dataset, embedded_model_dir, tmp_path):
    out = tmp_path / "adapter"
    env = clean_env(tmp_path, FORECASTER_CACHE=os.environ["FORECASTER_CACHE"])
    rc, log = run_script([str(ROOT / "train_lora.py"), "--dataset", str(short_forecast_dataset), "--output_dir",
                          str(out), "--max_length", "512", "--max_steps", "1", "--gradient_accumulation_steps", "1",
                          "--evaluation_strategy", "no", "--dtype", "fp32"], env, cwd=tmp_path, timeout=300)
    assert rc == 0, log[-3000:]
    notes = [line for line in log.splitlines() if "W&B is off" in line]
    assert len(notes) == 1 and "WANDB_API_KEY" in notes[0]
    assert list((out / "runs").rglob("events.out.tfevents.*"))
    assert not (out / "wandb").exists() and not (tmp_path / "wandb").exists() and not (out / tracking.RUN_FILE).exists()
    assert json.loads((out / "args.json").read_text())["args"]["report_to"] == "tensorboard"


def test_report_to_auto_follows_the_key_and_wandb_mode(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)                  # no .env here
    monkeypatch.setenv("HOME", str(tmp_path))    # no ~/.netrc
    for var in ("WANDB_API_KEY", "WANDB_MODE", "NETRC"):
        monkeypatch.delenv(var, raising=False)
    resolved, note = tracking.resolve_report_to("auto")
    assert resolved == "tensorboard" and "WANDB_API_KEY" in note
    assert tracking.resolve_report_to("tensorboard,wandb") == ("tensorboard,wandb", None)   # explicit wins
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert tracking.resolve_report_to("auto") == ("tensorboard,wandb", None)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert tracking.resolve_report_to("auto") == ("tensorboard", None)
    monkeypatch.delenv("WANDB_MODE")
    (tmp_path / ".netrc").write_text(f"machine api.wandb.ai\n  login user\n  password {FAKE_KEY}\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert tracking.resolve_report_to("auto") == ("tensorboard,wandb", None)       # `wandb login` did it
    (tmp_path / ".netrc").unlink()
    (tmp_path / ".env").write_text(f"WANDB_API_KEY={FAKE_KEY}\nOTHER=1\n")
    assert tracking.resolve_report_to("auto") == ("tensorboard,wandb", None)       # the key from .env
    assert os.environ["WANDB_API_KEY"] == FAKE_KEY and "OTHER" not in os.environ


def test_asking_for_wandb_without_a_key_or_offline_mode_is_one_error_line(monkeypatch, tmp_path, capsys,
                                                                          short_forecast_dataset):
    import train_lora
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("WANDB_API_KEY", "WANDB_MODE", "NETRC"):
        monkeypatch.delenv(var, raising=False)
    assert train_lora.main(["--dataset", str(short_forecast_dataset), "--report_to", "wandb"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: ") and "WANDB_MODE=offline" in err[0]
    import inference
    assert inference.main(["--dataset", str(short_forecast_dataset), "--out", str(tmp_path / "r"),
                           "--wandb_project", "p"]) == 1
    assert "--wandb_project needs WANDB_API_KEY" in capsys.readouterr().err


def test_inference_and_comparison_log_to_the_same_project(offline_training, short_forecast_dataset, monkeypatch,
                                                          tmp_path):
    import comparison
    import inference
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "share"))      # artifact staging stays in the temp dir
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert inference.main(["--adapter", str(offline_training["out"]), "--dataset", str(short_forecast_dataset),
                           "--split", "test", "--limit", "2", "--max_new_tokens", "4", "--dtype", "fp32", "--quiet",
                           "--out", str(tmp_path / "lora"), "--wandb_project", "forecaster-tests"]) == 0
    logged = wandb_reader.read_offline_run(next((tmp_path / "lora" / "wandb").glob("offline-run-*")))
    assert logged["run"]["project"] == "forecaster-tests" and logged["run"]["job_type"] == "inference"
    assert logged["config"]["manifest"]["adapter"] == str(offline_training["out"].resolve())
    assert logged["summary"]["tokens_per_s"] > 0 and logged["summary"]["latency_s/p50"] > 0
    histogram = next(r["latency_s"] for r in logged["history"] if "latency_s" in r)
    assert histogram["_type"] == "histogram" and sum(histogram["values"]) == 2
    assert comparison.main([str(tmp_path / "lora"), "--out", str(tmp_path / "cmp"), "--bootstrap", "200",
                            "--wandb_project", "forecaster-tests"]) == 0
    logged = wandb_reader.read_offline_run(next((tmp_path / "cmp" / "wandb").glob("offline-run-*")))
    assert logged["run"]["project"] == "forecaster-tests" and logged["run"]["job_type"] == "comparison"
    (_, metrics), = wandb_reader.read_table(logged, "metrics")
    names = [row[0] for row in metrics["data"]]
    assert names[0] == "lora" and {"majority", "always-up"} <= set(names)     # one row per run and per baseline
    if (tmp_path / "cmp" / "per_sample.csv").exists():         # comparison.py's per-sample scores
        (_, scores), = wandb_reader.read_table(logged, "per_sample")
        rows = [dict(zip(scores["columns"], r)) for r in scores["data"]]
        assert len(rows) == 2 and {r["id"] for r in rows} == set(logged_ids(tmp_path / "lora"))
    else:
        assert wandb_reader.read_table(logged, "per_run_metrics")
    assert files_containing(tmp_path, FAKE_KEY) == []


def test_report_lists_the_wandb_runs_of_its_training_dirs(offline_training, tmp_path):
    import report
    assert report.main(["--train_dirs", str(offline_training["out"]), "--out", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    run_id = offline_training["run"]["run"]["id"]
    assert run_id in text and "wandb sync" in text


def test_a_crashed_run_without_wandb_run_json_is_still_found(offline_training, tmp_path):
    import shutil
    copy = tmp_path / "adapter"
    shutil.copytree(offline_training["out"] / "wandb", copy / "wandb")
    found = wandb_reader.find_runs(copy)
    assert [r["id"] for r in found] == [offline_training["run"]["run"]["id"]]
    assert found[0]["project"] == "forecaster-tests" and found[0]["mode"] == "offline"
