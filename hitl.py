"""Human-in-the-loop review: a local review page over one or two run dirs, a SQLite store of every
judgement, and an export of the reviews as SFT corrections and DPO preference pairs.

    python hitl.py serve --runs runs/demo/base-validation runs/demo/lora-validation --db reviews.sqlite
    python hitl.py export --db reviews.sqlite --out data/hitl-round1

Review validation (or train) runs, never test runs: the page warns on test-split ids and the export
refuses them, so the test split stays clean for the final comparison. The page itself is
hitl_page.html (one file, no external assets); this script serves it. review_store.py owns the
review db (schema, ReviewStore); hitl_export.py turns the db into SFT / DPO data.

serve copies what the page needs (prompts, outputs, labels, teacher answers, each run's prompt style)
into the database once, so export needs only --db and no endpoint ever opens another file.
"""
import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dataset_io import load_forecast_dataset, rows_of
from errors import check_args, cli
from hitl_export import INCLUDE_HINDSIGHT_EDITS, MIN_MEAN_RATING_FOR_SFT, export, export_problems, format_report
from prompt import parse_answer, split_public_prompt
from review_store import RATING_SCALE, REVIEW_FIELDS, SLOTS, HitlError, ReviewStore
from runs import MANIFEST, load_run, run_dir_problem, run_style

# ---------------------------------------------------------------------------------------------
# Defaults (CLI flags mirror these one to one)
# ---------------------------------------------------------------------------------------------
HOST = "127.0.0.1"               # loopback only: reviews and prompts stay on this machine unless told
PORT = 8765
DB = "reviews.sqlite"
# export's --min_mean_rating (4.0) and --include_hindsight_edits (off) default to hitl_export.py's values
MAX_RUNS = len(SLOTS)            # the page shows at most two outputs side by side (A and B)
MAX_REVIEWER_CHARS = 64
MAX_COMMENT_CHARS = 4_000
MAX_ANSWER_CHARS = 20_000        # public answers are 1.3k-3.1k characters; generous for edits
PAGE_FILE = Path(__file__).with_name("hitl_page.html")
RUBRIC = [
    ("Evidence", "Every factor is grounded in the prompt's news, prices or financials; nothing invented."),
    ("Factual accuracy", "Numbers, names and dates match the prompt; no contradictions."),
    ("Reasoning", "The prediction follows from the factors weighed; concerns are not ignored."),
    ("Format", "Positive Developments, Potential Concerns, Prediction & Analysis; a Prediction line."),
]


def parsed_summary(text):
    """What the page shows about an answer: the parser's verdict (the one parser, from prompt.py)."""
    p = parse_answer(text or "")
    return {"ok": p.ok, "problems": list(p.problems), "prediction": p.prediction, "direction": p.direction,
            "magnitude": p.magnitude, "bin_code": p.bin_code}


# ---------------------------------------------------------------------------------------------
# Loading run dirs (serve only)
# ---------------------------------------------------------------------------------------------
def review_run(run_dir):
    """A run dir (read by runs.load_run, the format's owner) with what the review page needs: prompt style,
    dataset path and a digest of its predictions."""
    run = load_run(run_dir)
    style = run_style(run["manifest"])
    run_dir, manifest, predictions_path = Path(run_dir), run["manifest"], run["predictions_path"]
    if run["skipped_lines"]:
        print(f"note: {predictions_path}: skipped {run['skipped_lines']} unreadable line(s) (a run killed mid-write); "
              "resume it with the same inference.py command to complete it")
    dataset = manifest.get("dataset") or {}
    if not dataset.get("path"):
        raise HitlError(f"{run_dir / MANIFEST}: no dataset.path; cannot show the prompts")
    data_path = Path(dataset["path"])
    if not data_path.is_absolute() and not data_path.exists() and (run_dir / data_path).exists():
        data_path = run_dir / data_path       # a path written relative to the run dir
    return {"run_dir": str(run_dir.resolve()), "name": run_dir.name, "manifest": manifest,
            "style": style, "predictions": run["rows"], "data_path": str(data_path),
            "predictions_sha": hashlib.sha256(predictions_path.read_bytes()).hexdigest()[:16]}


