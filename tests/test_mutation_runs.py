"""The run dir's resume rules at their edges (runs.py), written after `make mutate-runs` (TESTING.md) found
mutants no other test failed on: the reader past a bad line, the torn-line cut after many rows, the encoding,
the settings check's message, the run.json kept while a run is going and after it, and the wall time
summed over the parts of a resumed run."""
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import runs  # noqa: E402

MANIFEST = {"model": "smollm2-135m", "adapter": None, "prompt_style": "chatml", "backend": "hf", "dtype": "fp32",
            "decoding": {"max_new_tokens": 8}, "dataset": {"path": "d", "split": "test", "fingerprint": "f1"}}


def row(i):
    return {"id": f"AAA-{i}", "symbol": "AAA", "period": f"w{i}", "label": "U1", "answer": "ref"}


def write(out, ids, manifest=MANIFEST, n=3, output="out {}"):
    with runs.RunWriter(out, manifest, n) as w:          # no `overwrite`: resuming is the default
        for i in ids:
            if row(i)["id"] not in w.done:
                w.write(row(i), output.format(i), 4, False, 0.5)
    return w


def ids_on_disk(out):
    return [json.loads(line)["id"] for line in (out / "predictions.jsonl").read_text().splitlines()]


def test_readers_skip_every_blank_or_torn_line_and_read_on_after_it(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text('{"id": "a", "output": "1"}\n\n{"id": "b", "outp\n   \n{"id": "c", "output": "3"}\n'
                    '{"id": "a", "output": "again"}\n{"id": "d", "ou')
    rows, skipped = runs.read_predictions(path)
    assert sorted(rows) == ["a", "c"] and rows["a"]["output"] == "1"
    assert skipped == 2                                  # the torn line in the middle and the one at the end


def test_a_torn_line_after_many_rows_costs_only_itself_on_resume(tmp_path):
    out = tmp_path / "r"
    write(out, [0, 1])
    with open(out / "predictions.jsonl", "a") as fh:
        fh.write('{"id": "AAA-2", "outp')                       # killed mid-write
    assert runs.read_done(out / "predictions.jsonl") == {"AAA-0", "AAA-1"}
    assert ids_on_disk(out) == ["AAA-0", "AAA-1"]             # cut back to the last whole line
    assert write(out, [0, 1, 2]).summary == {"written": 3, "resumed": 2, "hit_max": 0, "tokens_per_s": 8.0}
    assert ids_on_disk(out) == ["AAA-0", "AAA-1", "AAA-2"]


def test_a_run_dir_is_utf8_text_read_back_the_same_whatever_the_locale(tmp_path):
    out = tmp_path / "r"
    write(out, [0], output="涨 1-2% · €{}")
    assert "涨 1-2% · €0" in (out / "predictions.jsonl").read_text(encoding="utf-8")   # readable as written
    assert runs.load_run(out)["rows"]["AAA-0"]["output"] == "涨 1-2% · €0"
    # a machine whose locale is plain ASCII (or cp1252 on Windows) reads the same text
    env = dict(os.environ, LC_ALL="C", LANG="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0",
               PYTHONPATH=str(Path(runs.__file__).resolve().parent))
    code = ("import sys, runs; sys.stdout.reconfigure(encoding='utf-8'); "
            f"print(runs.load_run({str(out)!r})['rows']['AAA-0']['output'])")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-800:]
    assert done.stdout.decode("utf-8").strip() == "涨 1-2% · €0"


def test_a_new_run_dir_is_made_with_its_parent_folders_and_overwrite_needs_no_old_run(tmp_path):
    out = tmp_path / "runs" / "2026" / "lora-test"
    with runs.RunWriter(out, MANIFEST, 1, overwrite=True) as w:
        w.write(row(0), "x", 1, False, 0.1)
    assert ids_on_disk(out) == ["AAA-0"]


def test_the_settings_refusal_names_every_differing_setting_and_the_way_out(tmp_path):
    out = tmp_path / "r"
    write(out, [0])
    other = dict(MANIFEST, model="qwen", dataset=dict(MANIFEST["dataset"], split="validation"))
    with pytest.raises(runs.RunError) as err:
        write(out, [1], other)
    assert str(err.value) == (f"{out} holds a run made with other settings (model 'smollm2-135m' vs 'qwen'; "
                              "dataset.split 'test' vs 'validation'); pass another --out, or --overwrite to start "
                              "it again")
    assert runs.resume_conflicts(MANIFEST, dict(MANIFEST, dataset={"path": "moved", "split": "test",
                                                                   "fingerprint": "f1"})) == []


def test_settings_compare_key_by_key_and_a_missing_level_counts_as_none():
    old = {"a": {"b": 1, "c": 2}, "d": 3}
    assert runs.differing_keys(old, {"a": {"b": 1, "c": 5}, "d": 3}, [("a", "b"), ("a", "c"), ("d",)]) == \
        [("a.c", 2, 5)]
    assert runs.differing_keys(old, {"d": 4}, [("a", "b"), ("d",)]) == [("a.b", 1, None), ("d", 3, 4)]
    assert runs.differing_keys({}, {}, [("a", "b")]) == []


def test_run_json_says_running_while_generating_then_partial_or_complete_with_counts(tmp_path):
    out = tmp_path / "r"
    with runs.RunWriter(out, MANIFEST, 2) as w:
        during = json.loads((out / "run.json").read_text())
        assert during == dict(MANIFEST, n=2, status="running")
        w.write(row(0), "x", 3, True, 1.5)
    after = json.loads((out / "run.json").read_text())
    assert after["status"] == "partial" and after["completed"] == 1 and after["n"] == 2
    assert after["tokens_per_s"] == 2.0 and w.summary == {"written": 1, "resumed": 0, "hit_max": 1,
                                                          "tokens_per_s": 2.0}
    with runs.RunWriter(out, MANIFEST, 2) as w:
        w.write(row(1), "y", 0, False, 0.5)
    after = json.loads((out / "run.json").read_text())
    assert after["status"] == "complete" and after["completed"] == 2
    assert after["tokens_per_s"] == 1.5 and w.summary["resumed"] == 1 and w.summary["hit_max"] == 1


def test_a_run_without_tokens_or_time_reports_no_throughput(tmp_path):
    out = tmp_path / "r"
    with runs.RunWriter(out, MANIFEST, 1) as w:
        w.write(row(0), "x", None, False, None)        # imported outputs may carry neither
    assert w.summary["tokens_per_s"] is None and json.loads((out / "run.json").read_text())["tokens_per_s"] is None


def test_a_resumed_runs_wall_time_is_the_sum_of_its_parts(tmp_path, monkeypatch):
    clock = iter([1000.0, 1003.25, 5000.0, 5001.5])          # start and end of two invocations
    monkeypatch.setattr(runs, "time", SimpleNamespace(time=lambda: next(clock)))
    out = tmp_path / "r"
    write(out, [0])
    assert json.loads((out / "run.json").read_text())["wall_time_s"] == 3.25
    write(out, [1])
    assert json.loads((out / "run.json").read_text())["wall_time_s"] == 4.75
