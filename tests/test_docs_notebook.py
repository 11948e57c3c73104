"""docs/tutorial.ipynb runs top to bottom in a fresh Jupyter kernel, and a run shows its progress as a notebook should.

The notebooks run in a kernel of this environment (its own kernelspec, so a user's
``python3`` kernel elsewhere is never picked up) through nbclient, which fails on any
cell's error. The tutorial reads the built-in demo at ``../demo`` from ``docs/``: the
tests lay out their own copy (savedeep.demo.prepare) beside a ``docs/`` folder in a
temporary directory, so nothing is written into the repository.

What a cell shows is read from its saved outputs: tqdm's widget is a display_data
output with a widget view; a text bar and log lines are ``stderr`` stream text, read
as a notebook shows it (a carriage return starts the line again).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import nbclient  # the test extra (scripts/setup.sh) installs nbclient, nbformat, ipykernel and ipywidgets
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "docs" / "tutorial.ipynb"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
TEXT_BAR = re.compile(r"^savedeep:\s+\d+%\|")
KERNEL = "savedeep-docs-test"
MAX_TUTORIAL_BYTES = 20_000  # code and prose only: see test_committed_tutorial_has_no_outputs


@pytest.fixture(scope="module")
def kernel_spec_dir(tmp_path_factory) -> Path:
    """A kernelspec that starts ipykernel with this interpreter (the project's .venv), its IPython profile in here."""
    d = tmp_path_factory.mktemp("kernels")
    (d / KERNEL).mkdir()
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "savedeep tests",
        "language": "python",
        "env": {"IPYTHONDIR": str(d / "ipython")},
    }
    (d / KERNEL / "kernel.json").write_text(json.dumps(spec))
    return d


def execute(nb, cwd: Path, kernel_spec_dir: Path):
    """Run every cell of ``nb`` in a fresh kernel started in ``cwd``; raises CellExecutionError on a cell's error."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    km = KernelManager(
        kernel_name=KERNEL,
        kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_spec_dir)]),
        connection_file=str(cwd / "kernel.json"),
    )  # not in the user's Jupyter runtime folder
    client = nbclient.NotebookClient(nb, km=km, timeout=300, resources={"metadata": {"path": str(cwd)}})
    client.execute(cleanup_kc=True)  # shut the kernel down after the last cell (nbclient keeps a km it was given)
    return nb


def shown_stderr(outputs) -> list[str]:
    """The cell's stderr as a notebook shows it: text after each line's last carriage return, blank lines left out."""
    text = "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stderr")
    lines = [line.rsplit("\r", 1)[-1].rstrip() for line in text.split("\n")]
    return [line for line in lines if line]


def widget_bars(outputs) -> list[dict]:
    return [
        o
        for o in outputs
        if o.output_type == "display_data"
        and WIDGET_VIEW in o.data
        and o.data.get("text/plain", "").startswith("savedeep:")
    ]


def code_cell(nb, snippet: str):
    (cell,) = [c for c in nb.cells if c.cell_type == "code" and snippet in c.source]
    return cell


@pytest.mark.slow
def test_tutorial_runs_in_a_fresh_kernel(tmp_path, kernel_spec_dir) -> None:
    """Catches: a tutorial cell that fails (an API renamed under it), a run cell without tqdm's widget bar, a cell
    that prints a warning, an RDM not drawn, no report written."""
    from savedeep.demo import prepare

    prepare(tmp_path / "demo")
    (tmp_path / "docs").mkdir()
    nb = execute(nbformat.read(TUTORIAL, as_version=4), tmp_path / "docs", kernel_spec_dir)

    run = code_cell(nb, "savedeep.run(")
    assert len(widget_bars(run.outputs)) == 1, run.outputs
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert shown_stderr(cell.outputs) == [], (cell.source, shown_stderr(cell.outputs))
    assert any("image/png" in o.get("data", {}) for o in code_cell(nb, "ax.imshow(rdm").outputs)
    report = tmp_path / "demo" / "tutorial" / "out" / "acts.report.html"
    assert report.is_file() and report.stat().st_size > 10_000


@pytest.mark.slow
@pytest.mark.parametrize("widgets", [True, False], ids=["ipywidgets", "no-ipywidgets"])
def test_a_run_in_a_notebook_shows_one_bar_and_readable_warnings(
    nsfw_dir, photos, tmp_path, kernel_spec_dir, widgets
) -> None:
    """A run over three photos and a file that is not an image, in a notebook cell.

    With ipywidgets: tqdm's widget bar and the worker's warning as one line of its own. Without it (the
    kernel cannot import it): one text bar, at 100%, the warning on its own line, and no tqdm warning
    about the missing widgets. Catches: a plain text bar where widgets exist, tqdm.auto's "IProgress not
    found" warning, a worker's warning that never reaches the cell (the run log's file handler took it)
    or that is glued to the bar's line.
    """
    images = tmp_path / "images"
    images.mkdir()
    for p in photos[:3]:
        shutil.copyfile(p, images / p.name)
    (images / "broken.jpg").write_text("not an image")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"model: {nsfw_dir}\nimages: {images}\noutput: {tmp_path / 'out' / 'acts.pk'}\n"
        "blobs: [prob]\nengine: torch\nbatch_size: 1\n"
    )
    cells = ["import sys\nsys.modules['ipywidgets'] = None  # as if it were not installed"] if not widgets else []
    cells.append(f"import savedeep\nresult = savedeep.run({str(config)!r}, progress=True)")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    execute(nb, tmp_path, kernel_spec_dir)

    outputs = nb.cells[-1].outputs
    lines = shown_stderr(outputs)
    warning = [line for line in lines if "broken.jpg" in line]
    assert warning == ["savedeep: WARNING: skipping broken.jpg: not an image (no known signature)"], lines
    if widgets:
        assert len(widget_bars(outputs)) == 1, outputs
        assert lines == warning
    else:
        assert widget_bars(outputs) == []
        bars = [line for line in lines if TEXT_BAR.match(line)]
        assert len(bars) == 1 and "100%" in bars[0] and "4/4" in bars[0] and "failures=1" in bars[0], lines
        assert sorted(lines) == sorted(warning + bars), lines  # nothing else: no TqdmWarning, no IProgress


def test_committed_tutorial_has_no_outputs() -> None:
    """The notebook is stored as code and prose: outputs come from running it (CI, the docs build), never from a
    commit, so they cannot show what the code no longer does; diffs stay readable. Catches an executed notebook
    committed by mistake (a run's widget state, embedded PNGs, execution counts)."""
    nb = nbformat.read(TUTORIAL, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the tutorial has no code cell"
    dirty = [c.source.splitlines()[0] for c in code if c.outputs or c.execution_count is not None]
    assert dirty == [], (
        f"{TUTORIAL} was committed with outputs in the cells starting {dirty}: "
        "clear them before committing (Jupyter: Edit > Clear Outputs of All Cells)"
    )
    assert "widgets" not in nb.metadata, f"{TUTORIAL} holds saved widget state; clear it before committing"
    assert TUTORIAL.stat().st_size < MAX_TUTORIAL_BYTES
