"""report.py end to end on the artifacts of a tiny run built here: a sample dataset (data_pipeline.py), a
train dir in train_lora.py's file shapes, two test run dirs and two validation run dirs in inference.py's
shape, a comparison (comparison.py) and a review db + export (hitl.py). No model is trained or loaded:
lengths are counted in characters (--tokenizer chars) except where the tokenizer fallback is the point.
"""
import json
import re
import struct
from html.parser import HTMLParser
from pathlib import Path

import pytest

import data_pipeline
import hitl
import hitl_export
import report
from comparison_files import write_outputs
from dataset_io import load_forecast_dataset
from scoring import compare

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
RECORDED_GPU = "NVIDIA H100 80GB HBM3"
RECORDED_CPU = "Recorded Test CPU 9000"


def flip(answer):
    """The same answer with the opposite Prediction direction."""
    return answer.replace("Prediction: Up", "Prediction: D0WN").replace("Prediction: Down", "Prediction: Up") \
        .replace("Prediction: D0WN", "Prediction: Down")


def write_run(root, name, rows, output_of, model="smollm2-135m", adapter=None, split="test", dataset=None):
    run = root / name
    run.mkdir()
    with open(run / "predictions.jsonl", "w") as fh:
        for k, r in enumerate(rows):
            fh.write(json.dumps({"id": r["id"], "symbol": r["symbol"], "period": r["period"], "label": r["label"],
                                 "reference": r["answer"], "output": output_of(k, r), "latency_s": 0.25 + 0.01 * k,
                                 "output_tokens": 120, "hit_max_new_tokens": k == 3}) + "\n")
    (run / "run.json").write_text(json.dumps({
        "model": model, "adapter": adapter, "prompt_style": "chatml", "backend": "hf", "batch_size": 8,
        "dtype": "bf16", "decoding": {"max_new_tokens": 256, "temperature": 0.0, "top_p": 1.0, "do_sample": False},
        "base_url": None,
        "hardware": {"cpu": RECORDED_CPU, "cpu_count": 16, "ram_gib": 128.0, "gpu": RECORDED_GPU, "gpu_count": 1,
                     "gpu_memory_gib": 79.2, "cuda": "12.8", "driver": "570.86"},
        "versions": {"python": "3.11.9", "torch": "2.7.0", "transformers": "4.56.0", "peft": "0.17.0",
                     "datasets": "3.6.0"},
        "dataset": {"path": str(dataset), "split": split, "fingerprint": "f00d", "limit": None},
        "n": len(rows), "status": "complete", "completed": len(rows), "wall_time_s": 12.5, "tokens_per_s": 480.0}))
    return run


