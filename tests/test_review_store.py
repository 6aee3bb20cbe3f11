"""review_store.py: the review db's one owner. Read-only opens never write, refuse what is not a
review db with one clear message, and no module reaches the db (or the hitl.py script) around it."""
import ast
import doctest
import hashlib
import sqlite3
from pathlib import Path

import pytest

import review_store
from prompt import get_style
from review_store import HitlError, ReviewStore

ROOT = Path(__file__).resolve().parent.parent


def stored_example(example_id="AAA|2012-03-04 to 2012-03-11", split="validation"):
    return {"id": example_id, "position": 0, "symbol": "AAA", "period": "2012-03-04 to 2012-03-11",
            "label": "up by 1-2%", "split": split, "prompt": "[INST]<<SYS>>\ns\n<</SYS>>\n\nu[/INST]",
            "reference": "teacher", "outputs": {"A": "model answer"}}


def registered_store(path):
    store = ReviewStore(path)
    store.register([{"run_dir": "/runs/a", "name": "a", "manifest": {"model": "m"}, "style": get_style("chatml"),
                     "predictions_sha": "abc"}], [stored_example()])
    return store


def test_a_read_only_store_reads_what_the_page_wrote_and_cannot_write(tmp_path):
    db = tmp_path / "reviews.sqlite"
    registered_store(db).apply(stored_example()["id"], "ann", {"rating_A": 4, "comment": "fine"})
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    reader = ReviewStore.read_only(db)
    assert [r["name"] for r in reader.runs()] == ["a"]
    assert reader.example_splits() == {stored_example()["id"]: "validation"}
    assert [(r["reviewer"], r["rating_A"], r["comment"]) for r in reader.reviews()] == [("ann", 4, "fine")]
    assert [h["field"] for h in reader.history()] == ["rating_A", "comment"]
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.apply(stored_example()["id"], "bob", {"rating_A": 1})
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert len(ReviewStore.read_only(db).reviews()) == 1


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "no such file (start `hitl.py serve --db"),
    (lambda p: p.write_text("not a database at all, just some words"), "not a SQLite file"),
    (lambda p: p.touch(), "not a review db from `hitl.py serve` (no runs, examples, outputs, reviews, history"),
    (lambda p: sqlite3.connect(p).execute("CREATE TABLE reviews (x)"), "(no runs, examples, outputs, history table)"),
])
def test_read_only_refuses_what_is_not_a_review_db_and_leaves_it_as_it_was(tmp_path, make, message):
    db = tmp_path / "reviews.sqlite"
    make(db)
    before = db.read_bytes() if db.exists() else None
    with pytest.raises(HitlError, match="^" + str(db).replace("\\", "\\\\") + ": ") as error:
        ReviewStore.read_only(db)
    assert message in str(error.value)
    assert (db.read_bytes() if db.exists() else None) == before


def test_a_store_on_a_file_that_is_not_sqlite_is_a_hitl_error_not_a_traceback(tmp_path):
    db = tmp_path / "notes.sqlite"
    db.write_text("my notes")
    with pytest.raises(HitlError, match="cannot be used as a review db"):
        ReviewStore(db)
    assert db.read_text() == "my notes"


def test_a_direction_mark_before_the_reveal_is_refused_and_nothing_is_logged(tmp_path):
    store = registered_store(tmp_path / "r.sqlite")
    with pytest.raises(HitlError, match="reveal the outcome before marking a direction"):
        store.apply(stored_example()["id"], "ann", {"rating_A": 3, "direction_A": "right"})
    assert store.history() == [] and store.reviews() == []


def test_export_and_report_open_the_db_read_only(tmp_path, monkeypatch, capsys):
    import hitl_export
    import report
    db = tmp_path / "reviews.sqlite"
    registered_store(db).apply(stored_example()["id"], "ann", {"rating_A": 5})
    opened = []
    real_init = ReviewStore.__init__

    def spy(self, path, read_only=False):
        opened.append(read_only)
        real_init(self, path, read_only)
    monkeypatch.setattr(ReviewStore, "__init__", spy)
    hitl_export.export(db, tmp_path / "export")
    assert report.main(["--reviews", str(db), "--out", str(tmp_path / "report")]) == 0
    assert opened and all(opened), opened
    assert "1 reviews by 1 reviewer(s)" in (tmp_path / "report" / "report.md").read_text()


def test_review_store_doctests_pass():
    result = doctest.testmod(review_store)
    assert result.attempted > 0 and result.failed == 0


def project_imports(path):
    """(line, module) for every import in a file, at any depth."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name.split(".")[0]) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.lineno, node.module.split(".")[0]


def test_no_module_imports_the_hitl_script_and_only_review_store_speaks_sql_to_the_db():
    modules = sorted(p for p in ROOT.glob("*.py"))
    importers = [f"{p.name}:{line}" for p in modules for line, name in project_imports(p) if name == "hitl"]
    assert importers == [], f"hitl.py is a script (a leaf); import review_store / hitl_export instead: {importers}"
    for reader in ("hitl.py", "hitl_export.py", "report.py"):     # the review db's users go through its owner
        imported = {name for _, name in project_imports(ROOT / reader)}
        assert "review_store" in imported and "sqlite3" not in imported, reader
