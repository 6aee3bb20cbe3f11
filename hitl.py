"""Human-in-the-loop review: a local review page over one or two run dirs, a SQLite store of every
judgement, and an export of the reviews as SFT corrections and DPO preference pairs.

    python hitl.py serve --runs runs/demo/base-validation runs/demo/lora-validation --db reviews.sqlite
    python hitl.py export --db reviews.sqlite --out data/hitl-round1

Review validation (or train) runs, never test runs: the page warns on test-split ids and the export
refuses them, so the test split stays clean for the final comparison. The page itself is
hitl_page.html (one file, no external assets); this module serves it and owns the store;
hitl_export.py turns the store into SFT / DPO data.

serve copies what the page needs (prompts, outputs, labels, teacher answers, each run's prompt style)
into the database once, so export needs only --db and no endpoint ever opens another file.
"""
import argparse
import hashlib
import json
import sqlite3
import sys
import time
from collections import defaultdict
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dataset_io import DatasetError, load_forecast_dataset
from prompt import PROMPT_STYLES, PromptStyle, get_style, parse_answer, split_public_prompt

# ---------------------------------------------------------------------------------------------
# Defaults (CLI flags mirror these one to one)
# ---------------------------------------------------------------------------------------------
HOST = "127.0.0.1"               # loopback only: reviews and prompts stay on this machine unless told
PORT = 8765
DB = "reviews.sqlite"
MIN_MEAN_RATING_FOR_SFT = 4.0    # a preferred answer joins the SFT set only when reviewers rate it this well
INCLUDE_HINDSIGHT_EDITS = False  # Prediction-only edits made after the reveal teach the outcome, not analysis
BUSY_TIMEOUT_MS = 10_000         # a second writer waits this long for the lock instead of failing
MAX_RUNS = 2                     # the page shows at most two outputs side by side (A and B)
MAX_REVIEWER_CHARS = 64
MAX_COMMENT_CHARS = 4_000
MAX_ANSWER_CHARS = 20_000        # public answers are 1.3k-3.1k characters; generous for edits
PAGE_FILE = Path(__file__).with_name("hitl_page.html")
SLOTS = ("A", "B")
RUBRIC = [
    ("Evidence", "Every factor is grounded in the prompt's news, prices or financials; nothing invented."),
    ("Factual accuracy", "Numbers, names and dates match the prompt; no contradictions."),
    ("Reasoning", "The prediction follows from the factors weighed; concerns are not ignored."),
    ("Format", "Positive Developments, Potential Concerns, Prediction & Analysis; a Prediction line."),
]
RATING_SCALE = {1: "unusable", 2: "poor", 3: "acceptable", 4: "good", 5: "excellent"}
SFT_COLUMNS = ("prompt", "answer", "period", "label", "symbol", "id")
DPO_COLUMNS = ("prompt", "chosen", "rejected", "style", "system", "user", "id", "source", "reviewers")


class HitlError(ValueError):
    """A user-fixable problem (missing run file, wrong db, test-split export): one `Error:` line."""


def now():
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def parsed_summary(text):
    """What the page shows about an answer: the parser's verdict (the one parser, from prompt.py)."""
    p = parse_answer(text or "")
    return {"ok": p.ok, "problems": list(p.problems), "prediction": p.prediction, "direction": p.direction,
            "magnitude": p.magnitude, "bin_code": p.bin_code}


# ---------------------------------------------------------------------------------------------
# Loading run dirs (serve only)
# ---------------------------------------------------------------------------------------------
def run_style(manifest):
    """The prompt style a run generated with: the adapter's saved style, else run.json's style name,
    else the model registry's choice for the run's model."""
    adapter = manifest.get("adapter")
    if adapter and (Path(adapter) / "prompt_style.json").exists():
        return PromptStyle.load(adapter)
    if manifest.get("prompt_style") in PROMPT_STYLES:
        return get_style(manifest["prompt_style"])
    if manifest.get("backend") == "file":     # imported outputs: the model name is only a label
        raise HitlError(f"imported run ({(manifest.get('source') or {}).get('file')}): its prompt style is unknown "
                        "(no chat markers in the file's prompts); import it again with --prompt_style NAME "
                        "--overwrite")
    if manifest.get("model"):
        from models import resolve_model   # only needed for manifests without a style name
        return get_style(resolve_model(manifest["model"]).prompt_style)
    raise HitlError("run.json names no prompt_style and no model; cannot tell how prompts were formatted")