def write_train_dir(root, base_model="smollm2-135m"):
    """An adapter dir with the JSON files train_lora.py writes (same keys), and a safetensors header."""
    d = root / "lora-demo"
    d.mkdir()
    args = {"run_name": "lora-demo", "base_model": base_model, "prompt_style": None, "dataset": "data/sample-demo",
            "max_length": 1024, "overlong": "trim", "batch_size": 1, "gradient_accumulation_steps": 4,
            "learning_rate": 5e-5, "num_epochs": 5, "max_steps": 30, "warmup_ratio": 0.03, "scheduler": "constant",
            "weight_decay": 0.0, "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.1, "target_modules": None,
            "dtype": None, "load_in_8bit": False, "load_in_4bit": False, "gradient_checkpointing": False, "seed": 42}
    model = {"name": base_model, "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct", "prompt_style": "chatml",
             "lora_targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
             "knowledge_cutoff": "2024-06"}
    (d / "args.json").write_text(json.dumps({"args": args, "model": model, "dtype": "bf16", "prompt_style": "chatml",
                                             "scheduler": "constant_with_warmup",
                                             "memory_estimate": {"lora_parameters": 2442240}}))
    split_audit = {"examples_in": 88, "examples_out": 87, "over_max_length": 3, "trimmed_news": 2,
                   "news_weeks_removed": 2, "answers_cut": 0, "dropped": 1,
                   "supervised_tokens_per_example": {"n": 87, "min": 90, "mean": 180.5, "median": 178, "max": 260,
                                                     "total": 15703},
                   "tokens_per_example": {"n": 87, "min": 400, "mean": 812.3, "median": 800, "max": 1024,
                                          "total": 70670},
                   "examples": {"over_max_length": [], "trimmed_news": [], "answers_cut": [], "dropped": []}}
    (d / "audit.json").write_text(json.dumps({"max_length": 1024, "overlong": "trim", "tokenizer": base_model,
                                              "splits": {"train": split_audit, "validation": split_audit}}))
    (d / "environment.json").write_text(json.dumps({
        "python": "3.11.9", "os": "Linux-6.8.0-x86_64-with-glibc2.39", "cpu": RECORDED_CPU, "cpu_count": 16,
        "ram_gib": 128.0, "cpu_bf16": True, "torch": "2.7.0", "cuda": "12.8", "gpu": RECORDED_GPU, "gpu_count": 1,
        "gpu_memory_gib": 79.2, "driver": "570.86", "transformers": "4.56.0", "peft": "0.17.0",
        "accelerate": "1.10.0", "datasets": "3.6.0", "trl": None, "deepspeed": None, "bitsandbytes": None}))
    (d / "timing.json").write_text(json.dumps({"train_wall_s": 61.4, "global_step": 30, "train_tokens_seen": 97000,
                                               "train_tokens_per_s": 1579.8, "training_loss": 1.9876,
                                               "host_peak_gib": 3.2, "gpu_peak_gib": 11.7}))
    log = [{"loss": 3.0 - 0.05 * s, "grad_norm": 1.0, "learning_rate": 5e-5, "epoch": s / 22, "step": s}
           for s in range(1, 31, 3)]
    log += [{"eval_loss": 2.6 - 0.1 * s / 10, "eval_runtime": 2.0, "epoch": s / 22, "step": s} for s in (10, 20, 30)]
    log += [{"train_runtime": 61.4, "train_loss": 1.9876, "epoch": 1.36, "step": 30}]
    (d / "trainer_state.json").write_text(json.dumps({"log_history": log, "global_step": 30, "max_steps": 30}))
    header = json.dumps({"base_model.model.layers.0.q_proj.lora_A.weight": {"dtype": "F32", "shape": [8, 576],
                                                                            "data_offsets": [0, 18432]},
                         "base_model.model.layers.0.q_proj.lora_B.weight": {"dtype": "F32", "shape": [576, 8],
                                                                            "data_offsets": [18432, 36864]}}).encode()
    (d / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 36864)
    return d


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("report-artifacts")
    dataset = root / "dataset"
    assert data_pipeline.main(["--source", "sample", "--out", str(dataset), "--start", "2012-06-03",
                               "--end", "2012-12-30"]) == 0
    dd = load_forecast_dataset(dataset)
    test, validation = dd["test"].to_list(), dd["validation"].to_list()
    generic = ("[Positive Developments]:\n1. The company keeps growing.\n\n[Potential Concerns]:\n1. Markets are "
               "volatile.\n\n[Prediction & Analysis]:\nPrediction: Up by 1-2%\nAnalysis: More up than down.")
    base = write_run(root, "base", test, lambda k, r: generic if k != 1 else "I cannot say.", dataset=dataset)
    lora = write_run(root, "lora", test, lambda k, r: flip(r["answer"]) if k % 3 == 0 else r["answer"],
                     adapter=str(root / "lora-demo"), dataset=dataset)
    train_dir = write_train_dir(root)
    compared, details = compare([base, lora], samples=300)
    write_outputs(compared, details, root / "compare")
    # reviews of VALIDATION runs (the export refuses test ids), two reviewers, then an export beside the db
    val_a = write_run(root, "lora-val", validation, lambda k, r: r["answer"], split="validation", dataset=dataset)
    val_b = write_run(root, "base-val", validation, lambda k, r: generic, split="validation", dataset=dataset)
    runs, examples = hitl.load_review_set([val_a, val_b])
    db = root / "hitl" / "reviews.sqlite"
    db.parent.mkdir()
    store = hitl.ReviewStore(db)
    store.register(runs, examples)
    for example, (ra, rb, pref) in zip(examples, [(5, 2, "A"), (4, 3, "A")]):
        store.apply(example["id"], "alice", {"rating_A": ra, "rating_B": rb, "preference": pref})
        store.apply(example["id"], "bob", {"rating_A": ra, "rating_B": 1, "preference": pref,
                                           "direction_A": "right"}, reveal=True)
    hitl_export.export(db, root / "hitl" / "round1")
    return {"root": root, "dataset": dataset, "base": base, "lora": lora, "train_dir": train_dir,
            "compare": root / "compare", "db": db,
            "metrics": json.loads((root / "compare" / "metrics.json").read_text())}


