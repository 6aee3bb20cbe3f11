"""Reading Weights & Biases runs back without the network: the runs a stage's output folder recorded
(wandb_run.json, written by tracking.finish_run, and <folder>/wandb/*run-* folders), one line per run for
report.py, and a run's history, config, summary and tables from its .wandb file.

`read_offline_run(folder)` reads a run folder with wandb's own record schema
(wandb.proto.wandb_internal_pb2.Record in the leveldb-log framing wandb-core writes); the tests use it to
check what training, inference and comparison logged.
"""
import json
import re
import struct
import zlib
from pathlib import Path

from tracking import RUN_FILE

RUN_FOLDER_RE = re.compile(r"^(?:offline-)?run-\d{8}_\d{6}-(?P<id>[a-z0-9]+)$")


def find_runs(folder):
    """W&B runs recorded in a stage's output folder: wandb_run.json, plus run folders under
    <folder>/wandb/ (a crashed run has no wandb_run.json). Each: {id, project, mode, url, folder}."""
    folder = Path(folder)
    found = {}
    described = folder / RUN_FILE
    if described.is_file():
        try:
            info = json.loads(described.read_text())
            found[info["id"]] = {k: info.get(k) for k in ("id", "name", "project", "mode", "url", "folder")}
        except (json.JSONDecodeError, KeyError):
            pass
    for run_folder in sorted((folder / "wandb").glob("*run-*")):
        match = RUN_FOLDER_RE.match(run_folder.name)
        if not match or match["id"] in found:
            continue
        entry = {"id": match["id"], "name": None, "project": None, "url": None, "folder": str(run_folder.resolve()),
                 "mode": "offline" if run_folder.name.startswith("offline-") else "online"}
        try:
            run = read_offline_run(run_folder, history=False)["run"]
            entry.update(name=run.get("name"), project=run.get("project"))
        except (OSError, ValueError):
            pass
        found[match["id"]] = entry
    return list(found.values())


def describe_run(run):
    """One line for a report: where to see the run (its URL, or the folder to `wandb sync`)."""
    name = f"run {run['id']}" + (f" ({run['name']})" if run.get("name") else "") + \
        (f" in project {run['project']}" if run.get("project") else "")
    if run.get("url"):
        return f"{name}: {run['url']}"
    return f"{name}, {run.get('mode') or 'offline'}: upload with `wandb sync {run['folder']}`"


LEVELDB_BLOCK = 32768
LEVELDB_HEADER = 7                     # checksum u32, length u16, type u8
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
WANDB_FILE_HEADER = struct.pack("<4sHB", b":W&B", 0xBEE1, 0)


def iter_records(path):
    """wandb_internal_pb2.Record messages of a .wandb file. The framing is leveldb's log format with a W&B
    file header (wandb-core's leveldb writer; wandb <= 0.28 shipped it as wandb/sdk/internal/datastore.py);
    every chunk's CRC-32 is checked."""
    from wandb.proto import wandb_internal_pb2
    data = Path(path).read_bytes()
    if data[:LEVELDB_HEADER] != WANDB_FILE_HEADER:
        raise ValueError(f"{path}: not a W&B run file (header {data[:LEVELDB_HEADER]!r})")
    pos, pending = LEVELDB_HEADER, None
    while pos + LEVELDB_HEADER <= len(data):
        left = LEVELDB_BLOCK - pos % LEVELDB_BLOCK
        if left < LEVELDB_HEADER:                  # block trailer: zero padding
            pos += left
            continue
        checksum, length, kind = struct.unpack("<IHB", data[pos:pos + LEVELDB_HEADER])
        if kind == 0 and length == 0:              # preallocated zeros at the end of a live file
            break
        chunk = data[pos + LEVELDB_HEADER:pos + LEVELDB_HEADER + length]
        if len(chunk) < length:
            break                                  # a torn last record (run still writing / killed)
        if zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF != checksum:
            raise ValueError(f"{path}: corrupt record at byte {pos}")
        pos += LEVELDB_HEADER + length
        if kind == FULL:
            payload = chunk
        elif kind == FIRST:
            pending = chunk
            continue
        elif kind == MIDDLE:
            pending = (pending or b"") + chunk
            continue
        elif kind == LAST:
            payload, pending = (pending or b"") + chunk, None
        else:
            raise ValueError(f"{path}: unknown record type {kind} at byte {pos}")
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


def _assign(target, item):
    keys = list(item.nested_key) or [item.key]
    value = json.loads(item.value_json) if item.value_json else None
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = value


def read_offline_run(folder, history=True):
    """A run folder (…/wandb/offline-run-DATE-ID) read back from its run-ID.wandb file:
    {run: {id, project, name, group, job_type, tags, entity}, config, history: [row, ...], summary,
    artifacts: [{type, name, files}], files: [paths saved under files/], system: [system-metric samples],
    folder}."""
    folder = Path(folder)
    paths = sorted(folder.glob("run-*.wandb"))
    if not paths:
        raise ValueError(f"{folder}: no run-*.wandb file")
    run, config, rows, summary, artifacts, files, system = {}, {}, [], {}, [], [], []
    for record in iter_records(paths[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run = {"id": r.run_id, "project": r.project, "name": r.display_name, "group": r.run_group,
                   "job_type": r.job_type, "tags": list(r.tags), "entity": r.entity}
            for item in r.config.update:
                _assign(config, item)
            if not history:
                break
        elif kind == "config":
            for item in record.config.update:
                _assign(config, item)
            for item in record.config.remove:
                config.pop(item.key, None)
        elif kind == "history" and history:
            row = {}
            for item in record.history.item:
                _assign(row, item)
            rows.append(row)
        elif kind == "summary":
            for item in record.summary.update:
                _assign(summary, item)
        elif kind == "artifact":
            a = record.artifact
            artifacts.append({"type": a.type, "name": a.name, "files": [c.path for c in a.manifest.contents]})
        elif kind == "files":
            files += [f.path for f in record.files.files]
        elif kind == "stats" and history:          # wandb's system monitor: cpu, memory, gpu.* on a GPU
            system.append({item.key: json.loads(item.value_json) for item in record.stats.item})
    return {"run": run, "config": config, "history": rows, "summary": summary, "artifacts": artifacts,
            "files": files, "system": system, "folder": str(folder)}


def read_table(run, key):
    """The tables logged under `key` in a read_offline_run() result: [(step_row, {columns, data})]."""
    folder = Path(run["folder"]) / "files"
    tables = []
    for row in run["history"]:
        entry = row.get(key)
        if isinstance(entry, dict) and entry.get("_type") == "table-file" and entry.get("path"):
            tables.append((row, json.loads((folder / entry["path"]).read_text())))
    return tables
