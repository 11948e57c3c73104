"""The README: short, its two commands first, and every link in it leads somewhere.

Its code blocks run as written with every docs page's (tests/test_docs.py, which reads README.md
too); the long content moved to docs/, where the checks that looked for it moved too.

The bugs this is for: a README that grows back into the reference, first commands that CI or
scripts/fresh_machine_check.sh no longer run, and links into docs/ that a move of a page broke.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.test_docs import blocks_of

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_first_command_is_the_setup_and_the_demo():
    first, tests = blocks_of(ROOT / "README.md")[0].commands()
    assert blocks_of(ROOT / "README.md")[0].language == "bash"
    assert first == "bash scripts/setup.sh && .venv/bin/savedeep run configs/demo.yaml --overwrite"
    assert tests == "bash scripts/setup.sh && .venv/bin/python -m pytest"
    ci = (ROOT / ".ci" / "run").read_text()
    assert ".venv/bin/python -m pytest" in ci and "scripts/setup.sh" in ci


def test_readme_is_short():
    """Issue 33: at most ~200 lines; the reference lives in docs/."""
    assert len(README.splitlines()) <= 200


def test_readme_has_a_minimal_example_on_your_own_model():
    """The model folder, a config file, the run of that file and the load of its output, in that order."""
    blocks = blocks_of(ROOT / "README.md")

    def first(where, after: int) -> int:
        return next(i for i, b in enumerate(blocks) if i > after and where(b))

    tree = first(lambda b: all(f in b.text for f in ("deploy.prototxt", "weights.caffemodel", "mean.npy")), 0)
    config = first(lambda b: b.language == "yaml" and b.title is not None, tree)
    run = first(
        lambda b: b.language == "bash" and f".venv/bin/savedeep run {blocks[config].title}" in b.commands(), config
    )
    output = yaml.safe_load(blocks[config].text)["output"]
    first(lambda b: b.info == "python" and f'savedeep.load("{output}")' in b.text, run)


def test_readme_links_lead_somewhere():
    """Every relative link (docs pages, the screenshot, RESULTS.md) names a file in the repo, and every
    docs page the README points into exists."""
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    local = [link for link in links if not re.match(r"\w+://", link)]
    assert len(local) >= 20
    for link in local:
        assert (ROOT / link).exists(), f"README.md links to {link}, which does not exist"
    assert "benchmarks/report_demo.png" in local