@pytest.fixture(scope="module")
def full_report(artifacts):
    out = artifacts["root"] / "report"
    code = report.main(["--dataset", str(artifacts["dataset"]), "--train_dirs", str(artifacts["train_dir"]),
                        "--runs", str(artifacts["base"]), str(artifacts["lora"]), "--comparison",
                        str(artifacts["compare"]), "--reviews", str(artifacts["db"]), "--tokenizer", "chars",
                        "--out", str(out)])
    assert code == 0
    return out, (out / "report.md").read_text(), (out / "report.html").read_text()


def table_row(md, first_cell, after_heading):
    """Cells of the first Markdown table row starting with `first_cell` after the heading `after_heading`."""
    text = md[md.index(after_heading):]
    line = next(l for l in text.splitlines() if l.startswith(f"| {first_cell} |"))
    return [c.strip() for c in line.strip("|").split(" | ")]


def test_every_section_with_inputs_is_present_in_order(full_report):
    _, md, html_text = full_report
    headings = re.findall(r"^## (\d)\. (.+)$", md, re.M)
    assert [int(n) for n, _ in headings] == [1, 2, 3, 4, 5, 6]
    assert not [line for line in md.splitlines() if line.startswith("*Section ")]
    for _, title in headings:
        assert title in html_text
    for sub in ("### Labels", "### Lengths, news and financials", "### Problems found by the validator",
                "### lora-demo", "### Direction accuracy", "### Baselines and long/short",
                "### Confusion matrices and per-symbol accuracy", "### Example answers",
                "### Knowledge cutoff vs test period"):
        assert sub in md


