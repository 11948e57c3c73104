"""The README's examples run exactly as written, from a fresh root, after the README's first command.

The bug this is for: examples that name files or blobs no run produced
(``out/acts.pk`` with ``fc7`` after a demo that writes ``demo/out/acts.pk``),
an API snippet without the main guard that spawned workers need, or a path
into a folder beside the clone (``../shared``) that users do not have.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

pytestmark = pytest.mark.slow


def _all_blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced block, in order."""
    blocks, language, lines = [], None, []
    for line in README.splitlines():
        if line.startswith("```"):
            if language is None:
                language, lines = line[3:].strip(), []
            else:
                blocks.append((language, "\n".join(lines) + "\n"))
                language = None
        elif language is not None:
            lines.append(line)
    assert language is None, "README.md has an unclosed code block"
    return blocks


def _blocks(language: str) -> list[str]:
    return [text for lang, text in _all_blocks() if lang == language]


def _savedeep() -> list[str]:
    """The savedeep command of the environment running the tests (``.venv/bin/savedeep`` in the README)."""
    script = Path(sys.executable).parent / "savedeep"
    return [str(script)] if script.exists() else [sys.executable, "-m", "savedeep"]


def test_first_command_is_the_setup_and_the_demo():
    first, tests = [line for line in _blocks("bash")[0].splitlines() if line and not line.startswith("#")]
    assert first == "bash scripts/setup.sh && .venv/bin/savedeep run configs/demo.yaml --overwrite"
    assert tests == "bash scripts/setup.sh && .venv/bin/python -m pytest"
    ci = (ROOT / ".ci" / "run").read_text()
    assert ".venv/bin/python -m pytest" in ci and "scripts/setup.sh" in ci


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    """A root laid out as the README's first command leaves the clone: demo/ prepared and the demo run."""
    root = tmp_path_factory.mktemp("readme")
    (root / "configs").mkdir()
    shutil.copyfile(ROOT / "configs" / "demo.yaml", root / "configs" / "demo.yaml")
    subprocess.run([sys.executable, "-m", "savedeep.demo", str(root / "demo")], check=True, timeout=300,
                   capture_output=True)
    # The second half of the first command, as written (the set-up is what the test session already has).
    cmd = "savedeep run configs/demo.yaml --overwrite".split()[1:]
    r = subprocess.run([*_savedeep(), *cmd, "--no-progress"], cwd=root, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (root / "demo" / "out" / "acts.pk").exists()
    return root


PYTHON_BLOCKS = _blocks("python")


def test_readme_has_python_examples():
    assert len(PYTHON_BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_block_runs_as_written(demo_root, index):
    script = demo_root / f"readme_block_{index}.py"
    script.write_text(PYTHON_BLOCKS[index])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, script.name], cwd=demo_root, capture_output=True, text=True, timeout=600,
                       env=env)
    assert r.returncode == 0, f"README python block {index}:\n{PYTHON_BLOCKS[index]}\n{r.stderr[-3000:]}"


def test_shell_examples_with_a_prompt_run_from_the_repo_root():
    """Lines shown as ``$ .venv/bin/savedeep ...`` are commands a user copies: they must work in the clone."""
    commands = [line[2:] for block in _blocks("") for line in block.splitlines()
                if line.startswith("$ .venv/bin/savedeep ")]
    assert commands
    for command in commands:
        argv = shlex.split(command)
        r = subprocess.run([*_savedeep(), *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"{command}: {r.stderr[-2000:]}"
        assert r.stdout.strip()
