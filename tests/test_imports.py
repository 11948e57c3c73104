"""Every module imports on its own; the layers of [tool.importlinter] in pyproject.toml hold (and would catch
a break); no module cycle; the old flat paths stay importable as the same modules; the project itself
imports only the new paths.

import-linter checks the layers, who may start workers, what workers may import, and cycles between
sibling modules and packages. The hand-written cycle check below stays: it also sees cycles through a
package's ``__init__`` and through the one edge ``acyclic_siblings`` is told to ignore (the supervisor,
savedeep.runner.pipeline, starting ``savedeep._workers``).

The top-level ``workers/`` folder is the package ``savedeep._workers`` (``savedeep/_workers`` is a link to it;
see workers/__init__.py): its modules are checked under that name, and nothing may import it as ``workers``.
"""

from __future__ import annotations

import ast
import io
import os
import re
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"savedeep": ROOT / "savedeep", "savedeep._workers": ROOT / "workers"}  # import name: folder


def _modules() -> dict[str, Path]:
    out = {}
    for pkg, folder in PACKAGES.items():
        for p in folder.rglob("*.py"):
            name = f"{pkg}.{p.relative_to(folder).with_suffix('').as_posix().replace('/', '.')}"
            out[name.removesuffix(".__init__")] = p
    return out


