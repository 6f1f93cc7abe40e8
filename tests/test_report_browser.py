"""The report pages as a browser shows them: `edge-sel report`'s and a benchmark's page load in a
headless Chromium (selenium and chromedriver) with every image decoded, no console error, and their
tables as tables. Skipped where no such browser is installed."""

from __future__ import annotations

import shutil

import pytest
from helpers import run_cli

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"),
                             shutil.which("google-chrome")) if p), None)
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                                reason="no headless Chromium and chromedriver here (e.g. apt-get install chromium "
                                       "chromium-driver)")


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--allow-file-access-from-files"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    except Exception as e:       # a browser that is installed but cannot start here
        pytest.skip(f"Chromium does not start here ({e.__class__.__name__}: {str(e).splitlines()[0]})")
    yield driver
    driver.quit()


def seen(driver, page) -> dict:
    """What the browser made of the page: its images (decoded or not), tables, console errors."""
    driver.get(page.resolve().as_uri())
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0]);")
    tables = driver.execute_script(
        "return Array.from(document.querySelectorAll('table')).map(t => [t.rows.length, t.rows[0].cells.length]);")
    text = driver.execute_script("return document.body.innerText;")
    errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    return {"images": images, "tables": tables, "text": text, "errors": errors,
            "pre": driver.execute_script("return document.querySelectorAll('pre').length;")}


def test_the_run_report_renders_in_a_browser(tiny_warm, tmp_path, browser):
    run = tmp_path / "run"
    run_cli("finetune", "--checkpoint", tiny_warm, "--dataset", "synthetic", "--epochs", "2", "--batch-size", "64",
            "--out", run, "--quiet")
    run_cli("report", run, "--out", tmp_path / "report")
    page = seen(browser, tmp_path / "report" / "report.html")
    assert page["images"] and all(ok for _, ok in page["images"]), page["images"]
    assert page["tables"] and all(rows >= 2 and cells >= 2 for rows, cells in page["tables"]), page["tables"]
    assert not page["errors"], page["errors"]
    assert "|---|" not in page["text"]


def test_a_benchmark_page_shows_tables_not_markdown(tmp_path, browser):
    out = tmp_path / "bench"
    run_cli("bench", "stream", "--quick", "--scenarios", "noise", "--methods", "random,one-per-scene",
            "--subset", "40", "--frames", "3", "--pretrain-epochs", "1", "--seeds", "2", "--quiet", "--out", out)
    page = seen(browser, out / "report.html")
    assert page["images"] and all(ok for _, ok in page["images"]), page["images"]
    assert len(page["tables"]) == 2 and page["pre"] == 0 and "|---|" not in page["text"]
    assert not page["errors"], page["errors"]