def load_run(run_dir):
    run_dir = Path(run_dir)
    manifest_path, predictions_path = run_dir / "run.json", run_dir / "predictions.jsonl"
    missing = [p.name for p in (manifest_path, predictions_path) if not p.is_file()]
    if missing:
        raise HitlError(f"{run_dir}: missing {', '.join(missing)}; pass a run dir written by inference.py")
    manifest = json.loads(manifest_path.read_text())
    from inference import read_predictions
    predictions, torn = read_predictions(predictions_path)
    if torn:
        print(f"note: {predictions_path}: skipped {torn} unreadable line(s) (a run killed mid-write); "
              "resume it with the same inference.py command to complete it")
    dataset = manifest.get("dataset") or {}
    if not dataset.get("path"):
        raise HitlError(f"{manifest_path}: no dataset.path; cannot show the prompts")
    data_path = Path(dataset["path"])
    if not data_path.is_absolute() and not data_path.exists() and (run_dir / data_path).exists():
        data_path = run_dir / data_path       # a path written relative to the run dir
    return {"run_dir": str(run_dir.resolve()), "name": run_dir.name, "manifest": manifest,
            "style": run_style(manifest), "predictions": predictions, "data_path": str(data_path),
            "predictions_sha": hashlib.sha256(predictions_path.read_bytes()).hexdigest()[:16]}


