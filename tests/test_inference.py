"""inference.py: batched greedy == one-at-a-time greedy (fp32, embedded model), resume after a kill,
the openai backend against a fake OpenAI-compatible server on 127.0.0.1, and user mistakes."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import generation  # noqa: E402
import inference  # noqa: E402
from prompt import SYSTEM_PROMPT, get_style, wrap_public_prompt  # noqa: E402

SYMBOLS = ["AAA", "BBB", "CCC", "DDD", "EEE", "FFF"]


def make_prompt(symbol, weeks=1):
    week = (f"From 2024-01-07 to 2024-01-14, {symbol} Corp's stock price increased from 100.00 to 101.50. "
            f"Company news during this period are listed below:\n\n[Headline]: {symbol} opens a plant\n"
            f"[Summary]: {symbol} said it will build a new plant.\n\n")
    return wrap_public_prompt(SYSTEM_PROMPT, week * weeks + f"Then make your prediction of the {symbol} stock "
                              "price movement for next week (2024-01-14 to 2024-01-21).")


@pytest.fixture()
def dataset(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    rows = [{"prompt": make_prompt(s, 1 + k % 3), "answer": f"[Positive Developments]:\n1. {s} grows.\n\n"
             "[Potential Concerns]:\n1. Costs.\n\n[Prediction & Analysis]:\nPrediction: Up by 1-2%\nAnalysis: ok",
             "period": "2024-01-14 to 2024-01-21", "label": "up by 1-2%", "symbol": s} for k, s in enumerate(SYMBOLS)]
    (root / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


class FakeOpenAI:
    """A minimal OpenAI-compatible /v1/chat/completions server on 127.0.0.1 (a thread in the test)."""

    def __init__(self, delay=0.0):
        self.requests, self.delay, self.fail_symbols = [], delay, set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, **body})
                time.sleep(outer.delay)
                user = body["messages"][-1]["content"]
                symbol = next(s for s in SYMBOLS if f"{s} Corp" in user)
                if symbol in outer.fail_symbols:
                    self.send_response(500)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(b'{"error": {"message": "boom"}}')
                    return
                text = (f"[Positive Developments]:\n1. {symbol} plant.\n\n[Potential Concerns]:\n1. Costs.\n\n"
                        "[Prediction & Analysis]:\nPrediction: Down by 2-3%\nAnalysis: teacher says so.")
                data = json.dumps({
                    "id": "cmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": "length" if body.get("max_tokens", 99) < 20 else "stop"}],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 42, "total_tokens": 142}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def fake_server():
    server = FakeOpenAI()
    yield server
    server.close()


def openai_args(dataset, out, server, *extra):
    return ["--backend", "openai", "--base_model", "teacher-model", "--base_url", server.url, "--dataset",
            str(dataset), "--out", str(out), "--max_retries", "0", "--timeout", "10", "--quiet", *extra]


def read_predictions(out):
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# openai backend
# ---------------------------------------------------------------------------------------------
def test_openai_backend_scores_a_server_like_any_other_run(dataset, tmp_path, fake_server, monkeypatch, capsys):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    out = tmp_path / "teacher"
    assert inference.main(openai_args(dataset, out, fake_server, "--batch_size", "3")) == 0
    preds = read_predictions(out)
    assert sorted(p["id"] for p in preds) == sorted(f"{s}|2024-01-14 to 2024-01-21" for s in SYMBOLS)
    assert set(preds[0]) == {"id", "symbol", "period", "label", "reference", "output", "latency_s", "output_tokens",
                             "hit_max_new_tokens"}
    assert all(p["output"].endswith("teacher says so.") and p["output_tokens"] == 42 for p in preds)
    assert not any(p["hit_max_new_tokens"] for p in preds)
    req = fake_server.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["model"] == "teacher-model"
    assert req["temperature"] == 0.0 and req["max_tokens"] == inference.MAX_NEW_TOKENS
    # the dataset's Llama-2 markers are stripped: system and user travel as chat messages
    assert [m["role"] for m in req["messages"]] == ["system", "user"]
    assert req["messages"][0]["content"] == SYSTEM_PROMPT.strip("\n")
    assert "[INST]" not in req["messages"][1]["content"]
    manifest = json.loads((out / "run.json").read_text())
    for key in ("model", "adapter", "prompt_style", "decoding", "backend", "batch_size", "dtype", "hardware",
                "versions", "dataset", "n", "wall_time_s", "tokens_per_s"):
        assert key in manifest, key
    assert manifest["status"] == "complete" and manifest["n"] == 6 and manifest["backend"] == "openai"
    assert set(manifest["dataset"]) >= {"path", "split", "fingerprint"}
    assert "Wrote 6/6 predictions" in capsys.readouterr().out


def test_hitting_max_tokens_is_recorded(dataset, tmp_path, fake_server):
    out = tmp_path / "short"
    assert inference.main(openai_args(dataset, out, fake_server, "--max_new_tokens", "8", "--limit", "2")) == 0
    preds = read_predictions(out)
    assert len(preds) == 2 and all(p["hit_max_new_tokens"] for p in preds)


def test_failed_requests_are_not_written_and_a_rerun_fills_them(dataset, tmp_path, fake_server, capsys):
    out = tmp_path / "flaky"
    fake_server.fail_symbols = {"BBB"}
    assert inference.main(openai_args(dataset, out, fake_server)) == 1
    assert "1 failed" in capsys.readouterr().out
    assert len(read_predictions(out)) == 5
    assert json.loads((out / "run.json").read_text())["status"] == "partial"
    fake_server.fail_symbols = set()
    before = len(fake_server.requests)
    assert inference.main(openai_args(dataset, out, fake_server)) == 0
    assert len(fake_server.requests) - before == 1          # only the missing example is asked again
    assert len({p["id"] for p in read_predictions(out)}) == 6 == len(read_predictions(out))


def test_openai_backend_uses_the_teachers_parameter_rules_for_reasoning_models(dataset, tmp_path, capsys):
    """Same rules as the teacher (openai_chat.ChatRules): learned from the first 400s, kept for the run."""
    from fake_servers import FakeOpenAI as ServiceLikeOpenAI
    with ServiceLikeOpenAI() as server:
        server.reasoning = True
        out = tmp_path / "o4"
        assert inference.main(openai_args(dataset, out, server, "--batch_size", "1")) == 0
    assert len(read_predictions(out)) == 6
    assert server.errors == {400: 2}                         # max_tokens, then temperature 0: once each
    assert all(body == ["max_completion_tokens", "top_p"] for body in server.bodies[2:])
    assert "using max_completion_tokens" in capsys.readouterr().err


UP_ANSWER = ("[Positive Developments]:\n1. Orders.\n\n[Potential Concerns]:\n1. Costs.\n\n"
             "[Prediction & Analysis]:\nPrediction: Up by 1-2%\nAnalysis: orders win.")


def test_openai_logprobs_give_p_up_at_the_direction_token(dataset, tmp_path):
    """--logprobs asks for top_logprobs; p_up = sum P(up variants) / (sum P(up) + sum P(down)) over the top k."""
    from fake_servers import FakeOpenAI as ServiceLikeOpenAI
    with ServiceLikeOpenAI(default_answer=UP_ANSWER) as server:
        server.top = {" Up": [(" Up", 0.5), (" Down", 0.2), ("Up", 0.1), (" Flat", 0.1), (" down", 0.05)]}
        out = tmp_path / "probs"
        assert inference.main(openai_args(dataset, out, server, "--logprobs", "--limit", "2")) == 0
    assert all(body == ["logprobs", "max_tokens", "temperature", "top_logprobs", "top_p"] for body in server.bodies)
    preds = read_predictions(out)
    assert len(preds) == 2 and all(p["p_up"] == pytest.approx(0.6 / 0.85, abs=1e-12) for p in preds)
    probabilities = json.loads((out / "run.json").read_text())["probabilities"]
    assert probabilities["top_logprobs"] == inference.TOP_LOGPROBS and probabilities["responses_with_logprobs"] == 2
    assert "why" not in probabilities


@pytest.mark.parametrize("mode, why", [("ignore", "returned no logprobs"), ("reject", "rejected the logprobs")])
def test_openai_without_logprobs_writes_no_p_up_and_says_why(dataset, tmp_path, mode, why):
    from fake_servers import FakeOpenAI as ServiceLikeOpenAI
    with ServiceLikeOpenAI(default_answer=UP_ANSWER) as server:
        server.logprobs = mode
        out = tmp_path / "no-probs"
        assert inference.main(openai_args(dataset, out, server, "--logprobs", "--limit", "2",
                                          "--batch_size", "1")) == 0
    preds = read_predictions(out)
    assert len(preds) == 2 and not any("p_up" in p for p in preds)
    assert why in json.loads((out / "run.json").read_text())["probabilities"]["why"]
    if mode == "reject":                                     # learned once, then never sent again
        assert server.errors == {400: 1} and all("logprobs" not in body for body in server.bodies[1:])


def test_openai_without_the_logprobs_flag_asks_for_none(dataset, tmp_path, fake_server):
    out = tmp_path / "plain"
    assert inference.main(openai_args(dataset, out, fake_server, "--limit", "1")) == 0
    assert "logprobs" not in fake_server.requests[0] and "p_up" not in read_predictions(out)[0]
    assert "not requested" in json.loads((out / "run.json").read_text())["probabilities"]["why"]


@pytest.mark.parametrize("failure, words", [("quota_exhausted", "insufficient_quota"),
                                            ("valid_keys", "rejected the API key (401)")])
def test_openai_backend_stops_at_once_when_no_request_can_succeed(dataset, tmp_path, capsys, failure, words):
    from fake_servers import FakeOpenAI as ServiceLikeOpenAI
    with ServiceLikeOpenAI() as server:
        setattr(server, failure, True if failure == "quota_exhausted" else {"the-right-key"})
        out = tmp_path / "stopped"
        assert inference.main(openai_args(dataset, out, server, "--batch_size", "2")) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("Error:")]
    assert len(err) == 1 and words in err[0]
    assert sum(server.errors.values()) <= 2                  # the first batch only, no row after it
    assert not read_predictions(out)


def test_killed_run_resumes_without_duplicate_ids(dataset, tmp_path):
    server = FakeOpenAI(delay=0.4)
    out = tmp_path / "killed"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               OPENAI_API_KEY="test")
    try:
        proc = subprocess.Popen([sys.executable, str(ROOT / "inference.py"),
                                 *openai_args(dataset, out, server, "--batch_size", "1")],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        pred = out / "predictions.jsonl"
        while time.time() < deadline and not (pred.exists() and pred.read_text().count("\n") >= 2):
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert pred.exists()
        first_pass = pred.read_text().count("\n")
        assert 2 <= first_pass < 6, "the run should have been killed part way"
        with open(pred, "a") as fh:                          # a line torn by the kill
            fh.write('{"id": "FFF|2024-01-14 to 2024-01-21", "symbol": "FF')
        server.delay = 0.0
        assert inference.main(openai_args(dataset, out, server)) == 0
    finally:
        server.close()
    ids = [p["id"] for p in read_predictions(out)]
    assert len(ids) == 6 and len(set(ids)) == 6
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "complete" and manifest["completed"] == 6


def test_resuming_with_other_settings_is_refused(dataset, tmp_path, fake_server, capsys):
    out = tmp_path / "run"
    assert inference.main(openai_args(dataset, out, fake_server, "--limit", "2")) == 0
    capsys.readouterr()
    assert inference.main(openai_args(dataset, out, fake_server, "--temperature", "0.7")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: ") and "decoding" in err[0] and "--overwrite" in err[0]
    # a larger --limit is a resume, not a conflict
    assert inference.main(openai_args(dataset, out, fake_server, "--limit", "4")) == 0
    assert len(read_predictions(out)) == 4


def test_user_mistakes_are_reported_in_one_error_line(tmp_path, capsys):
    assert inference.main(["--top_p", "0", "--batch_size", "0", "--logprobs"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: ")
    for words in ("--dataset is required", "--out is required", "--top_p", "--batch_size",
                  "--logprobs applies to --backend openai only"):
        assert words in err[0]
    assert inference.main(["--dataset", str(tmp_path / "nope"), "--out", str(tmp_path / "o"),
                           "--adapter", str(tmp_path)]) == 1
    assert "no adapter_config.json" in capsys.readouterr().err
    assert inference.main(["--dataset", str(tmp_path / "nope"), "--out", str(tmp_path / "o"),
                           "--backend", "openai", "--base_model", "m", "--base_url", "http://127.0.0.1:9/v1"]) == 1
    assert "no such file or folder" in capsys.readouterr().err


def test_batches_are_length_sorted_longest_first():
    rows = [{"id": i} for i in range(5)]
    batches = generation.plan_batches(rows, 2, lengths=[3, 9, 1, 7, 5])
    assert [[r["id"] for r in b] for b in batches] == [[1, 3], [4, 0], [2]]


# ---------------------------------------------------------------------------------------------
# hf backend on the embedded model
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def embedded_fp32(embedded_model_dir):      # conftest: the GGUF converted once per session
    torch = pytest.importorskip("torch")
    import models
    threads = torch.get_num_threads()
    torch.set_num_threads(1)          # the CI box is 2 shared cores: one thread is faster under contention
    try:
        model, tokenizer, spec = models.load_model("smollm2-135m", dtype="fp32")
    except models.ModelError as exc:
        pytest.skip(f"embedded model unavailable: {exc}")
    yield model, tokenizer, spec
    torch.set_num_threads(threads)


def test_batched_greedy_gives_the_same_text_as_one_at_a_time_in_fp32(embedded_fp32):
    model, tokenizer, spec = embedded_fp32
    gen = generation.HFGenerator(model, tokenizer, get_style(spec.prompt_style), max_new_tokens=16)
    rows = [{"prompt": make_prompt(s, weeks)} for s, weeks in zip(SYMBOLS, (1, 3, 2, 4))]
    batched = gen.generate(rows)
    one_by_one = [gen.generate([r])[0] for r in rows]
    assert [b[0] for b in batched] == [o[0] for o in one_by_one]
    assert [b[1:] for b in batched] == [o[1:] for o in one_by_one]
    assert all(b[0] for b in batched)
    mask = gen._encode(rows)["attention_mask"]           # left padding: every prompt ends at the last column
    assert bool(mask[:, -1].all()) and not bool(mask[:, 0].all())


def test_hf_run_writes_a_run_dir_comparison_can_read(embedded_fp32, dataset, tmp_path):
    import comparison
    out = tmp_path / "base"
    assert inference.main(["--dataset", str(dataset), "--out", str(out), "--limit", "3", "--batch_size", "2",
                           "--max_new_tokens", "8", "--dtype", "fp32", "--quiet"]) == 0
    preds = read_predictions(out)
    assert len(preds) == 3 and all(0 < p["output_tokens"] <= 8 and p["output"] for p in preds)
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["model"] == "smollm2-135m" and manifest["prompt_style"] == "chatml"
    assert manifest["dtype"] == "fp32" and manifest["decoding"]["do_sample"] is False
    assert manifest["tokens_per_s"] > 0
    report, _ = comparison.compare([str(out)], samples=200)
    assert report["rows"][out.name]["metrics"]["n"] == 3


def test_live_forecast_prompt_comes_from_the_sample_source_without_the_target_week():
    from inference import build_live_prompt
    live = build_live_prompt("aapl", "2013-01-11", n_weeks=2, use_basics=True)
    assert live["period"] == "2013-01-13 to 2013-01-20"
    assert "From 2013-01-06 to 2013-01-13" in live["user"] and "2013-01-14" not in live["info"].split("Forecast")[0]
    assert "[Basic Financials]" in live["info"] and "Realised: down by 3-4%" in live["info"]
    assert live["user"].endswith("Provide a summary analysis to support your prediction.")


def test_live_forecast_of_an_unknown_ticker_is_one_error(capsys):
    import inference
    assert inference.main(["--ticker", "ZZZZ", "--date", "2013-01-11"]) == 1
    assert capsys.readouterr().err.strip().startswith("Error: --ticker ZZZZ: ZZZZ: not in the offline sample")


def test_the_openai_backend_accepts_upstreams_openai_key_name(monkeypatch):
    import argparse
    import inference
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("OPENAI_KEY", "upstream-style-key")
    assert inference._api_key(argparse.Namespace(base_url=None)) == "upstream-style-key"
    monkeypatch.delenv("OPENAI_KEY")
    assert inference._api_key(argparse.Namespace(base_url=None)) is None
    assert inference._api_key(argparse.Namespace(base_url="http://127.0.0.1:8000/v1")) == "local"
