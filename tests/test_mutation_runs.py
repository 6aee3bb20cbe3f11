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


NON_ASCII = "涨 1-2% · €{}"     # a Chinese answer, a euro amount


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


def test_a_run_dir_is_utf8_text_written_and_read_back_the_same_whatever_the_locale(tmp_path):
    out = tmp_path / "r"
    write(out, [0], output=NON_ASCII)
    assert "涨 1-2% · €0" in (out / "predictions.jsonl").read_text(encoding="utf-8")   # readable as written
    assert runs.load_run(out)["rows"]["AAA-0"]["output"] == "涨 1-2% · €0"
    # a machine whose locale is plain ASCII (or cp1252 on Windows) writes, resumes and reads the same text
    # (the child's command line stays ASCII: it takes the text from this module)
    env = dict(os.environ, LC_ALL="C", LANG="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0",
               PYTHONPATH=str(Path(__file__).resolve().parent) + os.pathsep + str(Path(runs.__file__).resolve().parent))
    code = (f"import sys, runs, test_mutation_runs as t; out = {str(tmp_path / 'ascii')!r}; "
            "t.write(out, [0], output=t.NON_ASCII); t.write(out, [0, 1], output=t.NON_ASCII); "
            "sys.stdout.reconfigure(encoding='utf-8'); rows = runs.load_run(out)['rows']; "
            "print(rows['AAA-0']['output'], rows['AAA-1']['output'], sep='|')")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-800:]
    assert done.stdout.decode("utf-8").strip() == "涨 1-2% · €0|涨 1-2% · €1"
    assert "涨 1-2% · €1" in (tmp_path / "ascii" / "predictions.jsonl").read_text(encoding="utf-8")


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
        assert (out / "run.json").read_text() == json.dumps(during, indent=2)      # indented for people
        w.write(row(0), "x", 3, True, 1.5)
    after = json.loads((out / "run.json").read_text())
    assert (out / "run.json").read_text() == json.dumps(after, indent=2)
    assert after["status"] == "partial" and after["completed"] == 1 and after["n"] == 2
    assert after["tokens_per_s"] == 2.0 and w.summary == {"written": 1, "resumed": 0, "hit_max": 1,
                                                          "tokens_per_s": 2.0}
    with runs.RunWriter(out, MANIFEST, 2) as w:
        w.write(row(1), "y", 1, False, 1.5)
    after = json.loads((out / "run.json").read_text())
    assert after["status"] == "complete" and after["completed"] == 2
    assert after["tokens_per_s"] == 1.33 and w.summary["resumed"] == 1 and w.summary["hit_max"] == 1   # 4 / 3 s


@pytest.mark.parametrize("tokens, latency", [(None, None), (5, None), (None, 0.5)])
def test_a_run_without_tokens_or_latencies_reports_no_throughput(tmp_path, tokens, latency):
    out = tmp_path / "r"
    with runs.RunWriter(out, MANIFEST, 1) as w:
        w.write(row(0), "x", tokens, False, latency)        # imported outputs may carry either or neither
    assert w.summary["tokens_per_s"] is None and json.loads((out / "run.json").read_text())["tokens_per_s"] is None


def test_a_crash_while_generating_is_raised_and_run_json_keeps_what_was_written(tmp_path):
    out = tmp_path / "r"
    with pytest.raises(MemoryError):
        with runs.RunWriter(out, MANIFEST, 3) as w:
            w.write(row(0), "x", 1, False, 0.5)
            raise MemoryError("CUDA out of memory")
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "partial" and manifest["completed"] == 1 and ids_on_disk(out) == ["AAA-0"]


def test_a_resumed_runs_wall_time_is_the_sum_of_its_parts(tmp_path, monkeypatch):
    clock = iter([1000.0, 1003.254, 5000.0, 5001.5])         # start and end of two invocations
    monkeypatch.setattr(runs, "time", SimpleNamespace(time=lambda: next(clock)))
    out = tmp_path / "r"
    write(out, [0])
    assert json.loads((out / "run.json").read_text())["wall_time_s"] == 3.25
    write(out, [1])
    assert json.loads((out / "run.json").read_text())["wall_time_s"] == 4.75


# ---------------------------------------------------------------------------------------------
# inference.run_dataset: one dataset run through a scripted backend (no model, no server)
# ---------------------------------------------------------------------------------------------
class WithExtra(tuple):
    """A backend's result (text, output tokens, hit max_new_tokens) carrying more predictions.jsonl fields."""

    def __new__(cls, result, extra):
        obj = super().__new__(cls, result)
        obj.extra = extra
        return obj


class ScriptedBackend:
    """Answers each row from a script, records the batches it was given, and moves a fake clock on by
    `seconds_per_batch` per generate call."""

    def __init__(self, answers, clock=None, seconds_per_batch=0.0):
        self.answers, self.clock, self.seconds_per_batch, self.batches = answers, clock, seconds_per_batch, []

    def generate(self, batch):
        self.batches.append([r["id"] for r in batch])
        if self.clock:
            self.clock[0] += self.seconds_per_batch
        return [self.answers[r["id"]] for r in batch]


def dataset_rows(n):
    return [dict(row(i), prompt="p" * (i + 1)) for i in range(n)]


