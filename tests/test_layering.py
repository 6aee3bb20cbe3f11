"""The project's layering (issue 15): scripts are leaves, no import cycles, every doctest runs, and
`--help` of every script stays light (no torch).

A script is a top-level .py file containing `__main__`; every other top-level .py file is a library
module. bench/ and tests/ are outside these rules.
"""
import ast
import doctest
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# (importer file, imported module) pairs that are allowed for now, each with its reason. A stale entry fails
# test_allow_list_is_current, so this list only shrinks.
ALLOWED_SCRIPT_IMPORTS = {
    # none: every script is a leaf. An entry reads ("importer.py", "script"): "reason (issue N)".
}


def top_level_modules(root=ROOT):
    return {p.stem: p for p in sorted(root.glob("*.py"))}


def scripts(modules):
    return {name for name, path in modules.items() if "__main__" in path.read_text(encoding="utf-8")}


def project_imports(path, modules):
    """[(imported top-level module, line)] for every import in `path`, top-level or inside a function."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in modules and top != path.stem:
                out.append((top, node.lineno))
    return out


def layering_problems(root=ROOT, allowed=()):
    """'file:line: ...' for each import of a script from another top-level module (not in `allowed`) and
    each import cycle among top-level modules."""
    modules = top_level_modules(root)
    script_names = scripts(modules)
    problems, graph = [], {}
    for name, path in modules.items():
        graph[name] = {}
        for target, line in project_imports(path, modules):
            graph[name].setdefault(target, line)
            if target in script_names and (path.name, target) not in allowed:
                problems.append(f"{path.name}:{line}: imports the script {target}.py (move what it needs into a "
                                "library module)")
    seen_cycles = set()

    def visit(node, stack):
        for target in graph[node]:
            if target in stack:
                cycle = stack[stack.index(target):] + [target]
                key = frozenset(cycle)
                if key not in seen_cycles:
                    seen_cycles.add(key)
                    problems.append("import cycle: " + " -> ".join(
                        f"{a}.py:{graph[a][b]}" for a, b in zip(cycle, cycle[1:])) + f" -> {target}.py")
            elif target not in done:
                visit(target, stack + [target])
        done.add(node)

    done = set()
    for name in graph:
        if name not in done:
            visit(name, [name])
    return problems


def test_scripts_are_leaves_and_there_are_no_cycles():
    assert layering_problems(allowed=ALLOWED_SCRIPT_IMPORTS) == []


def test_allow_list_is_current():
    modules = top_level_modules()
    script_names = scripts(modules)
    for importer, target in ALLOWED_SCRIPT_IMPORTS:
        assert target in script_names, f"{target}.py is no longer a script: drop its allow-list entry"
        assert target in {t for t, _ in project_imports(ROOT / importer, modules)}, \
            f"{importer} no longer imports {target}: drop its allow-list entry"


def test_the_checker_finds_a_script_import_and_a_cycle(tmp_path):
    (tmp_path / "stage.py").write_text('import lib\nif __name__ == "__main__":\n    pass\n')
    (tmp_path / "other.py").write_text('def f():\n    from stage import main\n')
    (tmp_path / "lib.py").write_text("import helper\n")
    (tmp_path / "helper.py").write_text("\n\nimport lib\n")
    problems = layering_problems(tmp_path)
    assert "other.py:2: imports the script stage.py (move what it needs into a library module)" in problems
    assert any(p.startswith("import cycle:") and "helper.py:3" in p and "lib.py:1" in p for p in problems)
    assert len(problems) == 2
    assert layering_problems(tmp_path, allowed={("other.py", "stage")}) == [problems[1]]


@pytest.mark.parametrize("name", sorted(top_level_modules()))
def test_doctests_pass(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{name}.py: {result.failed} of {result.attempted} doctest(s) failed"


HELP_PROBE = """
import runpy, sys
sys.argv = [{script!r}, "--help"]
try:
    runpy.run_path({script!r}, run_name="__main__")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
