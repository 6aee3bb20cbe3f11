"""The run dir: the one owner of its on-disk format.

A run dir is what `inference.py --out DIR` writes (and `inference.py --backend file` imports into):

    DIR/predictions.jsonl   one JSON object per example: id, symbol, period, label, reference, output,
                            latency_s, output_tokens, hit_max_new_tokens (+ p_up: hf, vllm, openai --logprobs;
                            p_bins, samples: hf)
    DIR/run.json            the manifest: model, adapter, prompt_style, backend, dtype, decoding, dataset
                            {path, split, fingerprint}, hardware, versions, status, n, completed, ...

comparison.py, hitl.py and report.py read run dirs through `load_run`; inference.py writes them through
`RunWriter`. The rules that live here and nowhere else:
- torn line: a run killed mid-write leaves a partial last line; readers skip it, the writer cuts it off
  before appending, so the next write starts on a clean line;
- first occurrence of an id wins;
- resume: a run dir continues only with the settings in `RESUME_KEYS` unchanged; its run.json keeps what
  earlier parts recorded, with this invocation's settings laid over it;
- prompt style: --prompt_style, else the adapter's prompt_style.json, else run.json's style name, else the
  model registry's style for the model (`style_for`, `run_style`).

    from runs import load_run, run_style, RunWriter
"""
import json
import time
from pathlib import Path

from errors import ForecasterError
from models import resolve_model
from prompt import PROMPT_STYLES, PromptStyle, get_style

PREDICTIONS = "predictions.jsonl"
MANIFEST = "run.json"
# run.json keys that must match for a run dir to be resumed (nested keys as tuples)
RESUME_KEYS = [("model",), ("adapter",), ("prompt_style",), ("backend",), ("dtype",), ("decoding",),
               ("dataset", "split"), ("dataset", "fingerprint")]


class RunError(ForecasterError, ValueError):
    """A run dir that cannot be read or continued; the message names the folder and what to do."""


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------
def read_predictions(path):
    """Rows of a predictions.jsonl by id: first occurrence wins; a torn line (killed run) is skipped.
    Returns (rows_by_id, skipped_line_count).

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "predictions.jsonl")
    >>> _ = open(p, "w").write('{"id": "a", "output": "1"}\\n{"id": "a", "output": "2"}\\n{"id": "b", "outp')
    >>> rows, skipped = read_predictions(p)
    >>> sorted(rows), rows["a"]["output"], skipped
    (['a'], '1', 1)
    """
    rows, skipped = {}, 0
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                skipped += 1
                continue
            rows.setdefault(row["id"], row)
    return rows, skipped


def read_done(pred_path):
    """Ids already in predictions.jsonl. A torn last line (the run was killed mid-write) is cut off so
    the next append starts on a clean line."""
    pred_path = Path(pred_path)
    if not pred_path.exists():
        return set()
    data = pred_path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(pred_path, "r+b") as fh:
            fh.truncate(data.rfind(b"\n") + 1)
    return set(read_predictions(pred_path)[0])


def run_dir_problem(run_dir):
    """Why `run_dir` is not a run dir written by inference.py, or None (looks at file names only)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return f"{run_dir}: no such folder (pass a run dir written by inference.py --out)"
    missing = [name for name in (MANIFEST, PREDICTIONS) if not (run_dir / name).is_file()]
    if missing:
        return f"{run_dir}: missing {', '.join(missing)}; pass a run dir written by inference.py"
    return None


def load_run(run_dir):
    """A run dir read once: {"name", "dir", "manifest", "rows" (by id), "skipped_lines", "predictions_path"}.
    Raises RunError when it is not a run dir."""
    run_dir = Path(run_dir)
    problem = run_dir_problem(run_dir)
    if problem:
        raise RunError(problem)
    rows, skipped = read_predictions(run_dir / PREDICTIONS)
    try:
        manifest = json.loads((run_dir / MANIFEST).read_text())
    except ValueError as exc:
        raise RunError(f"{run_dir / MANIFEST}: not JSON ({exc})") from None
    return {"name": run_dir.resolve().name, "dir": str(run_dir), "manifest": manifest, "rows": rows,
            "skipped_lines": skipped, "predictions_path": run_dir / PREDICTIONS}


# ---------------------------------------------------------------------------------------------
# A run's prompt style (the one rule, used when generating and when reading a run back)
# ---------------------------------------------------------------------------------------------
def adapter_base_model(adapter):
    """The base model an adapter records (registry name or hub id), or None."""
    try:
        return json.loads((Path(adapter) / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError):
        return None


def style_for(adapter=None, style_name=None, model=None, override=None):
    """Prompt style: `override` (--prompt_style), else the adapter's saved prompt_style.json, else the
    style named `style_name`, else the model registry's style for `model`.

    >>> style_for(style_name="chatml").name, style_for(style_name="chatml", override="llama2").name
    ('chatml', 'llama2')
    """
    if override:
        return get_style(override)
    if adapter and (Path(adapter) / "prompt_style.json").exists():
        return PromptStyle.load(adapter)
    if style_name:
        return get_style(style_name)
    if model:
        return get_style(resolve_model(model).prompt_style)
    raise RunError("no prompt style, adapter or model given; cannot tell how prompts are formatted")


def run_style(manifest):
    """The prompt style a run generated with (from its run.json), by `style_for`'s rule."""
    name = manifest.get("prompt_style") if manifest.get("prompt_style") in PROMPT_STYLES else None
    adapter = manifest.get("adapter")
    has_adapter_style = bool(adapter) and (Path(adapter) / "prompt_style.json").exists()
    if not name and not has_adapter_style and manifest.get("backend") == "file":
        # imported outputs: the model name is only a label
        raise RunError(f"imported run ({(manifest.get('source') or {}).get('file')}): its prompt style is unknown "
                       "(no chat markers in the file's prompts); import it again with --prompt_style NAME "
                       "--overwrite")
    if not (name or has_adapter_style or manifest.get("model")):
        raise RunError("run.json names no prompt_style and no model; cannot tell how prompts were formatted")
    return style_for(adapter, name, manifest.get("model"))


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def resume_conflicts(old, new):
    """Settings that differ between an existing run.json and this invocation (resuming needs none).

    >>> resume_conflicts({"model": "a", "dataset": {"split": "test"}}, {"model": "a", "dataset": {"split": "val"}})
    ["dataset.split 'test' vs 'val'"]
    """
    return [f"{name} {a!r} vs {b!r}" for name, a, b in differing_keys(old, new, RESUME_KEYS)]


