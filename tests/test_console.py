"""The live console, in a real headless Chromium (Debian's chromium + chromium-driver, driven by
selenium; nothing downloads a browser), against the real server with the bundled example's
sites and zone and the bundled country database.

Traffic from a handful of countries fills the network sample; São Paulo's health check targets
a closed loopback port, so it is down with a reason. The browser opens the page with the admin
token as HTTP Basic password, finds every site drawn with its state, sees a drain made with
`geodns drain` appear within seconds, runs a what-if and reads the countries that would move.
With GEODNS_CONSOLE_SCREENSHOT set, the screenshot docs/operations.md shows is written there.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from server_process import GeodnsServer, free_tcp_port

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None, reason="needs chromium and chromium-driver"
)
TOKEN = "console-test-token"
# ECS subnets the bundled database places in these countries (README's examples and others)
COUNTRY_SUBNETS = {
    "ID": "36.86.{}.0/24",
    "MY": "103.228.{}.0/24",
    "DE": "217.0.{}.0/24",
    "BR": "200.160.{}.0/24",
    "US": "8.8.{}.0/24",
    "ZA": "41.0.{}.0/24",
}
WAIT = 8.0  # seconds: the page polls every 2


def closed_port() -> int:
    """A loopback TCP port nobody listens on (bound and closed again)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server() -> Iterator[GeodnsServer]:
    example = yaml.safe_load((ROOT / "geodns" / "data" / "example-config.yaml").read_text())
    sites = example["sites"]
    sites["sao-paulo"]["checks"] = [
        {
            "type": "tcp",
            "address": "127.0.0.1",
            "port": closed_port(),
            "interval": 1,
            "timeout": 0.5,
        }
    ]
    config = {
        "sites": sites,
        "admin": {"listen": f"127.0.0.1:{free_tcp_port()}", "token_file": "admin.token"},
    }
    zones = {"cdn.example.com": (ROOT / "zones" / "cdn.example.com.yaml").read_text()}
    srv = GeodnsServer(
        config, zones, files={"admin.token": TOKEN + "\n"}, env={"LOGNAME": "oncall"}
    )
    with srv:
        for index in range(40):  # distinct subnets: each reaches the counters' observer
            for subnet in COUNTRY_SUBNETS.values():
                srv.query("www.cdn.example.com", ecs=subnet.format(index))
        yield srv


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # as root Chromium refuses to start with its sandbox
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",  # the machine has no network: nothing may hang on it
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
        "--window-size=1400,1200",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def admin_url(server: GeodnsServer, credentials: str = "") -> str:
    return f"http://{credentials}{server.config['admin']['listen']}"


def wait_for(condition: Any, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def drawn_sites(driver: Any) -> dict[str, str]:
    """Each site marker's state, read in one script: the page redraws every 2 s, so elements
    found in one call may be gone by the next."""
    pairs = driver.execute_script(
        "return Array.from(document.querySelectorAll('#sites g.site'))"
        ".map(g => [g.dataset.site, g.dataset.state]);"
    )
    return dict(pairs)


def text_of(driver: Any, selector: str) -> str | None:
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
        selector,
    )


def attribute(driver: Any, selector: str, name: str) -> str | None:
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]);"
        "return e ? e.getAttribute(arguments[1]) : null;",
        selector,
        name,
    )