heavy = sorted(m for m in ("torch", "transformers", "datasets", "vllm", "deepspeed", "bitsandbytes") if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
sys.exit(code)
"""


@pytest.mark.parametrize("script", sorted(s + ".py" for s in scripts(top_level_modules())))
def test_help_does_not_import_torch(script):
    proc = subprocess.run([sys.executable, "-c", HELP_PROBE.format(script=script)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout
    heavy = proc.stdout.strip().splitlines()[-1]
    assert heavy.startswith("HEAVY=")
    assert "torch" not in heavy.removeprefix("HEAVY=").split(","), f"{script} --help imports {heavy}"


# (d) One definition per shared helper and constant: each of these once had twins in several modules.
DEFINED_ONCE = {
    "fmt": "utils", "fmt_p": "utils",                     # table-cell formatting (report, scoring, signals)
    "length_stats": "dataset_io",                         # dataset summaries and supervision audits
    "read_predictions": "runs", "read_done": "runs", "resume_conflicts": "runs",   # the run-dir format
    "run_style": "runs", "style_for": "runs",            # one way to find a run's prompt style
    "_PREDICTION_LINE_RE": "prompt",                     # the Prediction-line regex (parser and export)
    "CACHE_ENV": "models",                               # the FORECASTER_CACHE variable name
    "package_versions": "models",                        # versions in every manifest (was data_pipeline._versions)
    "ci_text": "comparison_files",                       # a CI as table text (was report._ci_text, signals._ci)
    "BOOTSTRAP_SAMPLES": "clustered_stats", "CONFIDENCE": "clustered_stats",   # were in scoring and signals
    "GREEDY": "generation", "stop_rule": "generation",  # one meaning of greedy, one stop rule per style
    "plan_batches": "generation", "HFGenerator": "generation", "Generated": "generation",
    "chat_parts": "prompt",                              # (system, user) of a row, for training and inference
    "load_run": "runs",                                  # one run-dir reader (was in comparison, hitl, scoring)
    "read_split": "dataset_io", "last_whole_weeks": "dataset_io", "ROW_COLUMNS": "dataset_io",   # a split as rows
    "ForecasterError": "errors", "cli": "errors",        # one way to fail
}
RETIRED = ("_stats", "_f", "_p", "resolve_style", "_versions", "_ci", "_ci_text", "fail", "load_split", "load_rows")


def top_level_definitions(path):
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def test_each_shared_helper_and_constant_is_defined_once():
    defined = {p.stem: top_level_definitions(p) for p in sorted(ROOT.glob("*.py"))}
    for name, owner in DEFINED_ONCE.items():
        where = sorted(m for m, names in defined.items() if name in names)
        assert where == [owner], f"{name} is defined in {where}, expected only in {owner}.py"
    for name in RETIRED:
        where = sorted(m for m, names in defined.items() if name in names)
        assert not where, f"{name} is back in {where}: use the one shared definition"
    literal = sorted(p.stem for p in ROOT.glob("*.py") if '"FORECASTER_CACHE"' in p.read_text())
    assert literal == ["models"], f"the FORECASTER_CACHE name is spelled out in {literal}; import models.CACHE_ENV"


# (e) One way to fail: one base class, one wrapper, helpers raise.
def domain_errors():
    """{(module, class name): class} for every exception class defined in a project module."""
    found = {}
    for name in top_level_modules():
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == name:
                found[(name, attr)] = value
    return found


def test_every_domain_error_subclasses_the_one_base():
    from errors import ForecasterError
    errors = domain_errors()
    assert len(errors) >= 15                   # DatasetError, RunError, ModelError, ... (a vacuous pass fails)
    strays = sorted(f"{m}.{c}" for (m, c), cls in errors.items() if not issubclass(cls, ForecasterError))
    assert strays == [], f"not subclasses of errors.ForecasterError: {strays}"


def functions_named(tree, name):
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name]


def failure_idiom_problems(root=ROOT):
    """'file:line: ...' for each way to fail other than raising a ForecasterError: sys.exit outside the
    `if __name__ == "__main__"` block, a printed `Error:` line outside errors.py, an `except` in a script's
    main, and a script main not wrapped by errors.cli."""
    problems = []
    modules = top_level_modules(root)
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        main_block = set()
        for node in tree.body:
            if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
                main_block.update(id(n) for n in ast.walk(node))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("sys.exit", "exit", "quit") \
                    and id(node) not in main_block:
                problems.append(f"{path.name}:{node.lineno}: sys.exit in a helper (raise a ForecasterError)")
            if name != "errors" and isinstance(node, ast.Call) and ast.unparse(node.func) == "print" and node.args \
                    and isinstance(node.args[0], (ast.Constant, ast.JoinedStr)) \
                    and ast.unparse(node.args[0]).lstrip("f").strip("'\"").startswith("Error:"):
                problems.append(f"{path.name}:{node.lineno}: prints its own Error: line (raise; errors.cli prints)")
        if name in scripts(modules):
            for main in functions_named(tree, "main"):
                if not any(ast.unparse(d) in ("cli", "errors.cli") for d in main.decorator_list):
                    problems.append(f"{path.name}:{main.lineno}: main is not wrapped by errors.cli")
                problems += [f"{path.name}:{n.lineno}: `except` in main (errors.cli is the one handler)"
                             for n in ast.walk(main) if isinstance(n, ast.ExceptHandler)]
    return problems


def test_one_way_to_fail():
    assert failure_idiom_problems() == []


def test_the_failure_checker_finds_each_idiom(tmp_path):
    (tmp_path / "stage.py").write_text(
        "import sys\n"
        "def helper():\n    sys.exit(1)\n"
        "def warn():\n    print(f'Error: {1}', file=sys.stderr)\n"
        "def main(argv=None):\n    try:\n        helper()\n    except ValueError:\n        return 1\n"
        "if __name__ == '__main__':\n    sys.exit(main())\n")
    problems = failure_idiom_problems(tmp_path)
    assert problems == ["stage.py:3: sys.exit in a helper (raise a ForecasterError)",
                        "stage.py:5: prints its own Error: line (raise; errors.cli prints)",
                        "stage.py:6: main is not wrapped by errors.cli",
                        "stage.py:9: `except` in main (errors.cli is the one handler)"]


# (f) Project imports at the top of each file; inside a function only a module that is heavy to import (it
# loads torch, pandas, ... when imported), so `--help` and the light stages stay light.
HEAVY_LIBRARIES = ("torch", "transformers", "datasets", "pandas", "matplotlib", "deepspeed", "bitsandbytes", "vllm",
                   "peft", "trl")
HEAVY_PROBE = "import sys, {module}; print(','.join(m for m in {libraries!r} if m in sys.modules))"


def lazy_project_imports(root=ROOT):
    """{imported module: ['file:line', ...]} for every project import made inside a function."""
    modules = top_level_modules(root)
    found = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
                targets = ([a.name for a in node.names] if isinstance(node, ast.Import)
                           else [node.module] if node.level == 0 and node.module else [])
                for target in (t.split(".")[0] for t in targets):
                    if target in modules and target != name:
                        found.setdefault(target, []).append(f"{path.name}:{node.lineno}")
    return found


def heavy_libraries_loaded_by(module, root=ROOT):
    proc = subprocess.run([sys.executable, "-c", HEAVY_PROBE.format(module=module, libraries=HEAVY_LIBRARIES)],
                          cwd=root, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(root)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [m for m in proc.stdout.strip().splitlines()[-1].split(",") if m] if proc.stdout.strip() else []


def test_project_imports_are_at_the_top_unless_the_module_is_heavy():
    problems = []
    for module, where in sorted(lazy_project_imports().items()):
        if not heavy_libraries_loaded_by(module):
            problems += [f"{w}: imports {module} inside a function (it loads no heavy library: import it at the "
                         "top)" for w in where]
    assert problems == []


def test_the_lazy_import_checker_tells_heavy_from_light(tmp_path):
    (tmp_path / "light.py").write_text("import json\n")
    (tmp_path / "heavy.py").write_text("import pandas\n")
    (tmp_path / "user.py").write_text("def f():\n    import light\n\n\ndef g():\n    from heavy import x\n")
    assert lazy_project_imports(tmp_path) == {"light": ["user.py:2"], "heavy": ["user.py:6"]}
    assert heavy_libraries_loaded_by("light", tmp_path) == []
    assert heavy_libraries_loaded_by("heavy", tmp_path) == ["pandas"]
