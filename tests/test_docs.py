"""The docs site builds cleanly, its reference pages come from the code, and every code block that claims
to run runs as written.

Pages are README.md and every ``docs/**/*.md``. What each fenced block is, by its info string:

- ``python``: run with this environment's Python, the page's blocks in order, in a folder laid out as the
  README's first command leaves a clone (``demo/`` prepared and the demo run).
- ``bash`` whose commands are all ``.venv/bin/savedeep ...``: each command run the same way, with this
  environment's ``savedeep``. ``.venv/bin/pip install -e ".[X]"`` lines: X must be an extra of
  pyproject.toml that scripts/setup.sh installs. Any other ``bash`` block must be in ``NOT_RUN`` with the
  reason it cannot run here; a listed block that no page has any more fails too.
- ``yaml title="NAME"``: written to NAME in that folder before the page's commands run. Every ``yaml``
  block is loaded by ``savedeep.load_config`` (with the required paths pointed at real ones), so a key or
  value the docs show is one the schema takes.
- ``python peers``: run in the peers' venv by tests/test_engines_peers.py.
- ``$ .venv/bin/savedeep ...`` lines in a plain block: run from the repo root.
- ``text``, plain, ``matlab``, ``r``: output, trees and other languages; not run (``NOT_RUN_LANGUAGES``).

The bugs this is for: an example that names files or blobs no run produced, a flag or key renamed in the
code but not in the docs, a page that no navigation reaches, a link to a page or anchor that is gone, a
reference table copied by hand that drifts from the schema, the parser or the error classes.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]

# bash blocks that are not run here, by (page, first command line): why not.
NOT_RUN: dict[tuple[str, str], str] = {
    (
        "README.md",
        "bash scripts/setup.sh && .venv/bin/savedeep run configs/demo.yaml --overwrite",
    ): "the set-up and the tests: CI runs them in a fresh clone; test_readme checks the lines",
    (
        "docs/getting-started/demo.md",
        "bash scripts/setup.sh && .venv/bin/savedeep run configs/demo.yaml --overwrite",
    ): "the README's first command, as above; the demo_root fixture runs its second half",
    ("docs/getting-started/install.md", "bash scripts/setup.sh"): "the set-up itself: CI runs it",
    ("docs/getting-started/install.md", "bash scripts/setup.sh --cuda --arch sm_80"): "needs nvcc 13 (CUDA)",
    (
        "docs/getting-started/install.md",
        'python3 -m venv .venv && .venv/bin/pip install -e ".[torch]"',
    ): "makes a second virtualenv over .venv; a user's alternative to the set-up",
    ("docs/how-to/gpus.md", "savedeep run --gpus 0,1 config.yaml"): "needs GPUs",
    (
        "docs/how-to/cluster.md",
        'sbatch --gres=gpu:4 --cpus-per-task=32 --wrap "savedeep run config.yaml"',
    ): "needs a Slurm cluster with GPUs (tests/test_runner_slurm.py runs savedeep slurm on a one-node Slurm)",
    (
        "docs/how-to/cluster.md",
        "savedeep slurm config.yaml --tasks 8 --gpus-per-task 1 --cpus-per-task 8 --mem 32G "
        "--partition gpu --time 4:00:00 --submit",
    ): "as above",
    (
        "docs/how-to/cluster.md",
        "jid=$(sbatch --parsable out/acts.slurm/array.sh) && sbatch --dependency=afterok:$jid out/acts.slurm/merge.sh",
    ): "as above",
    ("docs/how-to/containers.md", "podman build -t savedeep ."): "needs Podman or Docker and 30 minutes",
    (
        "docs/how-to/containers.md",
        'podman build -t savedeep:cuda --build-arg BUILD_BASE=IMAGE --build-arg SETUP_ARGS="--cuda --arch sm_80" .',
    ): "needs a CUDA 13 build image",
    ("docs/how-to/containers.md", "apptainer build savedeep.sif savedeep.def"): "needs Apptainer",
    (
        "docs/how-to/containers.md",
        "apptainer exec --nv --bind /data savedeep.sif savedeep run config.yaml --tasks 8",
    ): "needs Apptainer and a Slurm array",
    (
        "docs/how-to/containers.md",
        "bash scripts/fresh_machine_check.sh",
    ): "builds a Debian root file system as root: 11 minutes or more (tests/test_containers.py checks its parts)",
    (
        "docs/how-to/resume.md",
        "savedeep run config.yaml --resume",
    ): "a pattern; tests/test_runner_faults.py interrupts real runs and resumes them",
    (
        "docs/development.md",
        "bash scripts/setup.sh && .venv/bin/python -m pytest",
    ): "the whole suite: running it from a test would run itself",
    (
        "docs/development.md",
        ".venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy",
    ): ".ci/run runs these before the tests; tests/test_lint.py runs ruff check",
}
NOT_RUN_LANGUAGES = {
    "text": "output or a file tree",
    "": "output or a file tree",
    "matlab": "MATLAB is not installed here; the page says the example is not run",
    "r": "R is not installed here; the page says the example is not run",
}


@dataclasses.dataclass(frozen=True)
class Block:
    page: str  # relative to the repo root
    line: int  # of the opening fence, from 1
    info: str  # the whole info string: 'python', 'python peers', 'yaml title="my.yaml"'
    text: str

    @property
    def language(self) -> str:
        return self.info.split(" ", 1)[0] if self.info else ""

    @property
    def title(self) -> str | None:
        m = re.search(r'title="([^"]+)"', self.info)
        return m.group(1) if m else None

    def commands(self) -> list[str]:
        """Shell commands: comment lines and blank lines dropped, backslash continuations joined."""
        out, pending = [], ""
        for raw in self.text.splitlines():
            line = raw.strip()
            if not pending and (not line or line.startswith("#")):
                continue
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            command = re.sub(r"\s+#\s.*$", "", pending + line).strip()  # a trailing comment
            out.append(" ".join(command.split()))
            pending = ""
        return out

    def __str__(self) -> str:
        return f"{self.page}:{self.line} ({self.info or 'plain'})"


def blocks_of(path: Path) -> list[Block]:
    """Every fenced block of a page, in order. A fence must start its line: an indented one (inside a
    list or an admonition) would be a block this test never sees, so it is refused."""
    page = path.relative_to(ROOT).as_posix()
    found, info, start, lines = [], None, 0, []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if info is None and line.lstrip().startswith("```"):
            assert line.startswith("```"), f"{page}:{number}: an indented code fence; start it at column 0"
            info, start, lines = line[3:].strip(), number, []
        elif info is not None and line.startswith("```"):
            found.append(Block(page, start, info, "\n".join(lines) + "\n"))
            info = None
        elif info is not None:
            lines.append(line)
    assert info is None, f"{page}:{start}: an unclosed code block"
    return found


def all_blocks() -> list[Block]:
    return [b for path in PAGES for b in blocks_of(path)]


def _savedeep() -> list[str]:
    """The savedeep command of the environment running the tests (``.venv/bin/savedeep`` in the docs)."""
    script = Path(sys.executable).parent / "savedeep"
    return [str(script)] if script.exists() else [sys.executable, "-m", "savedeep"]


def _is_savedeep_block(block: Block) -> bool:
    commands = block.commands()
    return bool(commands) and all(c.startswith(".venv/bin/savedeep ") for c in commands)


def _is_pip_block(block: Block) -> bool:
    commands = block.commands()
    return bool(commands) and all(re.fullmatch(r'\.venv/bin/pip install -e "\.\[[\w,]+\]"', c) for c in commands)


def _runs(block: Block) -> bool:
    return block.info == "python" or block.title is not None or (block.language == "bash" and _is_savedeep_block(block))


# --------------------------------------------------------------------------- classification (fast)


def test_pages_have_the_runnable_examples():
    """The pages the examples moved to from the README still hold them."""
    by_page = {p.relative_to(ROOT).as_posix(): blocks_of(p) for p in PAGES}
    python = {page: sum(b.info == "python" for b in blocks) for page, blocks in by_page.items()}
    for page, least in {
        "README.md": 2,
        "docs/getting-started/demo.md": 2,
        "docs/how-to/read-output.md": 3,
        "docs/how-to/report.md": 1,
        "docs/how-to/export.md": 3,
        "docs/how-to/convert.md": 1,
        "docs/how-to/cluster.md": 1,
    }.items():
        assert python[page] >= least, (page, python[page])
    assert sum(b.info == "python peers" for b in by_page["docs/how-to/convert.md"]) == 4


def test_every_bash_block_is_run_or_says_why_not():
    seen = set()
    for block in all_blocks():
        if block.language != "bash" or _runs(block) or _is_pip_block(block):
            continue
        key = (block.page, block.commands()[0])
        seen.add(key)
        assert key in NOT_RUN, f"{block}: a bash block the tests do not run: run it, or add {key!r} to NOT_RUN"
    assert not set(NOT_RUN) - seen, f"NOT_RUN lists blocks no page has: {sorted(set(NOT_RUN) - seen)}"


def test_every_block_language_is_known():
    known = {"python", "bash", "yaml"} | set(NOT_RUN_LANGUAGES)
    for block in all_blocks():
        assert block.language in known, f"{block}: unknown language {block.language!r}"
        assert block.info in ("python", "python peers") or block.language != "python", block


def test_pip_lines_name_extras_that_setup_installs():
    """Bug: the docs tell users to install an extra that pyproject.toml or scripts/setup.sh lacks."""
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    setup = re.search(r'^extras="([\w,]+)"', (ROOT / "scripts" / "setup.sh").read_text(), re.MULTILINE)
    assert setup, "scripts/setup.sh no longer sets extras=..."
    installed = set(setup.group(1).split(","))
    named = [
        (b, x)
        for b in all_blocks()
        if b.language == "bash"
        for c in b.commands()
        for m in [re.fullmatch(r'\.venv/bin/pip install -e "\.\[([\w,]+)\]"', c)]
        if m
        for x in m.group(1).split(",")
    ]
    assert named
    for block, extra in named:
        assert extra in extras, f"{block}: extra {extra!r} is not in pyproject.toml"
        assert extra in installed or extra == "torch", f"{block}: scripts/setup.sh does not install {extra!r}"
    assert "docs" in installed, "scripts/setup.sh must install the docs extra: CI builds the site"


def test_every_yaml_block_is_a_valid_config(tmp_path):
    """Bug: a documented key or value that the schema refuses (a renamed key, a wrong reduce spec)."""
    import savedeep

    models = ROOT / "tests" / "data" / "models"
    model = next(p for p in sorted(models.iterdir()) if (p / "deploy.prototxt").exists())
    images = ROOT / "tests" / "data" / "images"
    checked = 0
    for block in all_blocks():
        if block.language != "yaml":
            continue
        data = yaml.safe_load(block.text)
        assert isinstance(data, dict), f"{block}: not a mapping"
        data = {
            "blobs": ["fc6"],
            **data,
            "model": str(model),
            "images": str(images),
            "output": str(tmp_path / "out" / "acts.pk"),
        }
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(data))
        try:
            savedeep.load_config(path)
        except savedeep.errors.ConfigError as exc:  # noqa: PERF203
            pytest.fail(f"{block}: {exc}")
        checked += 1
    assert checked >= 4


def test_pages_tell_no_history():
    """Issue 33: the docs say what is, in the present; rounds, issues and what savedeep "used to" do belong
    in benchmarks/RESULTS.md and the commit messages."""
    history = re.compile(r"\bround \d|\bissue #?\d|\bused to\b|\bold default\b|\bno longer\b|\bformerly\b", re.I)
    for path in PAGES:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not history.search(line), f"{path.relative_to(ROOT)}:{number}: history in the docs: {line.strip()}"


# --------------------------------------------------------------------------- running the blocks (slow)


RUNNABLE_PAGES = [p.relative_to(ROOT).as_posix() for p in PAGES if any(_runs(b) for b in blocks_of(p))]


def _page_root(demo_root: Path, where: Path) -> Path:
    """A folder laid out as the README's first command leaves a clone, its own copy of demo/out."""
    where.mkdir()
    (where / "configs").mkdir()
    shutil.copyfile(ROOT / "configs" / "demo.yaml", where / "configs" / "demo.yaml")
    (where / "demo").mkdir()
    for name in ("model", "images"):
        (where / "demo" / name).symlink_to(demo_root / "demo" / name)
    shutil.copytree(demo_root / "demo" / "out", where / "demo" / "out", symlinks=True)
    return where


