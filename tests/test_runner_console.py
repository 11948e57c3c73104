"""savedeep.run called from a program shows the run's warnings (the workers' included) on stderr, once.

Python prints a library's warnings when the program configured no logging, but the run
log's file handler would take them first: savedeep.runner.ui.console_log shows them where
nothing else does, and adds nothing where the program has a console of its own.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

SCRIPT = """\
import logging, sys
import savedeep
if sys.argv[2] == "basicConfig":
    logging.basicConfig(format="mine: %(message)s")
savedeep.run(sys.argv[1])
"""


@pytest.mark.slow
@pytest.mark.parametrize("logging_setup", ["none", "basicConfig"])
def test_a_worker_warning_reaches_stderr_once(nsfw_dir, photos, tmp_path, logging_setup) -> None:
    """Catches: the producer's "skipping broken.jpg" lost in an API run (only the run log had it), or printed twice
    where the program set up logging itself."""
    images = tmp_path / "images"
    images.mkdir()
    shutil.copyfile(photos[0], images / photos[0].name)
    (images / "broken.jpg").write_text("not an image")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"model: {nsfw_dir}\nimages: {images}\noutput: {tmp_path / 'out' / 'acts.pk'}\nblobs: [prob]\nengine: torch\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(config), logging_setup], capture_output=True, text=True, timeout=240
    )
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if "broken.jpg" in line]
    prefix = "mine: " if logging_setup == "basicConfig" else "savedeep: WARNING: "
    assert lines == [prefix + "skipping broken.jpg: not an image (no known signature)"], r.stderr