def test_the_console_needs_the_admin_token(server: GeodnsServer) -> None:
    for path in ("/", "/console/state", "/console/world.json"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(admin_url(server) + path, timeout=10)
        assert refused.value.code == 401
        assert refused.value.headers["WWW-Authenticate"].startswith("Basic realm=")
    wrong = base64.b64encode(b"any:not-the-token").decode()
    request = urllib.request.Request(
        admin_url(server) + "/console/state", headers={"Authorization": f"Basic {wrong}"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401
    bearer = urllib.request.Request(
        admin_url(server) + "/console/state", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(bearer, timeout=10) as response:
        state = json.load(response)
    assert {site["name"] for site in state["sites"]} >= {"frankfurt", "jakarta", "dc-asia"}
    basic = base64.b64encode(f"any:{TOKEN}".encode()).decode()
    drain = urllib.request.Request(  # Basic is for the console's read-only routes only
        admin_url(server) + "/drain",
        data=b'{"site": "jakarta"}',
        headers={"Authorization": f"Basic {basic}", "Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(drain, timeout=10)
    assert refused.value.code == 401


def test_map_drain_and_what_if_in_a_real_browser(server: GeodnsServer, browser: Any) -> None:
    browser.get(admin_url(server, f"any:{TOKEN}@") + "/")
    sites = set(yaml.safe_load((ROOT / "geodns/data/example-config.yaml").read_text())["sites"])
    drawn = wait_for(lambda: (d := drawn_sites(browser)) and set(d) == sites and d)
    assert drawn and set(drawn) == sites, browser.find_element("id", "status").text
    sao_paulo_down = wait_for(lambda: drawn_sites(browser).get("sao-paulo") == "down")
    assert sao_paulo_down, "a site whose check fails is drawn down"
    assert {name: state for name, state in drawn_sites(browser).items() if name != "sao-paulo"} == {
        name: "up" for name in sites - {"sao-paulo"}
    }
    why = text_of(browser, '#sites-table tr[data-site="sao-paulo"] .why') or ""
    assert "check tcp://127.0.0.1:" in why and "down" in why
    painted = wait_for(lambda: attribute(browser, "#countries path[data-cc=ID]", "data-site"))
    assert painted == "jakarta"  # Indonesia's users are sent to Jakarta

    result = server.cli("drain", "frankfurt", "--reason", "console drill", "--for", "1h")
    assert result.returncode == 0, result.stderr
    drained_at = time.monotonic()
    assert wait_for(lambda: drawn_sites(browser).get("frankfurt") == "drained")
    assert time.monotonic() - drained_at < WAIT
    row = browser.find_element("css selector", '#sites-table tr[data-site="frankfurt"]')
    assert "drained by" in row.text and "console drill" in row.text and "until" in row.text
    assert wait_for(
        lambda: (
            browser.find_element("css selector", "#countries path[data-cc=DE]").get_attribute(
                "data-site"
            )
            not in ("frankfurt", None)
        )
    ), "German users are no longer painted as sent to Frankfurt"

    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", "whatif-action")).select_by_value("drain")
    Select(browser.find_element("id", "whatif-site")).select_by_value("jakarta")
    browser.find_element("id", "whatif-run").click()
    rows = wait_for(
        lambda: browser.find_elements("css selector", "#whatif-moves tbody tr"), timeout=15
    )
    assert rows, browser.find_element("id", "whatif-summary").text
    moved = {row.get_attribute("data-country"): row for row in rows}
    assert "ID" in moved and moved["ID"].get_attribute("data-from") == "jakarta"
    assert moved["ID"].get_attribute("data-to") in ("singapore", "kuala-lumpur")
    cells = moved["ID"].find_elements("tag name", "td")
    assert cells[4].text.startswith("+") and cells[4].text.endswith(" km")
    assert cells[5].text.endswith(" ms")
    assert "DE" not in moved  # German users are not Jakarta's
    assert (
        browser.find_element("css selector", "#countries path[data-cc=ID]")
        .get_attribute("class")
        .endswith("moved")
    )

    target = os.environ.get("GEODNS_CONSOLE_SCREENSHOT")
    path = Path(target) if target else None
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        height = browser.execute_script("return document.documentElement.scrollHeight;")
        browser.set_window_size(1400, int(height) + 160)  # the whole page, what-if included
        browser.execute_script("window.scrollTo(0, 0);")
        assert browser.save_screenshot(str(path))
    server.cli("undrain", "frankfurt")


def test_whatif_from_the_shell(server: GeodnsServer) -> None:
    result = server.cli("whatif", "drain", "jakarta")
    assert result.returncode == 0, result.stderr
    assert "networks seen in recent traffic" in result.stdout
    assert "Indonesia (ID)" in result.stdout and "jakarta" in result.stdout
    result = server.cli("whatif", "fail", "dc-americas", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert {"ashburn", "frankfurt", "dc-americas"} <= set(data["down_after"])  # its PoPs go too
    result = server.cli("whatif", "drain", "frankfrut")
    assert result.returncode == 1 and "did you mean" in result.stderr.lower()


def test_whatif_without_a_running_server() -> None:
    """No server to ask: the config's own zones and database decide, one user per country,
    every site up."""
    example = yaml.safe_load((ROOT / "geodns" / "data" / "example-config.yaml").read_text())
    config = {
        "sites": example["sites"],
        "admin": {"listen": f"127.0.0.1:{free_tcp_port()}"},  # nothing listens there
    }
    zones = {"cdn.example.com": (ROOT / "zones" / "cdn.example.com.yaml").read_text()}
    offline = GeodnsServer(config, zones)  # files written, never started
    try:
        result = offline.cli("whatif", "drain", "jakarta", "--json")
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
        assert data["source"] == "database" and data["down_after"] == ["jakarta"]
        moved = {(move["country"], move["from"], move["to"]) for move in data["moves"]}
        assert ("ID", "jakarta", "singapore") in moved, moved
        result = offline.cli("whatif", "drain", "jakarta")
        assert "no running server reachable" in result.stdout
        assert "no running server: this config, every site up" in result.stdout.splitlines()[0]
    finally:
        offline.cleanup()
