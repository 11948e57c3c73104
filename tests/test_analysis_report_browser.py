"""The report in a real browser: Debian's headless Chromium, driven by Selenium through chromedriver.

How the tests find Chromium: the browser is ``$SAVEDEEP_CHROMIUM`` (default ``/usr/bin/chromium``) and
its driver ``$SAVEDEEP_CHROMEDRIVER`` (default ``/usr/bin/chromedriver``), Debian's ``chromium`` and
``chromium-driver`` packages, which ``scripts/setup.sh`` installs. Both paths are given to Selenium
explicitly (``Service(executable_path=...)``, ``options.binary_location``), so Selenium Manager never
looks for, or downloads, a driver. Without them these tests fail, naming the packages: they do not skip.

The bugs these are for: a page that shows in a text check but not in a browser (an image whose data
URI does not decode, a script error, a reference to the network), a blob without its sections, a
partial output's page that breaks.

``SAVEDEEP_UPDATE_SCREENSHOT=1`` also writes the demo page's screenshot to ``benchmarks/report_demo.png``
(the one the README shows).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from report_fixtures import BLOB_NAMES, run_categories, run_partial

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("SAVEDEEP_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("SAVEDEEP_CHROMEDRIVER", "/usr/bin/chromedriver"))
SCREENSHOT = ROOT / "benchmarks" / "report_demo.png"
DEMO_BLOBS = ["pool", "fc_nsfw", "prob", "eltwise_stage3_block2"]


@pytest.fixture
def browser():
    """A headless Chromium per test (conftest's leak check wants no child process left after a test)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not found: the browser tests need Debian's chromium and chromium-driver "
            "(as root: apt-get install chromium chromium-driver, or bash scripts/setup.sh), or set "
            "SAVEDEEP_CHROMIUM / SAVEDEEP_CHROMEDRIVER"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1200,1600",
        "--hide-scrollbars",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _open(driver, page: Path) -> dict:
    """Load a page; return what it shows, after checking console, images and network."""
    driver.get(page.resolve().as_uri())
    assert driver.execute_script("return document.readyState") == "complete"
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert not errors, errors
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight,"
        " i.src.slice(0, 22)])"
    )
    assert images
    broken = [i for i in images if not (i[1] and i[2] > 0 and i[3] > 0)]
    assert not broken, broken
    assert all(i[4].startswith(("data:image/png;base64", "data:image/jpeg;base64")) for i in images)
    # decoded whole: drawn on a canvas, every pixel is painted (a truncated PNG keeps its size from the header
    # but paints nothing below the part that arrived)
    painted = driver.execute_script("""
        return Array.from(document.images).map(img => {
            const c = document.createElement('canvas');
            c.width = img.naturalWidth; c.height = img.naturalHeight;
            const g = c.getContext('2d');
            g.drawImage(img, 0, 0);
            const px = g.getImageData(0, 0, c.width, c.height).data;
            let opaque = 0;
            for (let k = 3; k < px.length; k += 4) if (px[k] === 255) opaque++;
            return [img.alt, opaque / (c.width * c.height)];
        });""")
    unpainted = [p for p in painted if p[1] < 1.0]
    assert not unpainted, unpainted
    # nothing fetched from anywhere: every resource the page loaded is a data URI
    fetched = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(u.startswith("data:") for u in fetched), fetched
    # the embedded numbers are strict JSON: the browser's own parser reads them
    data = driver.execute_script("return JSON.parse(document.getElementById('savedeep-data').textContent)")
    return {"images": images, "data": data}


def _check_blob_sections(driver, blobs: list[str]) -> None:
    from selenium.webdriver.common.by import By

    shown = [s.get_attribute("data-blob") for s in driver.find_elements(By.CSS_SELECTOR, "section.blob")]
    assert shown == blobs
    for blob in blobs:
        section = driver.find_element(By.ID, f"blob-{blob}")
        assert section.find_element(By.TAG_NAME, "h3").text == blob
        for part in ("stats", "histogram", "unit-means", "rdm", "top-images"):
            el = section.find_element(By.CLASS_NAME, part)
            assert el.is_displayed(), (blob, part)
        for part in ("histogram", "unit-means", "rdm"):
            img = section.find_element(By.CSS_SELECTOR, f".{part} img")
            assert driver.execute_script("return arguments[0].naturalWidth", img) > 100, (blob, part)
        stats = section.find_element(By.CSS_SELECTOR, "table.stats").text
        assert "exact zeros" in stats and "dead units" in stats and "per-unit means" in stats
    for sid in ("run", "geometry", "status", "failures"):
        assert driver.find_element(By.ID, sid).is_displayed()


