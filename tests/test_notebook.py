"""notebooks/colab_quickstart.ipynb: its CLI calls checked against the scripts' own parsers, committed
without outputs, linked from the README, and executed top to bottom in its smoke mode on the CPU."""
import argparse
import ast
import contextlib
import io
import itertools
import json
import os
import re
import shlex
import sys
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "colab_quickstart.ipynb"
COLAB_ONLY = {"install", "secrets", "drive", "review-server"}      # and only these are skipped outside Colab
SCRIPTS = ("data_pipeline.py", "train_lora.py", "inference.py", "comparison.py", "report.py", "hitl.py")
SHELL_OPERATORS = {">", ">>", "2>&1", "&", "|", "&&", ";"}


def notebook():
    return json.loads(NOTEBOOK.read_text())


def code_cells():
    return [c for c in notebook()["cells"] if c["cell_type"] == "code"]


def cell_python(cell):
    """The cell as IPython runs it: `!cmd` lines become get_ipython().system('cmd') calls."""
    from IPython.core.inputtransformer2 import TransformerManager
    return TransformerManager().transform_cell("".join(cell["source"]))


def shell_commands():
    """(cell id, command string) of every `!` line, placeholders like {DATASET} left as written."""
    found = []
    for cell in code_cells():
        for node in ast.walk(ast.parse(cell_python(cell))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "system":
                found.append((cell["id"], node.args[0].value))
    return found


def flag_alternatives():
    """{NAME: [flag strings]} for every variable named *_FLAGS: the literal strings it can hold."""
    alternatives = {}
    for cell in code_cells():
        for node in ast.walk(ast.parse(cell_python(cell))):
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id.endswith("_FLAGS")
                                                    for t in node.targets):
                assert not any(isinstance(n, ast.JoinedStr) for n in ast.walk(node.value)), \
                    f"{ast.unparse(node)}: *_FLAGS variables hold literal strings only (this test reads them)"
                name = next(t.id for t in node.targets if isinstance(t, ast.Name))
                strings = [n.value for n in ast.walk(node.value) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
                alternatives.setdefault(name, []).extend(s for s in strings if not s or s.startswith("--"))
    return alternatives


def script_parser(script):
    """The script's own argparse parser: build_parser() where it has one, else the parser its parse_args()
    builds, caught at the moment it would parse."""
    module = __import__(script.removesuffix(".py"))   # conftest puts the repository on sys.path
    if hasattr(module, "build_parser"):
        return module.build_parser()

    class Caught(Exception):
        pass

    def catch(parser, *args, **kwargs):
        raise Caught(parser)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", catch), pytest.raises(Caught) as caught:
        module.parse_args([])
    return caught.value.args[0]


def subcommand_parser(parser, name):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(name)
    return None


def stand_in(action):
    """A value the action accepts, for a {PLACEHOLDER} (its real value exists only when the notebook runs)."""
    if action is not None and action.choices:
        return str(next(iter(action.choices)))
    if action is not None and action.type in (int, float):
        return "1"
    return "placeholder"


def script_calls():
    """(cell id, script, [argv alternatives]) for every `!{sys.executable} script.py ...` command; an argv
    alternative per combination of the *_FLAGS variables it uses."""
    alternatives = flag_alternatives()
    calls = []
    for cell_id, command in shell_commands():
        tokens = shlex.split(command)
        if tokens[0] == "nohup":
            tokens = tokens[1:]
        if tokens[0] != "{sys.executable}" or tokens[1] == "-m":
            continue
        script, args = tokens[1], list(itertools.takewhile(lambda t: t not in SHELL_OPERATORS, tokens[2:]))
        options = [alternatives[t[1:-1]] if re.fullmatch(r"\{\w+_FLAGS\}", t) else [t] for t in args]
        argvs = [[tok for chosen in combo for tok in shlex.split(chosen)] for combo in itertools.product(*options)]
        calls.append((cell_id, script, argvs))
    return calls


def flag_problems(calls):
    """One line per call whose flags its script's parser does not know, or that the parser refuses with
    stand-in values for the {PLACEHOLDERS}."""
    problems = []
    for cell_id, script, argvs in calls:
        parser = script_parser(script)
        for argv in argvs:
            own = subcommand_parser(parser, argv[0]) if argv and not argv[0].startswith("-") else None
            options = (own or parser)._option_string_actions
            unknown = [t.split("=")[0] for t in argv if t.startswith("--") and t.split("=")[0] not in options]
            if unknown:   # exact names: argparse would also take an abbreviation, which breaks when a flag is added
                problems.append(f"[{cell_id}] {script}: unknown flag(s) {', '.join(unknown)}")
                continue
            concrete = [stand_in(options.get(prev)) if re.fullmatch(r"\S*\{\w+(\.\w+)*\}\S*", tok) else tok
                        for prev, tok in zip([None, *argv], argv)]
            stderr = io.StringIO()
            try:
                with contextlib.redirect_stderr(stderr):
                    parser.parse_args(concrete)
            except SystemExit:
                problems.append(f"[{cell_id}] {script} {' '.join(concrete)}: {stderr.getvalue().strip()}")
    return problems


def test_every_cli_call_in_the_notebook_uses_flags_its_script_knows():
    calls = script_calls()
    assert {script for _, script, _ in calls} == set(SCRIPTS), "every stage's script is called"
    problems = list(dict.fromkeys(flag_problems(calls)))     # one line per problem, not per *_FLAGS variant
    assert not problems, "\n".join(problems)


def test_flag_check_catches_unknown_flags_abbreviations_and_bad_values():
    calls = [("a", "train_lora.py", [["--max_steps", "{MAX_STEPS}", "--save_step", "10"]]),   # an abbreviation
             ("b", "inference.py", [["--out", "{TEST_RUN}", "--backend", "nope"]]),           # not a choice
             ("c", "hitl.py", [["serve", "--runs", "{RUN}", "--db_path", "x"]]),              # subcommand flag
             ("d", "comparison.py", [["--dataset", "{DATASET}"]]),                             # no RUN_DIR, no --out
             ("e", "train_lora.py", [["--preset", "{PRESET}", "--max_steps", "{MAX_STEPS}"]])]  # fine
    problems = flag_problems(calls)
    assert [p[:3] for p in problems] == ["[a]", "[b]", "[c]", "[d]"], problems
    assert "--save_step" in problems[0] and "nope" in problems[1] and "--db_path" in problems[2]


def test_python_runs_through_the_kernels_interpreter():
    for cell_id, command in shell_commands():
        first = shlex.split(command)[0]
        assert first not in ("python", "python3", "pip", "pip3"), f"[{cell_id}] {command}: use {{sys.executable}}"
        assert ".py" not in command or "{sys.executable}" in command, f"[{cell_id}] {command}"


def test_presets_the_runtime_check_picks_exist_in_train_lora():
    import train_lora
    source = next(cell_python(c) for c in code_cells() if c["id"] == "runtime-check")
    table = next(n.value for n in ast.walk(ast.parse(source))
                 if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "GPU_PRESETS")
    picked = {ast.literal_eval(row)[2] for row in table.elts}
    assert {"colab-t4", "l4-24g", "a100-40g", "a100-80g", "h100-80g"} <= picked
    assert picked <= set(train_lora.PRESETS)
    paths = next(cell_python(c) for c in code_cells() if c["id"] == "paths")
    assert set(re.findall(r'"([a-z0-9-]+)": "--', paths)) <= set(train_lora.PRESETS)   # INFER_FLAGS keys


def run_runtime_check(gpu_name, gib, in_colab=True, smoke=False):
    """The runtime-check cell as it runs, with torch.cuda answering like the given card (None: no GPU)."""
    import types
    props = types.SimpleNamespace(total_memory=int(gib * 2**30) if gib else 0)
    cuda = types.SimpleNamespace(is_available=lambda: gpu_name is not None, get_device_name=lambda i: gpu_name,
                                 get_device_properties=lambda i: props)
    namespace = {"SMOKE": smoke, "IN_COLAB": in_colab, "PRESET": "cpu" if smoke else None}
    source = cell_python(next(c for c in code_cells() if c["id"] == "runtime-check"))
    with mock.patch.dict(sys.modules, {"torch": types.SimpleNamespace(cuda=cuda)}), \
            contextlib.redirect_stdout(io.StringIO()):
        exec(compile(source, "runtime-check", "exec"), namespace)
    return namespace["PRESET"]


@pytest.mark.parametrize("gpu_name, gib, preset", [
    ("Tesla T4", 14.7, "colab-t4"), ("NVIDIA L4", 22.2, "l4-24g"), ("NVIDIA A100-SXM4-40GB", 39.4, "a100-40g"),
    ("NVIDIA A100-SXM4-80GB", 79.1, "a100-80g"), ("NVIDIA H100 80GB HBM3", 79.2, "h100-80g"),
    ("NVIDIA H200", 139.8, "h200-141g")])
def test_runtime_check_picks_the_preset_from_the_gpu(gpu_name, gib, preset):
    assert run_runtime_check(gpu_name, gib) == preset


def test_runtime_check_stops_a_colab_runtime_without_gpu_and_names_the_menu():
    with pytest.raises(RuntimeError, match="Runtime → Change runtime type → GPU"):
        run_runtime_check(None, None)
    with pytest.raises(RuntimeError, match="set PRESET in the Parameters cell"):
        run_runtime_check("NVIDIA L40S", 44.4)                    # not "L4": no preset guessed for it
    assert run_runtime_check(None, None, in_colab=False, smoke=True) == "cpu"


def fake_colab(secrets=None, mount_error=None):
    """google.colab as the Colab-only cells use it: userdata (secrets), drive.mount, output's port proxy."""
    import types
    colab = types.ModuleType("google.colab")
    colab.userdata = types.ModuleType("google.colab.userdata")

    class SecretNotFoundError(Exception):
        pass

    def get(name):
        if name not in (secrets or {}):
            raise SecretNotFoundError(name)
        return secrets[name]
    colab.userdata.SecretNotFoundError, colab.userdata.get = SecretNotFoundError, get
    colab.drive = types.ModuleType("google.colab.drive")
    colab.drive.mounted = []

    def mount(path):
        if mount_error:
            raise mount_error
        colab.drive.mounted.append(path)
    colab.drive.mount = mount
    colab.output = types.ModuleType("google.colab.output")
    colab.output.served = []
    colab.output.serve_kernel_port_as_window = colab.output.served.append
    google = types.ModuleType("google")
    google.colab = colab
    return {"google": google, "google.colab": colab, "google.colab.userdata": colab.userdata,
            "google.colab.drive": colab.drive, "google.colab.output": colab.output}


def run_cell(cell_id, modules=None, **namespace):
    """One cell as IPython runs it, in a simulated Colab: `!` commands are recorded, not run.
    Returns (namespace after the cell, recorded commands, printed text)."""
    import types
    commands, printed = [], io.StringIO()
    shell = types.SimpleNamespace(system=commands.append)
    namespace = {"get_ipython": lambda: shell, "os": os, "sys": sys, "Path": Path, "check": lambda step: None,
                 **namespace}
    with mock.patch.dict(sys.modules, modules or {}), contextlib.redirect_stdout(printed):
        exec(compile(cell_python(next(c for c in code_cells() if c["id"] == cell_id)), cell_id, "exec"), namespace)
    return namespace, commands, printed.getvalue()


def test_install_cell_clones_repo_url_and_keeps_colabs_torch(tmp_path):
    import types
    chdirs = []
    _, commands, _ = run_cell("install", IN_COLAB=True, REPO_URL="https://github.com/someone/fork",
                              REPO=tmp_path / "fork", os=types.SimpleNamespace(chdir=chdirs.append))
    assert commands[0] == "git clone --depth 1 {REPO_URL} {REPO}"
    assert "{sys.executable} -m pip install -q -r requirements.txt bitsandbytes" in commands
    assert not any("torch" in c or "deepspeed" in c for c in commands)
    assert chdirs == [tmp_path / "fork"]


def test_secrets_cell_sets_keys_from_colab_secrets_without_printing_them():
    value = "hf_not_a_real_token_0000"
    with mock.patch.dict(os.environ, clear=False):
        for name in ("HF_TOKEN", "FINNHUB_KEY", "OPENAI_API_KEY", "WANDB_API_KEY"):
            os.environ.pop(name, None)
        _, _, printed = run_cell("secrets", fake_colab({"HF_TOKEN": value}), IN_COLAB=True, MODEL="llama3.1-8b")
        assert os.environ["HF_TOKEN"] == value and "FINNHUB_KEY" not in os.environ
    assert value not in printed
    assert "HF_TOKEN: set from Colab secrets" in printed and "FINNHUB_KEY: not set" in printed
    with mock.patch.dict(os.environ, clear=False), pytest.raises(RuntimeError, match="gated"):
        os.environ.pop("HF_TOKEN", None)
        run_cell("secrets", fake_colab({}), IN_COLAB=True, MODEL="llama3.1-8b")


def test_drive_cell_puts_outputs_on_drive_when_mounted_else_keeps_local_disk():
    local = Path("/content/outputs/run")
    namespace, _, _ = run_cell("drive", fake_colab(), IN_COLAB=True, USE_DRIVE=True, RUN_NAME="run", OUT=local)
    assert namespace["OUT"] == Path("/content/drive/MyDrive/fingpt-forecaster/run")
    namespace, _, printed = run_cell("drive", fake_colab(mount_error=ValueError("declined")), IN_COLAB=True,
                                     USE_DRIVE=True, RUN_NAME="run", OUT=local)
    assert namespace["OUT"] == local and "Drive not mounted" in printed


def test_a_rerun_resumes_from_the_last_checkpoint_and_a_t4_saves_every_10_steps(tmp_path):
    settings = dict(OUT=tmp_path, DATA_SOURCE="public", DATASET="FinGPT/fingpt-forecaster-dow30-202305-202405",
                    SMOKE=False, PRESET="colab-t4", MAX_STEPS=73)
    first, _, _ = run_cell("paths", **settings)
    assert first["SAVE_STEPS"] == 10 and first["RESUME_FLAGS"] == ""
    assert "--load_in_4bit" in first["INFER_FLAGS"]
    (tmp_path / "adapter" / "checkpoint-10").mkdir(parents=True)          # what a lost runtime leaves behind
    again, _, printed = run_cell("paths", **settings)
    assert again["RESUME_FLAGS"] == "--resume_from_checkpoint last" and "resuming" in printed


def test_review_cell_serves_the_validation_run_through_colabs_port_proxy(tmp_path):
    modules = fake_colab()
    _, commands, _ = run_cell("review-server", modules, IN_COLAB=True, REVIEW=True, OUT=tmp_path,
                              REVIEW_RUN=tmp_path / "review-run")
    assert commands == ["nohup {sys.executable} hitl.py serve --runs {REVIEW_RUN} --db {OUT}/reviews.sqlite "
                        "--port {REVIEW_PORT} > {OUT}/hitl.log 2>&1 &"]
    assert modules["google.colab.output"].served == [8765]


def test_notebook_is_committed_with_outputs_cleared():
    for cell in code_cells():
        assert cell["outputs"] == [] and cell["execution_count"] is None, f"cell {cell['id']} has outputs"


def test_colab_only_cells_are_tagged_and_say_why_they_skip():
    cells = {c["id"]: c for c in code_cells()}
    tagged = {i for i, c in cells.items() if "colab-only" in c["metadata"].get("tags", [])}
    assert tagged == COLAB_ONLY
    for cell_id in COLAB_ONLY:
        assert "skipped (Colab only)" in "".join(cells[cell_id]["source"])


def test_readme_badge_opens_this_notebook_from_repo_url():
    source = "".join(next(c for c in code_cells() if c["id"] == "parameters")["source"])
    repo_url = re.search(r'^REPO_URL = "([^"]+)"', source, re.M).group(1)
    owner_repo = repo_url.removeprefix("https://github.com/").removesuffix(".git")
    badge = f"https://colab.research.google.com/github/{owner_repo}/blob/main/notebooks/colab_quickstart.ipynb"
    assert badge in (ROOT / "README.md").read_text()
    assert badge in "".join(notebook()["cells"][0]["source"])


@pytest.fixture
def kernel_name(tmp_path, monkeypatch):
    """A kernelspec for this interpreter (the venv the tests run in), found through JUPYTER_PATH: a clean
    clone needs no `ipykernel install`. TMPDIR puts the notebook's temporary output folder under tmp_path."""
    spec = tmp_path / "jupyter" / "kernels" / "forecaster-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "forecaster tests", "language": "python",
        # one thread per process unless the caller chose: OpenMP threads spin on a busy 2-core machine
        "env": {"TMPDIR": str(tmp_path), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
                "PYDEVD_DISABLE_FILE_VALIDATION": "1"}}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    return "forecaster-test"