def load_review_set(run_dirs):
    """Runs + the dataset rows their ids point to -> records for the store."""
    if not 1 <= len(run_dirs) <= MAX_RUNS:
        raise HitlError(f"--runs takes 1 or {MAX_RUNS} run dirs, got {len(run_dirs)}")
    runs = [review_run(d) for d in run_dirs]
    rows_by_id, split_of = {}, {}
    for path in dict.fromkeys(r["data_path"] for r in runs):
        dd = load_forecast_dataset(path)
        for split, ds in dd.items():
            for row in rows_of(ds):
                rows_by_id.setdefault(row["id"], row)
                split_of.setdefault(row["id"], split)
    ids = list(dict.fromkeys(i for r in runs for i in r["predictions"]))
    unknown = [i for i in ids if i not in rows_by_id]
    if unknown:
        raise HitlError(f"{len(unknown)} prediction id(s) are not in the run's dataset (e.g. {unknown[0]!r}); "
                        "was the run made on another dataset?")
    examples = []
    for position, example_id in enumerate(ids):
        row = rows_by_id[example_id]
        outputs = {slot: r["predictions"][example_id].get("output") or ""
                   for slot, r in zip(SLOTS, runs) if example_id in r["predictions"]}
        examples.append({"id": example_id, "position": position, "symbol": row["symbol"],
                         "period": row["period"], "label": row["label"], "split": split_of[example_id],
                         "prompt": row["prompt"], "reference": row["answer"], "outputs": outputs})
    return runs, examples


# ---------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------
def reviewer_field():
    return Field(min_length=1, max_length=MAX_REVIEWER_CHARS, pattern=r"^[\w][\w .@'-]*$")


class ReviewChange(BaseModel):
    """One save from the page: the fields present are set (null clears), the others are left alone."""
    model_config = ConfigDict(extra="forbid")
    example_id: str = Field(min_length=1, max_length=200)
    reviewer: str = reviewer_field()
    rating_A: Optional[int] = Field(None, ge=1, le=5)
    rating_B: Optional[int] = Field(None, ge=1, le=5)
    direction_A: Optional[Literal["right", "wrong"]] = None
    direction_B: Optional[Literal["right", "wrong"]] = None
    preference: Optional[Literal["A", "B", "tie"]] = None
    comment: Optional[str] = Field(None, max_length=MAX_COMMENT_CHARS)
    edit_A: Optional[str] = Field(None, max_length=MAX_ANSWER_CHARS)
    edit_B: Optional[str] = Field(None, max_length=MAX_ANSWER_CHARS)

    @field_validator("reviewer")
    @classmethod
    def _strip(cls, value):
        return value.strip()


class RevealRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    example_id: str = Field(min_length=1, max_length=200)
    reviewer: str = reviewer_field()


class ParseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(max_length=MAX_ANSWER_CHARS)


