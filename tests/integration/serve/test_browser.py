"""The page in a real browser: Debian's headless Chromium driven by selenium (chromium-driver),
against a real server over the real recorded log. Nothing is downloaded: the page's scripts
are the package's own files, and the browser is the system's."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.capabilities import require
from tests.integration.serve.conftest import Served

pytestmark = pytest.mark.slow

SCREENSHOT_DIR = Path(os.environ.get("SCOPE_SCREENSHOT_DIR", "/tmp"))


def _browser_binaries() -> tuple[str | None, str | None]:
    return shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium, driver_path = _browser_binaries()
    require(
        chromium is not None and driver_path is not None,
        "Debian's chromium and chromium-driver (scripts/host-setup.sh --test)",
    )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,860"):  # fmt: skip
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(driver_path)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def held_connection(served: Served) -> dict[str, Any]:
    """The connection gold-held kept open for 2.5 s to gold-srv, from the API."""
    with served.client() as client:
        rows = client.get("/api/connections", params={"at": "-0s", "window": "1h"}).json()
    held = [
        row
        for row in rows["connections"]
        if row["client_comm"] == "gold-held" and row["server_comm"] == "gold-srv"
    ]
    assert len(held) == 1
    found: dict[str, Any] = held[0]
    return found


def labels(driver: Any) -> list[str]:
    found: list[str] = driver.execute_script(
        "return window.scopeMap.cy.nodes().map(n => n.data('label').split('\\n')[0]).sort()"
    )
    return found


def edges(driver: Any) -> list[list[str]]:
    found: list[list[str]] = driver.execute_script(
        "const cy = window.scopeMap.cy;"
        "return cy.edges().map(e => [e.source().data('label').split('\\n')[0],"
        " e.target().data('label').split('\\n')[0]]).sort()"
    )
    return found


def test_slider_moves_the_map_and_a_click_shows_the_connection(
    browser: Any, served: Served
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    held = held_connection(served)
    # A window of 1 s: at the log's end (where the page opens) the held connection is gone.
    browser.get(f"{served.url}/?view=processes&window=1s")
    wait_for(
        "the first map",
        lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-drawn"),
    )
    assert ["gold-held", "gold-srv"] not in edges(browser)

    body = browser.find_element(By.TAG_NAME, "body")
    start_ms = int(body.get_attribute("data-span-start"))
    end_ms = int(body.get_attribute("data-span-end"))
    target_ms = (held["opened_ns"] + held["closed_ns"]) // 2 // 1_000_000
    slider = browser.find_element(By.ID, "slider")
    fraction = (target_ms - start_ms) / (end_ms - start_ms)
    offset = round((fraction - 0.5) * slider.size["width"])
    ActionChains(browser).move_to_element_with_offset(slider, offset, 0).click().perform()

    def drawn_near_target() -> bool:
        drawn = body.get_attribute("data-drawn-at")
        return drawn is not None and abs(int(drawn) - target_ms) < 600

    wait_for("the map at the chosen moment", drawn_near_target)
    assert {"gold-held", "gold-srv"} <= set(labels(browser))
    assert ["gold-held", "gold-srv"] in edges(browser)
    assert "t=" in browser.current_url  # the moment is in the URL

    server_id = f"{held['host']};{held['server_pid']}"
    spot = browser.execute_script(
        "const p = window.scopeMap.cy.getElementById(arguments[0]).renderedPosition();"
        "return [p.x, p.y];",
        server_id,
    )
    graph = browser.find_element(By.ID, "map")
    ActionChains(browser).move_to_element_with_offset(
        graph, round(spot[0] - graph.size["width"] / 2), round(spot[1] - graph.size["height"] / 2)
    ).click().perform()
    wait_for("the detail panel", lambda: body.get_attribute("data-panel") == server_id)
    panel = browser.find_element(By.ID, "panel")
    assert panel.is_displayed()
    table = panel.find_element(By.CSS_SELECTOR, "table.connections").text
    assert "gold-held" in table
    assert held["client"] in table and held["server"] in table
    assert f"node={server_id.replace(';', '%3B')}" in browser.current_url

    path = SCREENSHOT_DIR / "scope-replay-serve.png"
    assert browser.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
    # Nothing refused by the content security policy, no failed request, no script error.
    severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == []


def test_a_link_shows_the_same_map(browser: Any, served: Served) -> None:
    """The URL holds the moment: opening a link draws the map of that moment."""
    from selenium.webdriver.common.by import By

    held = held_connection(served)
    at = (held["opened_ns"] + held["closed_ns"]) // 2
    browser.get(f"{served.url}/?view=processes&window=1s&t={at / 1e9:.3f}")
    body = browser.find_element(By.TAG_NAME, "body")
    wait_for("the map", lambda: body.get_attribute("data-drawn"))
    assert ["gold-held", "gold-srv"] in edges(browser)


@pytest.mark.parametrize("query", ["t=abc", "t=", "diff=abc", "t=1e999"])
def test_a_link_with_a_moment_that_is_no_number_draws_the_latest_map(
    browser: Any, served: Served, query: str
) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{served.url}/?view=processes&{query}")
    body = browser.find_element(By.TAG_NAME, "body")
    wait_for("the map", lambda: body.get_attribute("data-drawn"))
    assert labels(browser)


def test_the_page_offers_every_view_the_api_has(served: Served) -> None:
    page = httpx.get(served.url + "/").text
    listing = httpx.get(served.url + "/api/topology", params={"timestamp": "-0s"}).json()
    for topology in listing["topologies"]:
        assert f'<option value="{topology["name"]}">' in page, topology["name"]


def test_the_page_fetches_nothing_from_elsewhere(served: Served) -> None:
    page = httpx.get(served.url + "/").text
    assert "http://" not in page and "https://" not in page
    assert 'src="/static/vendor/cytoscape.min.js"' in page


def test_live_mode_says_the_recording_stopped(browser: Any, served: Served) -> None:
    """The real log's recording has stopped: live mode says so, with its reason, and stops
    following (the log's end will not move)."""
    from selenium.webdriver.common.by import By

    with served.client() as client:
        (recording,) = client.get("/api/span").json()["recordings"]
    assert recording["stop_reason"]
    browser.get(f"{served.url}/?view=processes")
    body = browser.find_element(By.TAG_NAME, "body")
    wait_for("the map", lambda: body.get_attribute("data-drawn"))
    live = browser.find_element(By.ID, "live")
    live.click()
    wait_for("live mode's first look", lambda: body.get_attribute("data-live-checks"))
    note = browser.find_element(By.ID, "live-note").text
    assert f"recording {recording['id']}" in note and recording["stop_reason"] in note
    assert "no recording is running: live mode stopped" in note
    assert not live.is_selected()


def test_a_link_keeps_where_the_nodes_were(browser: Any, served: Served) -> None:
    """A node moved by hand, and every other, is where it was when the link is opened."""
    from selenium.webdriver.common.by import By

    held = held_connection(served)
    at = (held["opened_ns"] + held["closed_ns"]) // 2
    browser.get(f"{served.url}/?view=processes&window=1s&t={at / 1e9:.3f}")
    body = browser.find_element(By.TAG_NAME, "body")
    wait_for("the map", lambda: body.get_attribute("data-drawn"))
    moved = browser.execute_script(
        "const n = window.scopeMap.cy.nodes().filter(n => !n.hasClass('pseudo'))[0];"
        "n.position({x: 1234, y: -567}); n.emit('dragfree'); return n.id();"
    )
    where = "return Object.fromEntries(window.scopeMap.cy.nodes().map(n => [n.id(), n.position()]))"
    before = browser.execute_script(where)
    assert before[moved] == {"x": 1234, "y": -567}
    link = wait_for(
        "the positions in the link", lambda: "pos=" in browser.current_url and browser.current_url
    )
    browser.get("about:blank")
    browser.get(link)
    body = browser.find_element(By.TAG_NAME, "body")
    wait_for("the map from the link", lambda: body.get_attribute("data-drawn"))
    after = browser.execute_script(where)
    assert after.keys() == before.keys()
    for node_id, spot in before.items():
        assert after[node_id] == {"x": round(spot["x"]), "y": round(spot["y"])}, node_id


def test_the_page_keeps_out_of_dropped_history(browser: Any, tmp_path: Path) -> None:
    """Over a log whose oldest third was dropped (``--archive none``), a link to a moment in
    it opens at the first moment kept; the API's refusal, whose window still reaches back,
    is what the page says; a later moment is drawn."""
    from selenium.webdriver.common.by import By

    from eventlog.location import resolve
    from tests.integration.log.test_drop_history import drop
    from tests.integration.log.test_retention import batch_walls, write_log
    from tests.integration.serve.conftest import serving

    location = resolve(str(tmp_path / "dropped.db"))
    write_log(location)
    walls = batch_walls(location)
    drop(str(location.path), walls[len(walls) // 3])
    with serving(Path(str(location.path))) as served:
        with served.client() as client:
            dropped_ms = client.get("/api/span").json()["dropped_to_ns"] // 1_000_000
        browser.get(f"{served.url}/?view=processes&window=1s&t={walls[1] / 1e9:.3f}")
        status = browser.find_element(By.ID, "status")
        wait_for("the refusal", lambda: "dropped" in status.text)
        assert browser.execute_script("return window.scopeMap.state.t") == dropped_ms + 1
        later_ms = walls[-2] // 1_000_000
        browser.execute_script("window.scopeMap.moveTo(arguments[0])", later_ms - 1)
        body = browser.find_element(By.TAG_NAME, "body")
        wait_for("the map after the cut", lambda: body.get_attribute("data-drawn"))
        assert int(body.get_attribute("data-drawn-at")) == later_ms - 1
        assert (
            browser.execute_script("window.scopeMap.moveTo(0); return window.scopeMap.state.t")
            == dropped_ms + 1
        )
