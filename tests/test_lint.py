"""ruff's lint rules ([tool.ruff] in pyproject.toml) hold on the whole tree, and would catch a break.

.ci/run also runs ``ruff format --check`` and mypy before the tests; this test makes a lint error fail a plain
``pytest`` too. About 1 s.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUFF = Path(sys.executable).with_name("ruff")


def _ruff_check(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(RUFF), "check", "--no-cache", "--output-format", "concise", "."],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_ruff_finds_nothing_in_the_tree():
    assert RUFF.exists(), "ruff is missing: pip install -e '.[test]'"
    r = _ruff_check(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_with_the_project_config_catches_a_lint_error(tmp_path):
    # The project's config on a copy of one module with a mistake of each kind the rules are for: an unused
    # import (F401), a name used but never defined (F821), a loop variable a closure reads late (B023).
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    (tmp_path / "savedeep").mkdir()
    text = (ROOT / "savedeep" / "units.py").read_text()
    (tmp_path / "savedeep" / "units.py").write_text(text)
    assert _ruff_check(tmp_path).returncode == 0  # the copy alone is clean
    (tmp_path / "savedeep" / "units.py").write_text(
        "import os\n" + text + "\n\ndef _late():\n    return [lambda: i for i in range(3)] + [undefined_name]\n"
    )
    r = _ruff_check(tmp_path)
    assert r.returncode != 0 and {"F401", "F821", "B023"} <= set(r.stdout.split()), r.stdout + r.stderr