def create_app(db_path, run_dirs=None):
    """The review app over a store; with run_dirs, the runs are loaded and registered first."""
    from fastapi import FastAPI, HTTPException, Query
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse

    store = ReviewStore(db_path)
    if run_dirs:
        store.register(*load_review_set(run_dirs))
    runs = store.runs()
    if not runs:
        raise HitlError(f"{db_path} holds no runs yet; start once with --runs RUN_DIR [RUN_DIR]")
    examples = {e["id"]: e for e in store.examples()}
    parsed = {(i, s): parsed_summary(o) for i, e in examples.items() for s, o in e["outputs"].items()}
    page = PAGE_FILE.read_text()
    app = FastAPI(title="hitl review", docs_url=None, redoc_url=None, openapi_url=None)

    def unprocessable(message, detail=None):
        return JSONResponse(status_code=422, content={"error": message, "detail": detail or message})

    @app.exception_handler(RequestValidationError)
    def _invalid(request, exc):
        errors = exc.errors()
        message = "; ".join(f"{'.'.join(str(x) for x in e['loc'] if x != 'body')}: {e['msg']}" for e in errors)
        return unprocessable(message, [{"loc": e["loc"], "msg": e["msg"]} for e in errors])

    @app.exception_handler(HitlError)
    def _refused(request, exc):
        return unprocessable(str(exc))

    def check_example(example_id):
        if example_id not in examples:
            raise HitlError(f"unknown example id {example_id!r}")
        return examples[example_id]

    def is_reviewed(review, example):
        return review is not None and all(review.get(f"rating_{s}") for s in example["outputs"])

    @app.get("/", response_class=HTMLResponse)
    def index():
        return page

    @app.get("/api/meta")
    def meta():
        return {"runs": [{"slot": r["slot"], "name": r["name"], "model": json.loads(r["manifest"]).get("model"),
                          "adapter": json.loads(r["manifest"]).get("adapter"),
                          "prompt_style": json.loads(r["style"])["name"],
                          "split": (json.loads(r["manifest"]).get("dataset") or {}).get("split")} for r in runs],
                "test_split_examples": sum(e["split"] == "test" for e in examples.values()),
                "symbols": sorted({e["symbol"] for e in examples.values()}), "total": len(examples),
                "rubric": [{"name": n, "text": t} for n, t in RUBRIC], "rating_scale": RATING_SCALE,
                "limits": {"comment": MAX_COMMENT_CHARS, "answer": MAX_ANSWER_CHARS,
                           "reviewer": MAX_REVIEWER_CHARS}}

    @app.get("/api/examples")
    def list_examples(reviewer: str = Query(..., min_length=1, max_length=MAX_REVIEWER_CHARS),
                      symbol: Optional[str] = Query(None, max_length=20), disagreement: bool = False,
                      format_failures: bool = False, unreviewed: bool = False):
        mine = {r["example_id"]: r for r in store.reviews(reviewer.strip())}
        items = []
        for e in examples.values():
            outs = {s: parsed[(e["id"], s)] for s in e["outputs"]}
            directions = [o["direction"] for o in outs.values()]
            item = {"id": e["id"], "position": e["position"], "symbol": e["symbol"], "period": e["period"],
                    "split": e["split"],
                    "predictions": {s: o["prediction"] if o["ok"] else None for s, o in outs.items()},
                    "disagreement": len(outs) == 2 and directions[0] != directions[1],
                    "format_failure": any(not o["ok"] for o in outs.values()),
                    "reviewed": is_reviewed(mine.get(e["id"]), e)}
            if ((symbol and e["symbol"] != symbol) or (disagreement and not item["disagreement"])
                    or (format_failures and not item["format_failure"]) or (unreviewed and item["reviewed"])):
                continue
            items.append(item)
        done = sum(is_reviewed(mine.get(i), e) for i, e in examples.items())
        return {"examples": items, "progress": {"reviewed": done, "total": len(examples)}}

    @app.get("/api/example")
    def get_example(id: str = Query(..., max_length=200),
                    reviewer: str = Query(..., min_length=1, max_length=MAX_REVIEWER_CHARS)):
        if id not in examples:
            raise HTTPException(404, f"unknown example id {id!r}")
        e = examples[id]
        review = (store.reviews(reviewer.strip(), id) or [None])[0]
        system, user = split_public_prompt(e["prompt"])
        body = {"id": id, "symbol": e["symbol"], "period": e["period"], "split": e["split"],
                "system": system, "user": user, "review": review,
                "outputs": {s: {"text": o, "parsed": parsed[(id, s)]} for s, o in e["outputs"].items()},
                "revealed": bool(review and review["revealed_at"])}
        if body["revealed"]:   # the outcome and the (hindsight) teacher answer only after the reveal
            body |= {"label": e["label"], "reference": e["reference"]}
        return body

    @app.post("/api/review")
    def post_review(change: ReviewChange):
        e = check_example(change.example_id)
        fields = {k: getattr(change, k) for k in REVIEW_FIELDS if k in change.model_fields_set}
        if not fields:
            raise HitlError("nothing to save: send at least one of " + ", ".join(REVIEW_FIELDS))
        for name in fields:
            slot = name[-1] if name.endswith(("_A", "_B")) else None
            if slot and slot not in e["outputs"]:
                raise HitlError(f"{name}: example {change.example_id!r} has no output {slot}")
        if "preference" in fields and fields["preference"] is not None and len(e["outputs"]) < 2:
            raise HitlError("preference: this example has only one output to judge")
        for slot in SLOTS:   # an empty edit or one equal to the original reverts to the original
            text = fields.get(f"edit_{slot}")
            if text is not None and (not text.strip() or text.strip() == e["outputs"][slot].strip()):
                fields[f"edit_{slot}"] = None
        review = store.apply(change.example_id, change.reviewer, fields)
        return {"review": review, "reviewed": is_reviewed(review, e)}

    @app.post("/api/reveal")
    def reveal(request: RevealRequest):
        e = check_example(request.example_id)
        review = store.apply(request.example_id, request.reviewer, {}, reveal=True)
        return {"label": e["label"], "reference": e["reference"], "review": review}

    @app.post("/api/parse")
    def parse(request: ParseRequest):
        return parsed_summary(request.text)

    @app.get("/api/history")
    def history(id: str = Query(..., max_length=200), reviewer: Optional[str] = Query(None, max_length=64)):
        check_example(id)
        return {"history": store.history(id, reviewer)}

    return app


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve the review page")
    s.add_argument("--runs", nargs="+", metavar="RUN_DIR",
                   help=f"1 or {MAX_RUNS} run dirs from inference.py (A, B); optional when --db already has them")
    s.add_argument("--db", default=DB, help="SQLite file holding the reviews (created if missing)")
    s.add_argument("--host", default=HOST, help="interface to bind; anything but 127.0.0.1 exposes the page")
    s.add_argument("--port", type=int, default=PORT, help="TCP port")
    s.add_argument("--open", action="store_true", help="open the page in the default browser")
    e = sub.add_parser("export", help="reviews -> SFT dataset + DPO pairs")
    e.add_argument("--db", default=DB, help="SQLite file written by `serve`")
    e.add_argument("--out", required=True, help="output folder: sft/, dpo/, dpo.jsonl, export.json")
    e.add_argument("--min_mean_rating", type=float, default=MIN_MEAN_RATING_FOR_SFT,
                   help="a preferred answer joins the SFT set when its mean rating (1-5) is at least this")
    e.add_argument("--include_hindsight_edits", action="store_true", default=INCLUDE_HINDSIGHT_EDITS,
                   help="keep edits that change only the Prediction line after the reveal (left out of SFT "
                        "and DPO by default: they teach the outcome, not the analysis)")
    e.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    return p.parse_args(argv)


