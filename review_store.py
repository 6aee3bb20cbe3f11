"""The review DB: one SQLite file that holds what `hitl.py serve` copied from the runs (runs, examples,
outputs) and every reviewer judgement (reviews, append-only history).

This module is the one reader and writer of that file: hitl.py (the page) writes through
ReviewStore(path); hitl_export.py (SFT / DPO export) and report.py (the human-review section) read
through ReviewStore.read_only(path), which never writes to the file. The export column lists live here
too, beside the schema they are read from. HitlError is the store's (and the review stage's) error for
a user-fixable problem: the CLI prints it as one `Error:` line.
"""
import json
import sqlite3
from collections import defaultdict
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path

from errors import ForecasterError

# ---------------------------------------------------------------------------------------------
# The format
# ---------------------------------------------------------------------------------------------
BUSY_TIMEOUT_MS = 10_000         # a second writer waits this long for the lock instead of failing
SLOTS = ("A", "B")               # the page shows at most two outputs side by side
RATING_SCALE = {1: "unusable", 2: "poor", 3: "acceptable", 4: "good", 5: "excellent"}
REVIEW_FIELDS = ("rating_A", "rating_B", "direction_A", "direction_B", "preference", "comment",
                 "edit_A", "edit_B")
SFT_COLUMNS = ("prompt", "answer", "period", "label", "symbol", "id")
DPO_COLUMNS = ("prompt", "chosen", "rejected", "style", "system", "user", "id", "source", "reviewers")
TABLES = ("runs", "examples", "outputs", "reviews", "history")
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


class HitlError(ForecasterError, ValueError):
    """A user-fixable problem (missing run file, wrong db, test-split export): one `Error:` line."""


def now():
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def sqlite_uri(path, mode):
    """A SQLite URI for `path` (percent-encoded, so '?' or '#' in a folder name stay part of the path).

    >>> sqlite_uri("/reviews/round 1?.sqlite", "ro")
    'file:///reviews/round%201%3F.sqlite?mode=ro'
    """
    return f"{Path(path).resolve().as_uri()}?mode={mode}"


# ---------------------------------------------------------------------------------------------
# The store: current state per (example, reviewer) + an append-only history
# ---------------------------------------------------------------------------------------------
class ReviewStore:
    """One SQLite file in WAL mode. Each call opens its own connection and writes in one
    BEGIN IMMEDIATE transaction, so concurrent reviewers (threads or processes) queue, not collide;
    a write touches only the fields it changes, so two writers never undo each other.

    ReviewStore(path) creates the file and the tables when missing (serve);
    ReviewStore.read_only(path) opens an existing review db and never writes to it (export, report)."""

    def __init__(self, path, read_only=False):
        self.path = str(path)
        self.read_only = read_only
        if read_only:
            self._check_readable()
            return
        try:
            with self.connect() as db:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:   # "file is not a database", a folder, a read-only place
            raise HitlError(f"{self.path}: cannot be used as a review db ({exc})") from None

    @classmethod
    def read_only(cls, path):
        """An existing review db, opened read only. HitlError names what is wrong: no such file, not a
        SQLite file, or a SQLite file without the review tables."""
        return cls(path, read_only=True)

    def _check_readable(self):
        if not Path(self.path).is_file():
            raise HitlError(f"{self.path}: no such file (start `hitl.py serve --db {self.path}` first)")
        try:
            with self.connect() as db:
                tables = {r["name"] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            raise HitlError(f"{self.path}: not a SQLite file ({exc})") from None
        missing = [t for t in TABLES if t not in tables]
        if missing:
            raise HitlError(f"{self.path}: not a review db from `hitl.py serve` "
                            f"(no {', '.join(missing)} table)")

    def connect(self):
        if self.read_only:
            db = sqlite3.connect(sqlite_uri(self.path, "ro"), uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
        else:
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

    # --- reads ---------------------------------------------------------------------------------
    def runs(self):
        with self.connect() as db:
            return [dict(r) for r in db.execute("SELECT * FROM runs ORDER BY slot")]

    def examples(self):
        """Every example with its outputs ({slot: text}), in page order."""
        with self.connect() as db:
            rows = [dict(r) for r in db.execute("SELECT * FROM examples ORDER BY position")]
            outputs = defaultdict(dict)
            for r in db.execute("SELECT * FROM outputs"):
                outputs[r["example_id"]][r["slot"]] = r["output"]
        for r in rows:
            r["outputs"] = outputs[r["id"]]
        return rows

    def example_splits(self):
        """{example id: the dataset split it came from}, in page order (no prompts or outputs read)."""
        with self.connect() as db:
            return {r["id"]: r["split"] for r in db.execute("SELECT id, split FROM examples ORDER BY position")}

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

    # --- writes --------------------------------------------------------------------------------
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