def test_a_dataset_run_writes_each_answer_with_its_latency_and_fields_and_sums_up_what_it_did(tmp_path, monkeypatch):
    import inference
    clock = [100.0]
    monkeypatch.setattr(inference, "time", SimpleNamespace(time=lambda: clock[0]))
    backend = ScriptedBackend({"AAA-0": WithExtra(("up", 5, False), {"p_up": 0.7}), "AAA-1": ("down", 3, True),
                               "AAA-2": TimeoutError("x" * 300), "AAA-3": ("flat", 2, False, 1.25)},
                              clock, seconds_per_batch=2.0)
    summary = inference.run_dataset(backend, dataset_rows(4), tmp_path / "r", MANIFEST, 3, progress=False)
    assert backend.batches == [["AAA-0", "AAA-1", "AAA-2"], ["AAA-3"]]      # no lengths: dataset order
    assert summary["failed"] == ["AAA-2: TimeoutError: " + "x" * 200]        # cut to 200 characters
    assert (summary["written"], summary["resumed"], summary["hit_max"], summary["new"]) == (3, 0, 1, 3)
    assert summary["wall"] == 4.0
    rows = runs.load_run(tmp_path / "r")["rows"]
    assert sorted(rows) == ["AAA-0", "AAA-1", "AAA-3"]
    assert rows["AAA-0"]["latency_s"] == 0.6667 and rows["AAA-0"]["p_up"] == 0.7   # the batch's 2 s over 3 rows
    assert rows["AAA-1"]["latency_s"] == 0.6667 and rows["AAA-1"]["hit_max_new_tokens"] is True
    assert "p_up" not in rows["AAA-1"]
    assert rows["AAA-3"]["latency_s"] == 1.25                # an imported output keeps its own latency
    assert "probabilities" not in json.loads((tmp_path / "r" / "run.json").read_text())


def test_a_rerun_generates_only_the_missing_rows_and_overwrite_starts_again(tmp_path):
    import inference
    answers = {"AAA-0": ("up", 1, False), "AAA-1": ConnectionError("refused")}
    first = inference.run_dataset(ScriptedBackend(answers), dataset_rows(2), tmp_path / "r", MANIFEST, 2,
                                  progress=False)
    assert first["new"] == 1 and first["failed"] == ["AAA-1: ConnectionError: refused"]
    answers["AAA-1"] = ("down", 1, False)
    again = ScriptedBackend(answers)
    second = inference.run_dataset(again, dataset_rows(2), tmp_path / "r", MANIFEST, 2, progress=False)
    assert again.batches == [["AAA-1"]] and (second["resumed"], second["new"], second["written"]) == (1, 1, 2)
    other = dict(MANIFEST, model="another-model")
    fresh = ScriptedBackend(answers)
    third = inference.run_dataset(fresh, dataset_rows(2), tmp_path / "r", other, 2, True, progress=False)
    assert fresh.batches == [["AAA-0", "AAA-1"]] and (third["resumed"], third["written"]) == (0, 2)
    assert json.loads((tmp_path / "r" / "run.json").read_text())["model"] == "another-model"


def test_with_prompt_lengths_known_batches_go_longest_first(tmp_path):
    import inference
    backend = ScriptedBackend({f"AAA-{i}": ("up", 1, False) for i in range(5)})
    inference.run_dataset(backend, dataset_rows(5), tmp_path / "r", MANIFEST, 2,
                          lengths_fn=lambda rows: [len(r["prompt"]) for r in rows], progress=False)
    assert backend.batches == [["AAA-4", "AAA-3"], ["AAA-2", "AAA-1"], ["AAA-0"]]


def test_the_backends_note_on_probabilities_is_kept_in_run_json(tmp_path):
    import inference
    backend = ScriptedBackend({"AAA-0": ("up", 1, False)})
    backend.describe_probabilities = lambda: {"p_up": False, "why": "the server gave no logprobs"}
    inference.run_dataset(backend, dataset_rows(1), tmp_path / "r", MANIFEST, 1, progress=False)
    assert json.loads((tmp_path / "r" / "run.json").read_text())["probabilities"] == {
        "p_up": False, "why": "the server gave no logprobs"}


def test_a_rerun_with_nothing_left_to_do_keeps_the_backends_note_on_probabilities(tmp_path):
    import inference
    backend = ScriptedBackend({"AAA-0": ("up", 1, False)})
    backend.describe_probabilities = lambda: {"p_up": True}
    for _ in range(2):                                   # the second run finds every row done
        summary = inference.run_dataset(backend, dataset_rows(1), tmp_path / "r", MANIFEST, 1, progress=False)
    assert summary["new"] == 0 and backend.batches == [["AAA-0"]]
    manifest = json.loads((tmp_path / "r" / "run.json").read_text())
    assert manifest["probabilities"] == {"p_up": True} and manifest["status"] == "complete"


def run_three_rows(out, **progress):
    import inference
    backend = ScriptedBackend({f"AAA-{i}": ("up", 1, False) for i in range(3)})
    return inference.run_dataset(backend, dataset_rows(3), out, MANIFEST, 2, **progress)


def test_a_dataset_run_shows_its_progress_in_examples_unless_asked_not_to(tmp_path, capsys):
    run_three_rows(tmp_path / "quiet", progress=False)
    assert capsys.readouterr().err == ""
    # the bar is drawn in a child process: drawn in this one, it made `make mutate`'s forked workers hang
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent) + os.pathsep
               + str(Path(runs.__file__).resolve().parent))
    code = f"import test_mutation_runs as t; t.run_three_rows({str(tmp_path / 'shown')!r})"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-800:]
    bar = done.stderr.replace("\r", "\n").strip().splitlines()[-1]
    assert bar.startswith("generating: 100%") and "3/3" in bar and "ex/s" in bar