def _screenshot(driver, dest: Path, height: int = 3200) -> bytes:
    """A PNG of the top of the page (up to ``height`` CSS pixels), reduced to a palette to stay small."""
    from PIL import Image

    full = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1200, min(full, height))
    png = driver.get_screenshot_as_png()
    driver.set_window_size(1200, 1600)
    im = Image.open(io.BytesIO(png)).convert("RGB")
    buf = io.BytesIO()
    im.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(buf, format="PNG", optimize=True)
    dest.write_bytes(buf.getvalue())
    return buf.getvalue()


def test_category_report_in_chromium(browser, nsfw_dir, photos, tmp_path):
    from selenium.webdriver.common.by import By

    out = run_categories(nsfw_dir, photos, tmp_path)
    r = subprocess.run(
        [sys.executable, "-m", "savedeep", "report", str(out), "--group-by", "category", "-q"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    page = Path(r.stdout.strip())
    shown = _open(browser, page)
    _check_blob_sections(browser, BLOB_NAMES)
    data = shown["data"]
    assert data["geometry"]["group_by"] == "category" and data["run"]["failures"] == 2
    # the page's text says what its numbers say
    for blob in BLOB_NAMES:
        zero = browser.find_element(By.CSS_SELECTOR, f"#blob-{blob} .zero-fraction").text
        assert zero == f"{data['blobs'][blob]['zero_fraction']:.2%}"
    rows = browser.find_elements(By.CSS_SELECTOR, "table.failures tr")
    assert len(rows) == 1 + 2 and all(r.text.startswith("images/bad_") for r in rows[1:])
    thumbs = [i for i in shown["images"] if i[0].startswith("images/")]
    assert len(thumbs) == sum(len(t["rows"]) for b in BLOB_NAMES for t in data["blobs"][b]["top_units"])
    shot = _screenshot(browser, tmp_path / "category.png")
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"


def test_partial_report_in_chromium(browser, nsfw_dir, photos, tmp_path):
    from selenium.webdriver.common.by import By

    out = run_partial(nsfw_dir, photos, tmp_path)
    r = subprocess.run(
        [sys.executable, "-m", "savedeep", "report", str(out), "-q"], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    shown = _open(browser, Path(r.stdout.strip()))
    _check_blob_sections(browser, BLOB_NAMES)
    assert not shown["data"]["run"]["complete"]
    assert "Partial output" in browser.find_element(By.ID, "status").text
    _screenshot(browser, tmp_path / "partial.png")


def test_demo_report_in_chromium(browser, tmp_path):
    """The README's first command writes the demo's page (configs/demo.yaml: report: true); it is the README's
    screenshot."""
    (tmp_path / "configs").mkdir()
    shutil.copyfile(ROOT / "configs" / "demo.yaml", tmp_path / "configs" / "demo.yaml")
    subprocess.run(
        [sys.executable, "-m", "savedeep.demo", str(tmp_path / "demo")], check=True, timeout=300, capture_output=True
    )
    r = subprocess.run(
        [sys.executable, "-m", "savedeep", "run", "configs/demo.yaml", "--overwrite", "--no-progress"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    page = tmp_path / "demo" / "out" / "acts.report.html"
    assert f"report: {page}" in r.stderr
    shown = _open(browser, page)
    _check_blob_sections(browser, DEMO_BLOBS)
    assert shown["data"]["run"]["complete"] and shown["data"]["run"]["rows"] == 14
    shot = _screenshot(browser, tmp_path / "demo.png")
    assert len(shot) < 300_000
    if os.environ.get("SAVEDEEP_UPDATE_SCREENSHOT") == "1":
        tmp = SCREENSHOT.with_name(f".{SCREENSHOT.name}.tmp")
        tmp.write_bytes(shot)
        tmp.replace(SCREENSHOT)