def load_review_set(run_dirs):
    """Runs + the dataset rows their ids point to -> records for the store."""
    if not 1 <= len(run_dirs) <= MAX_RUNS:
        raise HitlError(f"--runs takes 1 or {MAX_RUNS} run dirs, got {len(run_dirs)}")
    runs = [load_run(d) for d in run_dirs]
    rows_by_id, split_of = {}, {}
    for path in dict.fromkeys(r["data_path"] for r in runs):
        dd = load_forecast_dataset(path)
        for split, ds in dd.items():
            for row in ds.select_columns(["id", "prompt", "answer", "period", "label", "symbol"]).to_list():
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
# The store: current state per (example, reviewer) + an append-only history
# ---------------------------------------------------------------------------------------------
REVIEW_FIELDS = ("rating_A", "rating_B", "direction_A", "direction_B", "preference", "comment",
                 "edit_A", "edit_B")
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (slot TEXT PRIMARY KEY, run_dir TEXT NOT NULL, name TEXT NOT NULL,
    manifest TEXT NOT NULL, style TEXT NOT NULL, predictions_sha TEXT NOT NULL, registered_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS examples (id TEXT PRIMARY KEY, position INTEGER NOT NULL, symbol TEXT NOT NULL,
    period TEXT NOT NULL, label TEXT NOT NULL, split TEXT NOT NULL, prompt TEXT NOT NULL,
    reference TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outputs (example_id TEXT NOT NULL REFERENCES examples(id), slot TEXT NOT NULL,
    output TEXT NOT NULL, PRIMARY KEY (example_id, slot));
CREATE TABLE IF NOT EXISTS reviews (example_id TEXT NOT NULL REFERENCES examples(id), reviewer TEXT NOT NULL,
    rating_A INTEGER, rating_B INTEGER, direction_A TEXT, direction_B TEXT, preference TEXT, comment TEXT,
    edit_A TEXT, edit_B TEXT, edit_A_after_reveal INTEGER, edit_B_after_reveal INTEGER, revealed_at TEXT,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (example_id, reviewer));
CREATE TABLE IF NOT EXISTS history (seq INTEGER PRIMARY KEY AUTOINCREMENT, example_id TEXT NOT NULL,
    reviewer TEXT NOT NULL, field TEXT NOT NULL, value TEXT, after_reveal INTEGER NOT NULL, at TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS history_no_update BEFORE UPDATE ON history
    BEGIN SELECT RAISE(ABORT, 'review history is append-only'); END;
CREATE TRIGGER IF NOT EXISTS history_no_delete BEFORE DELETE ON history
    BEGIN SELECT RAISE(ABORT, 'review history is append-only'); END;
"""


class ReviewStore:
    """One SQLite file in WAL mode. Each call opens its own connection and writes in one
    BEGIN IMMEDIATE transaction, so concurrent reviewers (threads or processes) queue, not collide;
    a write touches only the fields it changes, so two writers never undo each other."""

    def __init__(self, path):
        self.path = str(path)
        with self.connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    def connect(self):
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        return closing(db)   # `with` closes it (sqlite3's own context manager only commits)

    def register(self, runs, examples):
        """Copy runs and examples in; a db already holding other runs is refused (its reviews would
        point at outputs the page no longer shows)."""
        with self.connect() as db:
            db.execute("BEGIN IMMEDIATE")
            old = {r["slot"]: (r["run_dir"], r["predictions_sha"]) for r in db.execute("SELECT * FROM runs")}
            new = {slot: (r["run_dir"], r["predictions_sha"]) for slot, r in zip(SLOTS, runs)}
            if old and old != new:
                db.execute("ROLLBACK")
                held = ", ".join(f"{s}={d}" for s, (d, _) in sorted(old.items()))
                raise HitlError(f"{self.path} holds reviews of other runs or changed predictions ({held}); "
                                "pass the same --runs in the same order, or a new --db")
            if not old:
                for slot, r in zip(SLOTS, runs):
                    db.execute("INSERT INTO runs VALUES (?,?,?,?,?,?,?)",
                               (slot, r["run_dir"], r["name"], json.dumps(r["manifest"]),
                                json.dumps(r["style"].to_dict()), r["predictions_sha"], now()))
                for e in examples:
                    db.execute("INSERT INTO examples VALUES (?,?,?,?,?,?,?,?)",
                               (e["id"], e["position"], e["symbol"], e["period"], e["label"], e["split"],
                                e["prompt"], e["reference"]))
                    db.executemany("INSERT INTO outputs VALUES (?,?,?)",
                                   [(e["id"], s, o) for s, o in e["outputs"].items()])
            db.execute("COMMIT")

    def runs(self):
        with self.connect() as db:
            return [dict(r) for r in db.execute("SELECT * FROM runs ORDER BY slot")]

    def examples(self):
        with self.connect() as db:
            rows = [dict(r) for r in db.execute("SELECT * FROM examples ORDER BY position")]
            outputs = defaultdict(dict)
            for r in db.execute("SELECT * FROM outputs"):
                outputs[r["example_id"]][r["slot"]] = r["output"]
        for r in rows:
            r["outputs"] = outputs[r["id"]]
        return rows

    def _select(self, table, order, **filters):
        """Rows of `table` matching the non-None filters (column = value)."""
        given = {k: v for k, v in filters.items() if v is not None}
        where = "".join(f" AND {column} = ?" for column in given)
        with self.connect() as db:
            return [dict(r) for r in db.execute(f"SELECT * FROM {table} WHERE 1=1{where} ORDER BY {order}",
                                                list(given.values()))]

    def reviews(self, reviewer=None, example_id=None):
        return self._select("reviews", "example_id, reviewer", reviewer=reviewer, example_id=example_id)

    def history(self, example_id=None, reviewer=None):
        return self._select("history", "seq", example_id=example_id, reviewer=reviewer)

    def apply(self, example_id, reviewer, changes, reveal=False):
        """Set the given fields (None clears one) and log each change; reveal=True records that the
        reviewer has seen the outcome. Raises HitlError for a direction mark before the reveal."""
        at = now()
        with self.connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("INSERT INTO reviews (example_id, reviewer, created_at, updated_at) VALUES (?,?,?,?) "
                           "ON CONFLICT (example_id, reviewer) DO NOTHING", (example_id, reviewer, at, at))
                revealed = db.execute("SELECT revealed_at FROM reviews WHERE example_id=? AND reviewer=?",
                                      (example_id, reviewer)).fetchone()["revealed_at"] is not None
                if reveal and not revealed:
                    db.execute("UPDATE reviews SET revealed_at=? WHERE example_id=? AND reviewer=?",
                               (at, example_id, reviewer))
                    db.execute("INSERT INTO history (example_id, reviewer, field, value, after_reveal, at) "
                               "VALUES (?,?,?,?,?,?)", (example_id, reviewer, "revealed", "true", 1, at))
                    revealed = True
                if any(changes.get(f) is not None for f in ("direction_A", "direction_B")) and not revealed:
                    raise HitlError("reveal the outcome before marking a direction right or wrong")
                for name, value in changes.items():
                    assert name in REVIEW_FIELDS, name
                    extra = f", {name}_after_reveal = {int(revealed)}" if name.startswith("edit_") else ""
                    db.execute(f"UPDATE reviews SET {name} = ?{extra}, updated_at = ? "
                               "WHERE example_id = ? AND reviewer = ?", (value, at, example_id, reviewer))
                    db.execute("INSERT INTO history (example_id, reviewer, field, value, after_reveal, at) "
                               "VALUES (?,?,?,?,?,?)",
                               (example_id, reviewer, name, json.dumps(value), int(revealed), at))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return self.reviews(reviewer, example_id)[0]


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
    args = p.parse_args(argv)
    if args.command == "serve":
        if not 1 <= args.port <= 65535:
            p.error(f"--port {args.port} is not a TCP port (1-65535)")
        if args.runs and len(args.runs) > MAX_RUNS:
            p.error(f"--runs takes at most {MAX_RUNS} run dirs (A and B), got {len(args.runs)}")
        if not args.runs and not Path(args.db).is_file():
            p.error(f"--runs is required: {args.db} does not exist yet")
    elif not 1 <= args.min_mean_rating <= 5:
        p.error(f"--min_mean_rating {args.min_mean_rating} is outside the 1-5 rating scale")
    return args


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


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.command == "serve":
            serve(args)
        else:
            started = time.time()
            from hitl_export import export, format_report
            report = export(args.db, args.out, args.min_mean_rating, args.include_hindsight_edits, args.overwrite)
            print(format_report(report, args.out) + f"\n  ({time.time() - started:.1f} s)")
        return 0
    except (HitlError, DatasetError, sqlite3.DatabaseError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