def test_sections_without_inputs_are_left_out_with_one_line_naming_the_input(artifacts, tmp_path):
    out = tmp_path / "dataset-only"
    assert report.main(["--dataset", str(artifacts["dataset"]), "--tokenizer", "chars", "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert re.findall(r"^## (\d)\.", md, re.M) == ["2"]
    for number, flag in ((1, "--train_dirs"), (3, "--train_dirs"), (4, "--runs"), (5, "--reviews"), (6, "--runs")):
        lines = [l for l in md.splitlines() if l.startswith(f"*Section {number} (")]
        assert len(lines) == 1 and "left out" in lines[0] and flag in lines[0]
    assert "TODO" not in md and "placeholder" not in md.lower()


def test_accuracy_numbers_in_the_report_equal_those_in_metrics_json(artifacts, full_report):
    _, md, _ = full_report
    for name, row in artifacts["metrics"]["rows"].items():
        m = row["metrics"]
        cells = table_row(md, name, "### Direction accuracy")
        assert cells[2:5] == [str(m["n"]), str(m["parsed"]), str(m["format_failures"])]
        lo, hi = m["binary_accuracy_ci"]
        assert cells[6] == f"{m['binary_accuracy']:.3f} [{lo:.3f}, {hi:.3f}]"
        if name != "majority":
            vs = m["vs_majority"]
            assert cells[7] == f"{vs['difference']:+.3f} [{vs['ci'][0]:+.3f}, {vs['ci'][1]:+.3f}]"
            assert cells[8] == ("<0.001" if vs["p_value"] < 0.001 else f"{vs['p_value']:.3f}")
        if row["kind"] == "run":
            assert cells[5] == str(m["hit_max_new_tokens"])


def test_mse_rouge_and_latency_in_the_report_equal_those_in_metrics_json(artifacts, full_report):
    _, md, _ = full_report
    for name in ("base", "lora"):
        m = artifacts["metrics"]["rows"][name]["metrics"]
        cells = table_row(md, name, "### Magnitude, text overlap and inference time")
        assert cells[1] == f"{m['mse']:.2f} ({m['mse_coverage']:.0%})"
        for k, section in enumerate(("positive", "concerns", "analysis")):
            assert cells[2 + k] == "/".join(f"{m['rouge'][section][t]:.3f}" for t in ("rouge1", "rouge2", "rougeL"))
        assert cells[5] == f"{m['latency_s']['mean']:.3f} / {m['latency_s']['median']:.3f}"
        ls = m["long_short"]
        assert table_row(md, name, "### Baselines and long/short")[1:3] == [
            f"{ls['mean_weekly_pct']:+.3f}", f"{ls['cumulative_pct']:+.3f}"]
    weeks = artifacts["metrics"]["weeks"]
    assert f"{artifacts['metrics']['n_ids']} examples shared by all runs: {weeks} weeks" in md


def test_figures_exist_and_are_valid_pngs(full_report):
    out, md, _ = full_report
    names = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert {"labels.png", "lengths.png", "news_per_prompt.png", "loss_lora-demo.png", "confusion.png",
            "comparison_accuracy.png"} <= set(names)
    for name in names:
        data = (out / name).read_bytes()
        assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n", name


class LinkCollector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.links += [(tag, value) for key, value in attrs if key in ("src", "href") and value]


def test_html_parses_embeds_every_figure_and_holds_no_external_url(full_report):
    _, md, html_text = full_report
    parser = LinkCollector()
    parser.feed(html_text)
    parser.close()
    assert "table" in parser.tags and "h2" in parser.tags
    assert parser.links, "no images embedded"
    assert all(not v.lower().startswith(("http://", "https://", "//")) for _, v in parser.links)
    images = [v for t, v in parser.links if t == "img"]
    assert all(v.startswith("data:image/png;base64,") for v in images)
    assert len(images) == len(re.findall(r"!\[", md))
    assert "<link" not in html_text and "<script" not in html_text


def test_hardware_comes_from_what_training_and_inference_recorded(full_report):
    _, md, _ = full_report
    section = md.split("## 1.")[1].split("## 2.")[0]
    assert RECORDED_GPU in section and RECORDED_CPU in section and "12.8" in section and "570.86" in section
    assert "training: lora-demo" in section and "inference: base" in section
    assert "this machine (report)" not in section


def test_this_machine_is_described_only_when_asked(artifacts, tmp_path):
    out = tmp_path / "machine"
    assert report.main(["--train_dirs", str(artifacts["train_dir"]), "--describe_this_machine",
                        "--out", str(out)]) == 0
    section = (out / "report.md").read_text().split("## 1.")[1].split("## 3.")[0]
    assert "| training: lora-demo | this machine (report) |" in section and RECORDED_GPU in section


def test_fine_tuning_section_shows_hyperparameters_audit_and_timing(full_report):
    _, md, _ = full_report
    section = md.split("## 3.")[1].split("## 4.")[0]
    assert "| lora_r | 8 |" in section and "| effective batch | 4 |" in section
    assert f"{8 * 576 * 2:,} (counted in adapter_model.safetensors)" in section
    assert "| train | 88 | 87 | 3 | 2 | 0 | 1 | 180.5 | 812.3 / 1024 |" in section
    assert "wall time 61.4 s" in section and "1579.8 tokens/s" in section and "peak GPU memory 11.7 GiB" in section


def test_dataset_section_counts_rows_labels_and_financials(artifacts, full_report):
    _, md, _ = full_report
    build = json.loads((artifacts["dataset"] / "build.json").read_text())
    for split, n in build["counts"].items():
        assert table_row(md, split, "## 2.")[1] == str(n)
    dd = load_forecast_dataset(artifacts["dataset"])
    test = dd["test"].to_list()
    with_fin = sum(bool(r["financials_period"]) for r in test)
    assert table_row(md, "test", "prompts with financials")[-2:] == [str(with_fin), str(len(test) - with_fin)]
    assert "Lengths in characters (--tokenizer chars)." in md


def test_examples_best_worst_typical_are_shown_side_by_side_with_the_rule(full_report):
    _, md, html_text = full_report
    assert "Chosen on the first run (`base`)" in md
    for kind in ("best", "worst", "typical"):
        assert f"**{kind}**:" in md
    assert md.count("| reference | base | lora |") == 3
    assert html_text.count("<th>reference</th><th>base</th><th>lora</th>") == 3


def test_contamination_is_flagged_when_the_cutoff_falls_after_the_test_period(full_report):
    _, md, _ = full_report
    row = table_row(md, "run lora", "### Knowledge cutoff vs test period")
    assert row[1:4] == ["smollm2-135m", "2024-06", "2012-12-02"] and row[4].startswith("**yes**")


def test_hitl_section_reports_ratings_agreement_and_the_export(artifacts, full_report):
    _, md, _ = full_report
    section = md.split("## 5.")[1].split("## 6.")[0]
    assert "4 reviews by 2 reviewer(s) of 2 of" in section
    assert table_row(section, "A: lora-val", "| model |")[1:5] == ["4", "4.50", "1:0 2:0 3:0 4:2 5:2", "4"]
    assert "| preference | alice/bob | 2 | 100.0 |" in section
    export = json.loads((artifacts["db"].parent / "round1" / "export.json").read_text())
    assert f"{export['sft_rows']} SFT rows and {export['dpo_pairs']} DPO pairs" in section


def test_findings_state_facts_from_the_metrics(artifacts, full_report):
    _, md, _ = full_report
    findings = md.split("## 6. Findings")[1]
    rows = artifacts["metrics"]["rows"]
    for name in ("base", "lora"):
        m = rows[name]["metrics"]
        assert f"`{name}` reached binary accuracy {m['binary_accuracy']:.3f} on {m['n']} examples" in findings
        verdict = "significant" if m["vs_majority"]["p_value"] < 0.05 else "not significant"
        assert f"{verdict} at the 5% level. It had {m['format_failures']} format failure(s)" in findings
    assert "Knowledge cutoff after the test period starts: smollm2-135m." in findings


def test_report_runs_the_comparison_itself_when_only_runs_are_given(artifacts, tmp_path):
    out = tmp_path / "runs-only"
    assert report.main(["--runs", str(artifacts["base"]), str(artifacts["lora"]), "--tokenizer", "chars",
                        "--out", str(out)]) == 0
    metrics = json.loads((out / "comparison" / "metrics.json").read_text())
    md = (out / "report.md").read_text()
    m = metrics["rows"]["lora"]["metrics"]
    assert table_row(md, "lora", "### Direction accuracy")[6].startswith(f"{m['binary_accuracy']:.3f} [")
    assert re.findall(r"^## (\d)\.", md, re.M) == ["1", "4", "6"]


def test_a_tokenizer_that_cannot_load_offline_falls_back_to_characters_in_one_line(artifacts, tmp_path):
    out = tmp_path / "fallback"
    assert report.main(["--dataset", str(artifacts["dataset"]), "--tokenizer", "NoSuchOrg/not-cached-model",
                        "--out", str(out)]) == 0
    lines = [l for l in (out / "report.md").read_text().splitlines() if l.startswith("Lengths in")]
    assert len(lines) == 1 and lines[0].startswith("Lengths in characters: the `NoSuchOrg/not-cached-model` "
                                                   "tokenizer could not be loaded offline")


def test_user_mistakes_are_one_error_line_and_exit_1(tmp_path, capsys):
    (tmp_path / "empty-run").mkdir()
    code = report.main(["--runs", str(tmp_path / "empty-run"), "--comparison", str(tmp_path),
                        "--reviews", str(tmp_path / "missing.sqlite"), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and err.startswith("Error: ")
    assert "--runs" in err and "--comparison" in err and "--reviews" in err
    assert not (tmp_path / "r").exists()
    assert report.main([]) == 1 and "nothing to report" in capsys.readouterr().err


def test_the_html_renders_non_blank_in_headless_chromium(full_report):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: `apt-get install -y chromium` (make test does it)")
    from PIL import Image, ImageStat
    from playwright.sync_api import sync_playwright
    out, _, _ = full_report
    shot = out / "screenshot.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto((out / "report.html").resolve().as_uri())
        assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    stat = ImageStat.Stat(Image.open(shot).convert("L"))
    assert stat.var[0] > 0