def test_every_module_imports_in_a_fresh_interpreter_of_its_own():
    # Spawned workers import their role module by name in a new interpreter: an import that
    # works only after another module was imported would fail there, and not in one shared process.
    mods = sorted(set(_modules()) - {"savedeep.__main__"})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = {
        m: subprocess.Popen(
            [sys.executable, "-c", f"import {m}"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for m in mods
    }
    failed = {}
    for m, p in procs.items():
        _, err = p.communicate(timeout=300)
        if p.returncode != 0:
            failed[m] = err.strip().splitlines()[-1:]
    assert not failed, failed


def _imports(path: Path, known: set[str]) -> set[str]:
    """The project modules ``path`` imports, at any level (a lazy import inside a function counts too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out |= {f"{node.module}.{a.name}" for a in node.names} & known
            out |= {node.module} & known
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names} & known
    return out


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        path.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                return path[path.index(w) :] + [w]
            if w not in state and (found := visit(w)):
                return found
        path.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_no_import_cycle():
    mods = _modules()
    graph = {m: _imports(p, set(mods)) - {m} for m, p in mods.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


# --- import-linter's contracts -------------------------------------------------------------------------------

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}  # ahead of the editable install's finder
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )


def _contract_names() -> list[str]:
    import tomllib

    return [
        c["name"] for c in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    ]


def _status(output: str, name: str) -> str:
    """KEPT or BROKEN of one contract in lint-imports' report (which wraps long names at 80 columns)."""
    flat = " ".join(output.split())
    found = re.search(re.escape(name) + r" (KEPT|BROKEN)", flat)
    assert found, f"{name!r} not in the report:\n{output}"
    return found.group(1)


def test_the_import_contracts_hold():
    assert LINT_IMPORTS.exists(), "lint-imports is missing: pip install -e '.[test]' (import-linter)"
    r = _lint_imports(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert {n: _status(r.stdout, n) for n in _contract_names()} == {n: "KEPT" for n in _contract_names()}


# One forbidden import per contract, each in its own copy of the tree: each must break its contract
# (a contract that nothing can break, a typo in a module name for instance, would pass forever).
_BREAKS = {
    "Layers:": ("savedeep/caffe/model.py", "from savedeep.runner import manifest"),
    "Only the supervisor": ("savedeep/data/output.py", "import savedeep._workers.writer"),
    "Workers run one role": ("workers/writer.py", "from savedeep.runner import tasks"),
    "No cycle between": ("savedeep/runner/messages.py", "from savedeep.runner import pipeline"),
}


@pytest.mark.parametrize("contract", sorted(_BREAKS))
def test_each_contract_catches_a_forbidden_import(contract, tmp_path):
    for part in ("savedeep", "workers"):  # savedeep/_workers stays a link, to the copy of workers/
        shutil.copytree(ROOT / part, tmp_path / part, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    path, line = _BREAKS[contract]
    with open(tmp_path / path, "a") as f:
        f.write(f"\n{line}  # noqa\n")
    r = _lint_imports(tmp_path)
    name = next(n for n in _contract_names() if n.startswith(contract))
    assert r.returncode != 0 and _status(r.stdout, name) == "BROKEN", r.stdout + r.stderr


# --- the old flat paths (savedeep/_moved.py) -------------------------------------------------------------------


def test_old_paths_are_the_moved_modules_in_a_fresh_interpreter():
    # Fresh: the alias must work as the first import of the module (a user's script, a spawned worker),
    # and a class pickled under the old path (protocol 0: text, so the path can be edited) loads as the same class.
    code = (
        "import importlib, pickle, sys\n"
        "from savedeep._moved import MOVED\n"
        "bad = [o for o, n in MOVED.items() if importlib.import_module(o) is not importlib.import_module(n)]\n"
        "bad += [n for n in MOVED.values() if sys.modules[n].__spec__.name != n]\n"
        "from savedeep.output import ShardSet\n"
        "import savedeep.caffe.model as m, savedeep.model\n"
        "assert savedeep.model is m and savedeep.model.Model is m.Model\n"
        "old = pickle.dumps(m.Model, protocol=0).replace(b'savedeep.caffe.model', b'savedeep.model')\n"
        "assert b'savedeep.model' in old and pickle.loads(old) is m.Model\n"
        "import savedeep; assert callable(savedeep.report)\n"
        "print(bad)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_old_paths_cover_every_moved_module_and_no_file_remains_there():
    from savedeep._moved import MOVED

    for old, new in MOVED.items():
        assert (ROOT / (new.replace(".", "/") + ".py")).is_file(), new
        assert not (ROOT / (old.replace(".", "/") + ".py")).exists(), f"{old}: a file would shadow the alias"


def test_the_project_imports_only_the_new_paths():
    # The package, workers, benchmarks, scripts and tests use the new paths (grimp cannot see an alias, so
    # import-linter would not notice one); tests/ and the README may use the old flat ones. Nothing imports
    # the top-level name ``workers``: an installed savedeep has no such package (and import-linter, whose
    # root is savedeep, would take it for an outside package).
    from savedeep._moved import MOVED

    old = set(MOVED)
    found = []
    for part in ("savedeep", "workers", "benchmarks", "scripts", "tests"):
        for p in (ROOT / part).rglob("*.py"):
            for node in ast.walk(ast.parse(p.read_text())):
                names = (
                    [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                    else [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else []
                )
                found += [
                    f"{p.relative_to(ROOT)}:{node.lineno} {n}"
                    for n in names
                    if (n in old and part != "tests") or n.split(".")[0] == "workers"
                ]
    assert not found, found


def test_the_workers_folder_does_not_import_as_workers():
    # From a checkout the folder is importable as ``workers`` (the current directory is on sys.path): a module
    # imported under that name would be a second copy of savedeep._workers' (its own Channels, STARTING, ...).
    r = subprocess.run(
        [sys.executable, "-c", "import workers"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode != 0 and "import savedeep._workers, not workers" in r.stderr, r.stdout + r.stderr
    r = subprocess.run(
        [sys.executable, "-c", "import savedeep._workers.writer as w; print(w.__name__)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 0 and r.stdout.strip() == "savedeep._workers.writer", r.stdout + r.stderr


# --- sizes -----------------------------------------------------------------------------------------------------

MODULE_LINES, CLASS_LINES = 600, 400


def _continuation_lines(text: str) -> set[int]:
    """The lines that end inside brackets: a call or literal the formatter spreads over several lines is one line
    of the measure, so a module's size does not change with its layout (ruff format puts one argument a line)."""
    depth, lines = 0, set()
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.OP and tok.string in "([{":
            depth += 1
        elif tok.type == tokenize.OP and tok.string in ")]}":
            depth -= 1
        elif tok.type == tokenize.NL and depth > 0:
            lines.add(tok.start[0])
    return lines


def _too_big(modules: dict[str, Path]) -> list[str]:
    """Modules over MODULE_LINES lines and classes over CLASS_LINES (from ``class`` to its last line) whose
    docstring gives no reason (a paragraph starting "Size:"). Lines that end inside brackets do not count."""
    out = []
    for path in modules.values():
        name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
        text = path.read_text()
        tree = ast.parse(text)
        cont = _continuation_lines(text)
        n = len(text.splitlines()) - len(cont)
        if n > MODULE_LINES and "Size:" not in (ast.get_docstring(tree) or ""):
            out.append(f"{name}: {n} lines")
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef) or node.end_lineno is None:
                continue
            k = node.end_lineno - node.lineno + 1 - sum(node.lineno <= c <= node.end_lineno for c in cont)
            if k > CLASS_LINES and "Size:" not in (ast.get_docstring(node) or ""):
                out.append(f"{name}: class {node.name}, {k} lines")
    return out


def test_big_modules_and_classes_say_why():
    assert not _too_big(_modules()), _too_big(_modules())


def test_the_size_check_finds_a_big_module_and_a_big_class(tmp_path):
    (tmp_path / "big.py").write_text('"""A module."""\n' + "x = 1\n" * MODULE_LINES)
    (tmp_path / "said.py").write_text('"""A module.\n\nSize: a reason."""\n' + "x = 1\n" * MODULE_LINES)
    (tmp_path / "cls.py").write_text('class C:\n    """A class."""\n' + "    x = 1\n" * CLASS_LINES)
    # the same few statements however they are laid out: one call spread over more lines than the limit
    (tmp_path / "spread.py").write_text('"""A module."""\nf(\n' + "    1,\n" * MODULE_LINES + ")\n")
    found = _too_big({p.stem: p for p in tmp_path.glob("*.py")})
    assert sorted(f.split(": ", 1)[1] for f in found) == [
        f"{MODULE_LINES + 1} lines",
        f"class C, {CLASS_LINES + 2} lines",
    ]
