"""runs.py, the run-dir format's owner: the writer (resume, torn line, settings conflicts), the reader and the
one rule for a run's prompt style."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import runs  # noqa: E402
from prompt import get_style  # noqa: E402

MANIFEST = {"model": "smollm2-135m", "adapter": None, "prompt_style": "chatml", "backend": "hf", "dtype": "fp32",
            "decoding": {"max_new_tokens": 8}, "dataset": {"path": "d", "split": "test", "fingerprint": "f1"}}


def row(i):
    return {"id": f"AAA-{i}", "symbol": "AAA", "period": f"w{i}", "label": "U1", "answer": "ref"}


def write(out, ids, manifest=MANIFEST, n=3, overwrite=False):
    w = runs.RunWriter(out, manifest, n, overwrite)
    with w:
        for i in ids:
            if row(i)["id"] not in w.done:
                w.write(row(i), f"out {i}", 4, i == 2, 0.5, {"p_up": 0.25})
    return w


def test_a_run_written_in_two_parts_reads_back_complete_with_its_manifest(tmp_path):
    out = tmp_path / "r"
    first = write(out, [0, 1])
    assert first.summary == {"written": 2, "resumed": 0, "hit_max": 0, "tokens_per_s": 8.0}
    assert json.loads((out / "run.json").read_text())["status"] == "partial"
    second = write(out, [0, 1, 2])
    assert second.summary["written"] == 3 and second.summary["resumed"] == 2 and second.summary["hit_max"] == 1
    run = runs.load_run(out)
    assert sorted(run["rows"]) == ["AAA-0", "AAA-1", "AAA-2"] and run["skipped_lines"] == 0
    assert run["rows"]["AAA-1"] == {"id": "AAA-1", "symbol": "AAA", "period": "w1", "label": "U1", "reference": "ref",
                                    "output": "out 1", "latency_s": 0.5, "output_tokens": 4,
                                    "hit_max_new_tokens": False, "p_up": 0.25}
    assert run["manifest"]["status"] == "complete" and run["manifest"]["completed"] == 3 == run["manifest"]["n"]


def test_a_torn_last_line_is_skipped_by_readers_and_cut_off_by_the_writer(tmp_path):
    out = tmp_path / "r"
    write(out, [0])
    with open(out / "predictions.jsonl", "a") as fh:
        fh.write('{"id": "AAA-1", "outp')                       # killed mid-write
    assert runs.load_run(out)["skipped_lines"] == 1
    w = write(out, [1])
    assert w.summary["written"] == 2
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["AAA-0", "AAA-1"]


def test_resuming_with_other_settings_is_refused_unless_overwritten(tmp_path):
    out = tmp_path / "r"
    write(out, [0])
    other = dict(MANIFEST, dataset=dict(MANIFEST["dataset"], fingerprint="f2"))
    with pytest.raises(runs.RunError, match=r"other settings \(dataset.fingerprint 'f1' vs 'f2'\)"):
        write(out, [1], other)
    assert write(out, [1], other, overwrite=True).summary["written"] == 1


def test_a_folder_that_is_not_a_run_dir_is_named(tmp_path):
    with pytest.raises(runs.RunError, match="no such folder"):
        runs.load_run(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "run.json").write_text("{}")
    with pytest.raises(runs.RunError, match="missing predictions.jsonl"):
        runs.load_run(tmp_path / "half")


def test_a_runs_prompt_style_adapter_then_style_name_then_model(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    get_style("llama3").save(adapter)
    assert runs.run_style({"adapter": str(adapter), "prompt_style": "chatml"}).name == "llama3"
    assert runs.run_style({"prompt_style": "plain", "model": "smollm2-135m"}).name == "plain"
    assert runs.run_style({"model": "smollm2-135m"}).name == "chatml"          # the registry's style
    # generating uses the same rule, with --prompt_style first
    assert runs.style_for(str(adapter), "chatml").name == "llama3"
    assert runs.style_for(str(adapter), "chatml", override="plain").name == "plain"


def test_a_style_that_cannot_be_told_is_an_error_not_a_guess():
    with pytest.raises(runs.RunError, match="prompt style is unknown.*--prompt_style NAME"):
        runs.run_style({"backend": "file", "model": "gpt-x", "source": {"file": "a.csv"}})
    with pytest.raises(runs.RunError, match="names no prompt_style and no model"):
        runs.run_style({})