def validate_args(args):
    """Every problem with the command line, at once, before any run, dataset or page is loaded: a list
    of messages, empty when all is well. Looks at file names and the db's tables only."""
    if args.command == "export":
        return export_problems(args.db, args.out, args.min_mean_rating, args.overwrite)[0]
    problems = []
    if not 1 <= args.port <= 65535:
        problems.append(f"--port {args.port} is not a TCP port (1-65535)")
    if args.runs and len(args.runs) > MAX_RUNS:
        problems.append(f"--runs takes at most {MAX_RUNS} run dirs (A and B), got {len(args.runs)}")
    problems += [f"--runs {problem}" for problem in map(run_dir_problem, args.runs or []) if problem]
    db = Path(args.db)
    try:
        if not args.runs:
            if not db.exists():
                problems.append(f"--runs is required: --db {db} does not exist yet")
            elif not ReviewStore.read_only(db).runs():
                problems.append(f"--db {db} holds no runs yet; start once with --runs RUN_DIR [RUN_DIR]")
        elif db.is_dir():
            problems.append(f"--db {db}: is a folder, not a file")
        elif db.is_file() and db.stat().st_size:   # an empty file is an empty SQLite db: serve fills it
            ReviewStore.read_only(db)
        elif not db.exists() and not db.parent.is_dir():
            problems.append(f"--db {db}: folder {db.parent} does not exist")
    except HitlError as exc:
        problems.append(f"--db {exc}")
    return problems


def serve(args):
    import uvicorn
    app = create_app(args.db, args.runs)
    url = f"http://{args.host}:{args.port}/"
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: binding {args.host}: anyone who can reach this machine can read and write reviews")
    print(f"Review page: {url}  (db {args.db}; Ctrl+C to stop)")
    if args.open:
        import webbrowser
        webbrowser.open(url)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


@cli
def main(argv=None):
    args = parse_args(argv)
    check_args(validate_args(args))
    if args.command == "serve":
        serve(args)
    else:
        started = time.time()
        report = export(args.db, args.out, args.min_mean_rating, args.include_hindsight_edits, args.overwrite)
        print(format_report(report, args.out) + f"\n  ({time.time() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
