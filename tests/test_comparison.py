"""comparison.py end to end on two small run dirs made here, with a small dataset on disk."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import comparison  # noqa: E402
from clustered_stats import week_blocked_bootstrap, week_sign_flip_test  # noqa: E402
from comparison_files import write_outputs  # noqa: E402
from prompt import label_from_return, wrap_public_prompt  # noqa: E402
from scoring import compare, last_week_move  # noqa: E402

SYMBOLS = ["AAA", "BBB", "CCC"]
WEEKS = [f"2024-0{m}-0{d} to 2024-0{m}-{d + 7:02d}" for m, d in ((2, 4), (3, 3), (4, 7), (5, 5))]


def make_prompt(symbol, last_move):
    older = f"From 2024-01-07 to 2024-01-14, {symbol} Corp's stock price decreased from 50.00 to 49.00."
    last = (f"From 2024-01-14 to 2024-01-21, {symbol} Corp's stock price increased from 49.00 to 50.00."
            if last_move == "up" else
            f"From 2024-01-14 to 2024-01-21, {symbol} Corp's stock price decreased from 49.00 to 48.00.")
    return wrap_public_prompt("sys", f"{older} News.\n\n{last} News.\n\nPredict.")


def answer(direction, size="1-2%"):
    return (f"[Positive Developments]:\n1. Sales grew.\n\n[Potential Concerns]:\n1. Costs rose.\n\n"
            f"[Prediction & Analysis]:\nPrediction: {direction} by {size}\nAnalysis: Demand is strong.")


def make_dataset(root):
    """train: 6 rows, 4 down -> majority 'down'; test: 3 symbols x 4 weeks with weekly_return."""
    rng = np.random.default_rng(1)
    root.mkdir()
    test = []
    for w, period in enumerate(WEEKS):
        for s, sym in enumerate(SYMBOLS):
            r = float(rng.choice([-1, 1]) * rng.uniform(0.002, 0.03))
            test.append({"prompt": make_prompt(sym, "up" if (w + s) % 2 else "down"), "answer": answer(
                "Up" if r >= 0 else "Down"), "period": period, "label": label_from_return(r), "symbol": sym,
                "weekly_return": r})
    train = [{"prompt": make_prompt("AAA", "up"), "answer": answer("Down"), "period": f"2023-0{k}-01 to 2023-0{k}-08",
              "label": "down by 0-1%" if k < 5 else "up by 1-2%", "symbol": "AAA", "weekly_return": 0.0}
             for k in range(1, 7)]
    for name, rows in (("train.jsonl", train), ("test.jsonl", test)):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return test


def make_run(root, name, rows, predict, decoding=None, skip=(), torn=False):
    run = root / name
    run.mkdir()
    lines = []
    for row in rows:
        rid = f"{row['symbol']}|{row['period']}"
        if rid in skip:
            continue
        lines.append(json.dumps({"id": rid, "symbol": row["symbol"], "period": row["period"], "label": row["label"],
                                 "reference": row["answer"], "output": predict(row), "latency_s": 0.5,
                                 "output_tokens": 40, "hit_max_new_tokens": False}) + "\n")
    text = "".join(lines) + ('{"id": "torn' if torn else "")
    (run / "predictions.jsonl").write_text(text)
    (run / "run.json").write_text(json.dumps({
        "model": "m", "adapter": None, "prompt_style": "chatml", "backend": "hf", "batch_size": 4,
        "decoding": decoding or {"max_new_tokens": 64, "temperature": 0.0, "top_p": 1.0, "do_sample": False},
        "dataset": {"path": str(root / "data"), "split": "test", "fingerprint": "abc"}, "n": len(lines),
        "wall_time_s": 1.0, "tokens_per_s": 80.0}))
    return run


@pytest.fixture()
def two_runs(tmp_path):
    test = make_dataset(tmp_path / "data")
    oracle = make_run(tmp_path, "oracle", test, lambda r: answer("Up" if r["weekly_return"] >= 0 else "Down"))
    # 'sloppy': always up, one unparseable answer, one id missing, different temperature, a torn last line
    sloppy = make_run(tmp_path, "sloppy", test,
                      lambda r: "I cannot tell." if r["symbol"] == "BBB" and r["period"] == WEEKS[0] else answer("Up"),
                      decoding={"max_new_tokens": 64, "temperature": 0.7, "top_p": 1.0, "do_sample": True},
                      skip={f"CCC|{WEEKS[3]}"}, torn=True)
    return tmp_path, test, oracle, sloppy


def test_comparison_end_to_end_writes_tables_baselines_cis_and_plots(two_runs, capsys):
    root, test, oracle, sloppy = two_runs
    out = root / "cmp"
    assert comparison.main([str(oracle), str(sloppy), "--out", str(out), "--bootstrap", "300"]) == 0
    for name in ("metrics.json", "metrics.md", "metrics.csv", "accuracy.png", "rouge.png", "latency.png",
                 "confusion_oracle.csv", "confusion_sloppy.csv"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "metrics.json").read_text())
    assert report["n_ids"] == 11 and report["weeks"] == 4 and report["symbols"] == 3
    assert report["left_out"] == {"oracle": 1, "sloppy": 0}
    assert report["torn_lines_skipped"] == {"sloppy": 1}
    assert "temperature 0.7 vs 0.0" in report["decoding_differences"]["sloppy"]
    assert report["long_short_returns_from"] == "realised weekly_return"
    rows = report["rows"]
    assert set(rows) == {"oracle", "sloppy", "majority", "always-up", "momentum"}
    oracle_m, sloppy_m = rows["oracle"]["metrics"], rows["sloppy"]["metrics"]
    assert oracle_m["binary_accuracy"] == 1.0 and oracle_m["binary_accuracy_ci"] == [1.0, 1.0]
    assert oracle_m["long_short"]["positive_weeks"] == 4
    assert sloppy_m["parsed"] == 10 and sloppy_m["format_failures"] == 1
    shared = [r for r in test if f"{r['symbol']}|{r['period']}" != f"CCC|{WEEKS[3]}"]
    ups = sum(r["weekly_return"] >= 0 for r in shared)
    assert rows["always-up"]["metrics"]["binary_accuracy"] == pytest.approx(ups / 11)
    up_but_unparsed = int(test[1]["weekly_return"] >= 0)   # BBB in week 0
    assert sloppy_m["binary_accuracy"] == pytest.approx((ups - up_but_unparsed) / 11)
    # majority comes from the TRAIN labels (4 of 6 down), not from the scored ones
    assert rows["majority"]["metrics"]["binary_accuracy"] == pytest.approx((11 - ups) / 11)
    assert "train split" in rows["majority"]["note"]
    # momentum reads the most recent week's sentence: up when (week + symbol) is odd
    momentum_right = sum(((w + s) % 2 == 1) == (r["weekly_return"] >= 0)
                         for w in range(4) for s, r in enumerate(test[3 * w:3 * w + 3]) if not (w == 3 and s == 2))
    assert rows["momentum"]["metrics"]["binary_accuracy"] == pytest.approx(momentum_right / 11)
    for m in (oracle_m, sloppy_m, rows["momentum"]["metrics"]):
        lo, hi = m["binary_accuracy_ci"]
        assert 0 <= lo <= m["binary_accuracy"] <= hi <= 1
        assert 0 < m["vs_majority"]["p_value"] <= 1 and len(m["vs_majority"]["ci"]) == 2
    assert rows["majority"]["metrics"]["vs_majority"]["p_value"] == 1.0
    assert sum(oracle_m["confusion"][c]["none"] for c in oracle_m["confusion"]) == 0
    assert sum(sloppy_m["confusion"][c]["none"] for c in sloppy_m["confusion"]) == 1
    assert oracle_m["per_symbol_accuracy"]["AAA"] == {"n": 4, "accuracy": 1.0}
    assert oracle_m["rouge"]["analysis"]["rouge1"] == pytest.approx(1.0)
    printed = capsys.readouterr().out
    assert "| oracle |" in printed and "*majority (baseline)*" in printed and "4 weeks" in printed
    assert "Decoding settings differ" in printed and "Compared 2 run(s) on 11 shared ids" in printed
    csv_text = (out / "metrics.csv").read_text().splitlines()
    assert csv_text[0].startswith("name,kind,n,parsed") and len(csv_text) == 6


def test_compare_returns_the_latencies_beside_the_report_and_metrics_json_is_that_report(two_runs):
    root, _, oracle, sloppy = two_runs
    report, details = compare([str(oracle), str(sloppy)], samples=200)
    assert not [k for k in report if k.startswith("_")]               # nothing private travels inside the report
    assert details.latencies == {"oracle": [0.5] * 11, "sloppy": [0.5] * 11}
    assert len(details.per_sample) == 2 * 11 and details.backtest and set(details.equity) >= {"oracle", "sloppy"}
    expected = json.loads(json.dumps(report))
    write_outputs(report, details, root / "cmp")
    assert json.loads((root / "cmp" / "metrics.json").read_text()) == expected == report   # written, not changed
    assert (root / "cmp" / "latency.png").stat().st_size > 0


def test_reference_run_replaces_the_dataset_answers(two_runs):
    root, _, oracle, sloppy = two_runs
    report, _ = compare([str(sloppy)], reference=str(oracle), samples=200)
    m = report["rows"]["sloppy"]["metrics"]
    assert report["reference"] == "oracle"
    # agreement with the oracle's outputs equals accuracy here, since the oracle is always right
    assert m["reference_agreement"] == pytest.approx(m["binary_accuracy"])


def test_without_a_dataset_baselines_fall_back_and_say_so(two_runs):
    root, _, oracle, _ = two_runs
    report, _ = compare([str(oracle)], dataset=str(root / "missing"), samples=200)
    assert "momentum" not in report["rows"]
    assert "SCORED labels" in report["rows"]["majority"]["note"]
    assert report["long_short_returns_from"].startswith("label bin midpoints")


def test_week_clustered_test_and_bootstrap_use_whole_weeks():
    weeks = ["w1"] * 3 + ["w2"] * 3 + ["w3"] * 3
    better = [1] * 9
    worse = [0] * 9
    # 3 weeks: 8 sign patterns, only the 2 extreme ones reach |sum| = 9 -> p = 2/8
    assert week_sign_flip_test(better, worse, weeks) == pytest.approx(0.25)
    lo, hi = week_blocked_bootstrap(np.array([[1, 0, 0] * 3]).T.reshape(9, 1), weeks, samples=200)
    assert lo[0] == pytest.approx(1 / 3) and hi[0] == pytest.approx(1 / 3)   # every week has 1 of 3 right


def test_last_week_move_reads_names_with_apostrophes_and_unchanged_weeks():
    text = ("From 2024-01-07 to 2024-01-14, McDonald's Corp's stock price increased from 100.00 to 107.00. "
            "From 2024-01-14 to 2024-01-21, McDonald's Corp's stock price was unchanged at 107.00.")
    assert last_week_move(text) == "U1"
    assert last_week_move(text.split(" From")[0]) == "U5+"
    assert last_week_move("no prices here") is None


def test_missing_run_dir_is_one_error_line(tmp_path, capsys):
    assert comparison.main([str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: ") and "not a folder" in err[0]
