"""`snapver ui` in a real browser: Debian's headless Chromium driven by Selenium (chromium and
chromium-driver from apt, no browser download) opens each page of a lake made by the test
(3 commits with metrics, a derived volume, a release moved twice, a run's steps), checks what a person would
see, and saves a screenshot of each page in $SNAPVER_ARTIFACTS (default tests/artifacts/ui)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from tests.fixtures.git import snapver
from tests.webui_lake import Server, log_steps, made, wait_for  # noqa: F401 (a fixture)

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARTIFACTS = Path(os.environ.get("SNAPVER_ARTIFACTS") or Path(__file__).parent / "artifacts" / "ui")


@pytest.fixture
def browser():
    for path in (CHROMIUM, DRIVER):
        assert os.access(path, os.X_OK), f"{path} is missing: scripts/test.sh installs chromium and chromium-driver"
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,760", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def charts_drawn(driver) -> None:
    """Wait until vega-embed has drawn (or failed) every chart of the page; fail on any error."""
    wait_for(lambda: driver.execute_script(
        "return window.snapverChartsDone !== undefined && "
        "window.snapverChartsDone >= document.querySelectorAll('script.vl-spec').length"), what="the charts")
    assert driver.execute_script("return window.snapverChartErrors") == []


def chart_points(driver, metric: str) -> tuple[int, int]:
    """(rows in the chart's data as the Vega view holds them, point marks in its SVG)."""
    return tuple(driver.execute_script(
        "var el = document.querySelector('.chart[data-metric=\"' + arguments[0] + '\"]');"
        "var view = window.snapverViews[el.id];"
        "return [view.data('points').length, el.querySelectorAll('g.mark-symbol.role-mark path').length];", metric))


def shot(driver, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def test_what_a_person_sees(made, lake, browser, tmp_path):
    v1, v2, v3 = made.versions
    d, tag = browser, lake.backend
    with Server(made.repo) as s:
        # Versions: the three commits newest first, the release where it is now, the metric.
        d.get(s.base + "/")
        rows = d.find_elements(By.CSS_SELECTOR, "#versions tbody tr")
        assert [r.get_attribute("data-name") for r in rows][:3] == [v3, v2, v1]
        newest = rows[0].text
        assert "train v3" in newest and "prod" in newest and "0.93" in newest and "finetune" in newest
        assert "prod" not in rows[1].text and "prod" not in rows[2].text
        shot(d, f"versions-{tag}")

        # Compare v1 and v3, chosen with the check boxes: the delta is shown.
        for v in (v1, v3):
            d.find_element(By.CSS_SELECTOR, f'input[name="v"][value="{v}"]').click()
        d.find_element(By.CSS_SELECTOR, "#versions thead button").click()
        wait_for(lambda: "/compare" in d.current_url, what="the compare page")
        accuracy = d.find_element(By.CSS_SELECTOR, '#compare tr[data-key="accuracy"]').text
        assert "0.71" in accuracy and "0.93" in accuracy and "(+0.22)" in accuracy
        assert "metrics.json" in d.find_element(By.CSS_SELECTOR, 'table.changes[data-volume="models"]').text
        shot(d, f"compare-{tag}")

        # Charts: the accuracy chart has three points, drawn.
        d.get(s.base + "/charts")
        charts_drawn(d)
        assert chart_points(d, "accuracy") == (3, 3)
        shot(d, f"charts-{tag}")

        # Lineage: the derived node is there, and clicking it opens the version it came from.
        d.get(s.base + "/lineage")
        node = d.find_element(By.CSS_SELECTOR, "#lineage g#vol_finetune")
        assert node.is_displayed() and "finetune" in node.text
        assert "release prod" in d.find_element(By.CSS_SELECTOR, "#lineage g#rel_prod").text
        shot(d, f"lineage-{tag}")
        node.find_element(By.TAG_NAME, "a").click()
        wait_for(lambda: d.current_url.endswith(f"/v/{made.derived_from}"), what="the derived node's link")
        assert "train v2" in d.find_element(By.TAG_NAME, "main").text

        d.get(s.base + "/releases")
        assert v3[:10] in d.find_element(By.CSS_SELECTOR, 'tr[data-release="prod"]').text
        shot(d, f"releases-{tag}")

        # Space: the bars are drawn.
        d.get(s.base + "/space")
        charts_drawn(d)
        assert len(d.find_elements(By.CSS_SELECTOR, "#space-chart g.mark-rect path")) >= 6
        shot(d, f"space-{tag}")

        d.get(f"{s.base}/files/{v3}/models/")
        listing = d.find_element(By.ID, "files").text
        assert "metrics.json" in listing and "model.txt" in listing
        shot(d, f"files-{tag}")

        # A run's per-step history, its own chart: three steps logged on v3, three points,
        # reached from the version's page.
        log_steps(made.repo)
        d.get(f"{s.base}/v/{v3}")
        d.find_element(By.ID, "run-link").click()
        wait_for(lambda: d.current_url.endswith(f"/run/{v3}"), what="the run page")
        charts_drawn(d)
        assert chart_points(d, "loss") == (3, 3)
        shot(d, f"run-{tag}")

    # snapver plots: the static page draws the same chart from a file, offline.
    out = tmp_path / "plots"
    snapver(made.repo, "plots", "--out", str(out))
    d.get((out / "index.html").as_uri())
    charts_drawn(d)
    assert chart_points(d, "accuracy") == (3, 3)
    shot(d, f"plots-{tag}")
    shutil.rmtree(out)