def test_smoke_run_executes_every_cell_but_the_colab_only_ones(kernel_name, tmp_path, embedded_model_dir):
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, kernel_name=kernel_name, timeout=900,
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()

    def text(cell):
        return "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream")

    cells = {c.id: c for c in nb.cells if c.cell_type == "code"}
    skipped = {i for i, c in cells.items() if "skipped (Colab only)" in text(c)}
    assert skipped == COLAB_ONLY
    assert "smoke run: model smollm2-135m" in text(cells["parameters"])
    out = Path(re.search(r"^outputs: (\S+)$", text(cells["paths"]), re.M).group(1))
    assert out.parent == tmp_path                                  # the temporary folder, not the repository
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((out / "adapter" / "timing.json").read_text())["global_step"] == 2
    verdict = text(cells["memory-verdict"]).lower()
    assert "memory estimate" in verdict and "fits" in verdict and "dry run" in verdict   # before any training
    assert len((out / "test-run" / "predictions.jsonl").read_text().splitlines()) == 2
    assert json.loads((out / "review-run" / "run.json").read_text())["dataset"]["split"] == "validation"
    assert (out / "report" / "report.html").is_file()
    for cell_id, kind in (("loss-curve", "image/png"), ("comparison", "image/png"), ("report", "text/html")):
        assert any(kind in o.get("data", {}) for o in cells[cell_id].outputs), f"{cell_id}: no {kind} shown"
    assert "it/s" in text(cells["train"]) or "s/it" in text(cells["train"])        # the progress bar streams