@pytest.mark.slow
@pytest.mark.parametrize("page", RUNNABLE_PAGES)
def test_page_examples_run_as_written(demo_root, tmp_path, page):
    root = _page_root(demo_root, tmp_path / "clone")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for i, block in enumerate(blocks_of(ROOT / page)):
        if block.title is not None:
            (root / block.title).write_text(block.text)
        elif block.info == "python":
            script = root / f"docs_block_{i}.py"
            script.write_text(block.text)
            r = subprocess.run(
                [sys.executable, script.name], cwd=root, capture_output=True, text=True, timeout=600, env=env
            )
            assert r.returncode == 0, f"{block}:\n{block.text}\n{r.stderr[-3000:]}"
        elif block.language == "bash" and _is_savedeep_block(block):
            for command in block.commands():
                argv = shlex.split(command)
                r = subprocess.run(
                    [*_savedeep(), *argv[1:]], cwd=root, capture_output=True, text=True, timeout=600, env=env
                )
                assert r.returncode == 0, f"{block}: {command}\n{r.stderr[-3000:]}"


@pytest.mark.slow
def test_shell_examples_with_a_prompt_run_from_the_repo_root():
    """Lines shown as ``$ .venv/bin/savedeep ...`` are commands a user copies: they must work in the clone."""
    commands = [
        line[2:]
        for b in all_blocks()
        if b.language in ("", "text")
        for line in b.text.splitlines()
        if line.startswith("$ .venv/bin/savedeep ")
    ]
    assert commands
    for command in commands:
        argv = shlex.split(command)
        r = subprocess.run([*_savedeep(), *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"{command}: {r.stderr[-2000:]}"
        assert r.stdout.strip()


# --------------------------------------------------------------------------- the site


def _mkdocs_build(config: Path, site: Path, execute: bool = True) -> subprocess.CompletedProcess:
    """``mkdocs build --strict``; ``execute=False`` leaves the tutorial notebook's cells unrun (a copy of the
    docs has no demo beside it)."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "SAVEDEEP_DOCS_EXECUTE": "true" if execute else "false"}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=config.parent,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    r = _mkdocs_build(ROOT / "mkdocs.yml", site)
    assert r.returncode == 0, f"mkdocs build --strict failed:\n{r.stderr[-4000:]}"
    return site


def _text(site: Path, page: str) -> str:
    """A built page's text, tags dropped."""
    import html

    body = (site / page / "index.html").read_text()
    return html.unescape(re.sub(r"<[^>]+>", "", body))


def test_site_builds_strict(site):
    assert (site / "index.html").exists()
    for built in site.rglob("*.html"):
        assert "<!-- savedeep:" not in built.read_text(), f"{built}: a marker was not replaced"
    assert (site / "assets" / "report_demo.png").read_bytes() == (ROOT / "benchmarks" / "report_demo.png").read_bytes()


def test_config_reference_is_the_schema(site):
    """The config page holds every key of the schema, with its default (moved from test_config, where it
    compared the README's hand-copied table with schema_markdown())."""
    from savedeep.config import schema_markdown

    page = _text(site, "reference/config")
    rows = re.findall(r"^\| `([\w.]+)` \| (.*?) \| (.*?) \| (.*) \|$", schema_markdown(), re.MULTILINE)
    assert len(rows) >= 30
    for key, _type, default, _doc in rows:
        default = default.replace("**", "")
        assert re.search(rf"\b{re.escape(key)}\b", page), f"config page lacks {key}"
        assert default in page, f"config page lacks {key}'s default {default}"


def test_cli_reference_is_the_parser(site):
    """Each subcommand's section lists every flag the parser takes."""
    import argparse

    from savedeep.cli import build_parser

    html = (site / "reference" / "cli" / "index.html").read_text()
    sections = {}
    for part in re.split(r"<h2 ", html)[1:]:
        text = re.sub(r"<[^>]+>", "", "<h2 " + part)
        m = re.match(r"\s*savedeep (\w+)", text)
        if m:
            sections[m.group(1)] = text
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert len(subs) >= 8 and set(subs) <= set(sections), (sorted(subs), sorted(sections))
    for name, sub in subs.items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):  # -h, --help: every command's, not listed
                continue
            for option in action.option_strings:
                assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", sections[name]), (name, option)


def _hooks():
    import importlib.util

    spec = importlib.util.spec_from_file_location("savedeep_docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_unknown_marker_stops_the_build():
    """Bug: a misspelt marker leaves a reference page silently empty."""
    hooks = _hooks()
    assert hooks.render("a\n<!-- savedeep:exit-codes -->\nb").startswith("a\n| code |")
    with pytest.raises(ValueError, match="unknown marker <!-- savedeep:exit-code -->"):
        hooks.render("<!-- savedeep:exit-code -->", "x.md")


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["orphan page", "broken link"])
def test_orphan_page_or_broken_link_fails_the_build(tmp_path, damage):
    """The strict build is what keeps the site whole: a page outside the navigation, or a link to a
    page that does not exist, each fails it on its own."""
    shutil.copytree(DOCS, tmp_path / "docs")
    shutil.copyfile(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    (tmp_path / "benchmarks").mkdir()
    shutil.copyfile(ROOT / "benchmarks" / "report_demo.png", tmp_path / "benchmarks" / "report_demo.png")
    if damage == "orphan page":
        (tmp_path / "docs" / "orphan.md").write_text("# Orphan\n")
    else:
        page = tmp_path / "docs" / "how-to" / "gpus.md"
        page.write_text(page.read_text() + "\nSee [gone](../gone.md).\n")
    r = _mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site", execute=False)
    assert r.returncode != 0, f"mkdocs build --strict passed with a {damage}"
    out = r.stdout + r.stderr
    assert "Traceback" not in out and "in strict mode" in out, out[-3000:]
    assert ("orphan.md" if damage == "orphan page" else "gone.md") in out, out[-3000:]


def test_exit_code_page_is_the_error_table(site):
    import inspect

    from savedeep import errors

    page = (site / "reference" / "exit-codes" / "index.html").read_text()
    classes = [c for c in vars(errors).values() if inspect.isclass(c) and issubclass(c, errors.SavedeepError)]
    assert len(classes) >= 8
    for c in classes:  # a row of the class table: its name, then its code
        assert re.search(rf"<code>savedeep\.errors\.{c.__name__}</code></td>\s*<td>{c.exit_code}</td>", page), c
    for code in (0, *{c.exit_code for c in classes}):  # a row of the code table
        assert re.search(rf"<tr>\s*<td>{code}</td>", page), code


def test_layer_page_is_the_engine_table(site):
    from savedeep.caffe.model import REFUSED_TYPES
    from savedeep.engines.torch_layers import SUPPORTED_TYPES

    page = _text(site, "reference/layers")
    for t in [*SUPPORTED_TYPES, *REFUSED_TYPES]:
        assert re.search(rf"\b{t}\b", page), t


def test_preprocessing_page_is_the_module_docstring(site):
    from savedeep.data import preprocess

    page = _text(site, "explanation/preprocessing")
    for needle in ("INTER_LINEAR_EXACT", "Subtract the mean", "exif_transpose", "rgb2gray"):
        assert needle in preprocess.__doc__ and needle in page, needle


def test_api_page_documents_every_public_name(site):
    import savedeep

    page = (site / "reference" / "api" / "index.html").read_text()
    for name in savedeep.__all__:
        if name.startswith("__"):
            continue
        assert f'id="savedeep.{name}"' in page, name
