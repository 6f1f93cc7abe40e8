"""The report pages as a browser shows them: `edge-sel report`'s and a benchmark's page load in a
headless Chromium (selenium and chromedriver) with every image decoded, no console error, and their
tables as tables. Skipped where no such browser is installed."""

from __future__ import annotations

import json
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


@pytest.fixture(scope="module")
def runs(tiny_warm, tmp_path_factory):
    """A plain fine-tune, and one whose learning rate wrecks its epochs, so that the model it hands
    back (the start) is not its last epoch."""
    root = tmp_path_factory.mktemp("browser-runs")
    common = ["--checkpoint", tiny_warm, "--dataset", "synthetic", "--epochs", "2", "--batch-size", "64", "--quiet",
              "--meter", "estimate"]
    run_cli("finetune", *common, "--out", root / "plain")
    run_cli("finetune", *common, "--lr", "5", "--out", root / "hot")
    return root / "plain", root / "hot"


def test_the_run_report_renders_in_a_browser(runs, tmp_path, browser):
    run_cli("report", runs[0], "--out", tmp_path / "report")
    page = seen(browser, tmp_path / "report" / "report.html")
    assert page["images"] and all(ok for _, ok in page["images"]), page["images"]
    assert page["tables"] and all(rows >= 2 and cells >= 2 for rows, cells in page["tables"]), page["tables"]
    assert not page["errors"], page["errors"]
    assert "|---|" not in page["text"]


def table_rows(driver, selector: str) -> list[dict]:
    """A table as the browser shows it: one dict per body row, by heading."""
    return driver.execute_script(
        "const t = document.querySelector(arguments[0]);"
        "const heads = Array.from(t.tHead.rows[0].cells).map(c => c.innerText.replace(/\\s+/g, ' ').trim());"
        "return Array.from(t.tBodies[0].rows).map(r => Object.fromEntries("
        "Array.from(r.cells).map((c, i) => [heads[i], c.innerText.trim()])));", selector)


def test_each_run_is_drawn_at_the_accuracy_it_hands_back(runs, tmp_path, browser):
    """The accuracy figure's values, as the page shows them, are each run's output model's (from
    its summary.json), not its last epoch's; the last epoch is shown as such. A run named twice is
    shown once, a torn summary.json is a visible warning, and the tables fit a 1,400 px window."""
    plain, hot = runs
    torn = tmp_path / "torn"
    shutil.copytree(plain, torn)
    (torn / "summary.json").write_text((plain / "summary.json").read_text()[:200])
    out = tmp_path / "report"
    run_cli("report", plain, hot, plain, torn, "--out", out)
    browser.set_window_size(1400, 1000)
    page = seen(browser, out / "report.html")
    drawn = {row["run"]: row for row in table_rows(browser, "table.drawn")}
    assert sorted(drawn) == ["hot", "plain", "torn"]            # plain, named twice, once
    for name in ("plain", "hot"):
        summary = json.loads(((plain if name == "plain" else hot) / "summary.json").read_text())
        assert drawn[name]["accuracy drawn %"] == f"{100 * summary['output_model']['test_acc']:.2f}"
        assert drawn[name]["which model"] == "output model"
        assert drawn[name]["last epoch test acc %"] == f"{100 * summary['final']['test_acc']:.2f}"
    hot_summary = json.loads((hot / "summary.json").read_text())
    assert hot_summary["output_model"]["weights"] == "warmup"        # the case the figure used to get wrong
    assert abs(hot_summary["output_model"]["test_acc"] - hot_summary["final"]["test_acc"]) > 0.05
    # Without a readable summary the last epoch stands in, and the page says so.
    plain_last = json.loads((plain / "summary.json").read_text())["final"]["test_acc"]
    assert drawn["torn"]["which model"].startswith("last epoch") and \
        drawn["torn"]["accuracy drawn %"] == f"{100 * plain_last:.2f}"
    assert f"Warning: torn ({torn}): summary.json unreadable" in page["text"]
    assert "was named more than once; it is shown once" in page["text"]
    table = {row["run"]: row for row in table_rows(browser, "table")}
    assert table["hot"]["output test acc %"] == drawn["hot"]["accuracy drawn %"]
    width = browser.execute_script("return document.documentElement.clientWidth;")
    rights = browser.execute_script(
        "return Array.from(document.querySelectorAll('table')).map(t => t.getBoundingClientRect().right);")
    assert rights and max(rights) <= width, (rights, width)
    assert not page["errors"], page["errors"]


def test_a_benchmark_page_shows_tables_not_markdown(tmp_path, browser):
    out = tmp_path / "bench"
    run_cli("bench", "stream", "--quick", "--scenarios", "noise", "--methods", "random,one-per-scene",
            "--subset", "40", "--frames", "3", "--pretrain-epochs", "1", "--seeds", "2", "--quiet", "--out", out)
    page = seen(browser, out / "report.html")
    assert page["images"] and all(ok for _, ok in page["images"]), page["images"]
    assert len(page["tables"]) == 2 and page["pre"] == 0 and "|---|" not in page["text"]
    assert not page["errors"], page["errors"]
