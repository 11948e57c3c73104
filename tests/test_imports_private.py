"""No module of savedeep (or workers/) uses another module's private name.

A leading underscore says "only this module relies on it": the output's readers used to be reached
through ``savedeep.data.output``'s ``_resolve``, ``_complete_shards``, ``_partial_note`` and
``_column_to_numpy`` from the exports, the report and ``savedeep validate``, so the reader existed twice
and changing one copy silently left the other behind. What another module needs is public.

Checked on the source (ast): ``from M import _x`` and ``alias._x`` where ``alias`` is an imported module
of the project, from any module but M itself. A private *submodule* (``savedeep._moved``,
``workers._loop``) is a module, not a name: which packages may import it is import-linter's business
(tests/test_imports.py).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("savedeep", "workers")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _absolute(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _ours(module: str) -> bool:
    return module.split(".")[0] in PROJECT


def private_uses(path: Path) -> list[str]:
    """``file:line: module._name`` for each use of another module's private name in ``path``."""
    importer = _module_name(path)
    tree = ast.parse(path.read_text(), str(path))
    found: list[str] = []
    aliases: dict[str, str] = {}  # local name -> project module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if _ours(a.name):
                    aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(importer, path.name == "__init__.py", node)
            if not _ours(source):
                continue
            for a in node.names:
                if _is_module(f"{source}.{a.name}"):
                    aliases[a.asname or a.name] = f"{source}.{a.name}"
                elif a.name.startswith("_") and not a.name.startswith("__") and source != importer:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {source}.{a.name}")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and not _is_module(f"{aliases[node.value.id]}.{node.attr}")
            and aliases[node.value.id] != importer
        ):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {aliases[node.value.id]}.{node.attr}")
    return found


def _files() -> list[Path]:
    return sorted(p for d in PROJECT for p in (ROOT / d).rglob("*.py"))


def test_no_module_uses_another_modules_private_name() -> None:
    found = [use for p in _files() for use in private_uses(p)]
    assert found == [], "use the public name (or make it public):\n" + "\n".join(found)


def test_the_check_sees_each_way_of_reaching_a_private_name(tmp_path, monkeypatch) -> None:
    """The checker itself: each form below is one use; the module's own names and submodules are not."""
    pkg = tmp_path / "savedeep" / "data"
    pkg.mkdir(parents=True)
    (tmp_path / "savedeep" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "_private_mod.py").write_text("")
    (pkg / "output.py").write_text("def _resolve(p): return p\nx = _resolve(1)\n")
    user = tmp_path / "savedeep" / "report.py"
    user.write_text(
        "from savedeep.data.output import _resolve, load\n"
        "from .data.output import _column_to_numpy\n"
        "import savedeep.data.output as out\n"
        "from savedeep.data import output, _private_mod\n"
        "out._complete_shards(1)\n"
        "output._partial_note(1)\n"
        "out.load(1)\n"
    )
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    assert [u.split(": ")[1] for u in private_uses(user)] == [
        "savedeep.data.output._resolve",
        "savedeep.data.output._column_to_numpy",
        "savedeep.data.output._complete_shards",
        "savedeep.data.output._partial_note",
    ]
    assert private_uses(pkg / "output.py") == []