def differing_keys(old, new, keys):
    """(dotted key, old value, new value) for each nested key path whose values differ.

    >>> differing_keys({"a": {"b": 1}}, {"a": {"b": 2}}, [("a", "b"), ("c",)])
    [('a.b', 1, 2)]
    """
    out = []
    for key in keys:
        a, b = old, new
        for k in key:
            a, b = (a or {}).get(k), (b or {}).get(k)
        if a != b:
            out.append((".".join(key), a, b))
    return out


class RunWriter:
    """Appends predictions to out/predictions.jsonl and keeps out/run.json current.

        with RunWriter(out, manifest, n_rows, overwrite) as w:   # RunError: a run with other settings
            todo = [r for r in rows if r["id"] not in w.done]
            w.write(row, text, tokens, hit_max, latency, extra)   # one line per generated example
        w.summary                                                # written, resumed, hit_max, tokens_per_s
    """

    def __init__(self, out, manifest, n_rows, overwrite=False):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.pred_path, self.manifest_path = self.out / PREDICTIONS, self.out / MANIFEST
        if overwrite:
            self.pred_path.unlink(missing_ok=True)
        previous = (json.loads(self.manifest_path.read_text())
                    if self.manifest_path.exists() and self.pred_path.exists() else None)
        if previous:
            conflicts = resume_conflicts(previous, manifest)
            if conflicts:
                raise RunError(f"{self.out} holds a run made with other settings ({'; '.join(conflicts)}); "
                               "pass another --out, or --overwrite to start it again")
        self.done = read_done(self.pred_path)
        self.prior_wall = (previous or {}).get("wall_time_s") or 0.0
        self.n_rows = n_rows
        # a resumed run keeps what earlier parts recorded after generating (e.g. `probabilities`) unless redone
        self.manifest = {**(previous or {}), **manifest, "n": n_rows, "status": "running"}
        self.manifest_path.write_text(json.dumps(self.manifest, indent=2))
        self.summary = None
        self._fh = None
        self._t0 = time.time()        # wall_time_s counts from here (batch planning included), as before

    def __enter__(self):
        self._fh = open(self.pred_path, "a", encoding="utf-8")
        return self

    def write(self, row, text, tokens, hit_max, latency, extra=None):
        self._fh.write(json.dumps({"id": row["id"], "symbol": row["symbol"], "period": row["period"],
                                   "label": row["label"], "reference": row["answer"], "output": text,
                                   "latency_s": latency, "output_tokens": tokens,
                                   "hit_max_new_tokens": bool(hit_max), **(extra or {})},
                                  ensure_ascii=False) + "\n")

    def flush(self):
        self._fh.flush()

    def __exit__(self, *exc):
        self._fh.close()
        written = list(read_predictions(self.pred_path)[0].values())     # the one reader's rules
        tokens = sum(p["output_tokens"] or 0 for p in written)
        gen_time = sum(p["latency_s"] or 0 for p in written)
        self.manifest.update(status="complete" if len(written) >= self.n_rows else "partial",
                             completed=len(written), wall_time_s=round(self.prior_wall + time.time() - self._t0, 2),
                             tokens_per_s=round(tokens / gen_time, 2) if gen_time and tokens else None)
        self.manifest_path.write_text(json.dumps(self.manifest, indent=2))
        self.summary = {"written": len(written), "resumed": len(self.done),
                        "hit_max": sum(p["hit_max_new_tokens"] for p in written),
                        "tokens_per_s": self.manifest["tokens_per_s"]}
        return False
