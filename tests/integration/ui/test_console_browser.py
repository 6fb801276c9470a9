"""The web console in a real headless Chromium (Debian's chromium + chromedriver) against a real
``prov serve``, with an ipmi_sim BMC behind one host.

Log in with the first token; the rack elevation shows each host at its U in its state's colour;
a state change and a power change made through the REST API show in the open page within 2 s
without a reload, an install task's progress bar advances in its slot, and no slot moves (element
boxes unchanged); the power buttons really drive the BMC (ipmitool confirms), the destructive one
only after its confirmation; no horizontal overflow at 1280x800 nor at a phone's 390x844.
Screenshots go to $PROV_TEST_ARTIFACTS (else the test's tmp dir).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session

from provisioner.db import get_engine
from provisioner.models import Task
from provisioner.settings import Settings
from tests.integration.ui.webdriver import Browser, chromium, chromium_paths
from tests.support.cli import start_prov_serve
from tests.support.helpers import require_binary
from tests.support.power import IpmiSim

pytestmark = pytest.mark.skipif(chromium_paths() is None and os.environ.get("PROV_REQUIRE_PEERS") != "1",
                                reason="chromium and chromium-driver not installed (deploy/install.sh --dev)")

SUITE3 = {"cipher_suite": 3}  # ipmi_sim offers no suite 17 (docs/field-notes.md, "BMC simulators")
BOXES = """return Array.from(document.querySelectorAll('.slot, .rack, h1, .legend')).map(function (e) {
  var r = e.getBoundingClientRect(); return [e.getAttribute('data-host') || e.getAttribute('data-u') || e.className,
  r.x, r.y, r.width, r.height]; });"""
PROGRESS = """var name = arguments[0];
var el = Array.from(document.querySelectorAll('.elevation [data-host]'))
  .find(function (e) { return e.getAttribute('data-host') === name; });
var bar = el.querySelector('[data-role=progress]');
return bar.value === arguments[1] && getComputedStyle(bar).visibility === 'visible';"""
OVERFLOW = "return [document.documentElement.scrollWidth, window.innerWidth];"
SLOT = """var name = arguments[0];
var el = Array.from(document.querySelectorAll('.elevation [data-host]'))
  .find(function (e) { return e.getAttribute('data-host') === name; });
return el ? {u: el.getAttribute('data-u'), cls: el.className, bg: getComputedStyle(el).backgroundColor,
  state: el.querySelector('[data-role=state]').textContent, power: el.querySelector('.pw-text').textContent} : null;"""


def _slot(b: Browser, host: str) -> dict[str, Any] | None:
    return b.js(SLOT, host)  # type: ignore[no-any-return]


def _wait_slot(b: Browser, host: str, key: str, value: str, timeout: float = 2.0) -> float:
    """Seconds until the slot's ``key`` reads ``value`` (fails after ``timeout``)."""
    start = time.monotonic()
    while True:
        got = _slot(b, host)
        if got is not None and got[key] == value:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{host}: {key} is {got and got[key]!r}, not {value!r} after {timeout} s")
        time.sleep(0.05)


def test_console_in_chromium(tmp_path: Path) -> None:
    require_binary("ipmi_sim", "ipmitool")
    shots = Path(os.environ.get("PROV_TEST_ARTIFACTS") or tmp_path / "screens")
    sim = IpmiSim(tmp_path / "bmc").start()
    try:
        with start_prov_serve(tmp_path) as srv, chromium(tmp_path / "chromedriver.log") as b:
            api = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {srv.token}"}, timeout=30)
            assert api.post("/api/v1/racks", json={"name": "lab", "size_u": 12}).status_code == 201
            bmc = {"kind": "ipmi", "address": "127.0.0.1", "port": sim.port, "username": sim.username,
                   "password": sim.password, "options": SUITE3}
            assert api.post("/api/v1/hosts", json={"name": "node01", "rack": "lab", "u_position": 4,
                                                   "bmc": bmc}).status_code == 201
            assert api.post("/api/v1/hosts", json={"name": "node02", "rack": "lab", "u_position": 9}).status_code == 201
            assert api.post("/api/v1/hosts", json={"name": "spare", "rack": "lab"}).status_code == 201

            # log in
            b.get(f"{srv.url}/ui/racks")
            assert b.url.endswith("/ui/login")
            b.type("#token", srv.token)
            b.click("form[action='/ui/login'] button[type=submit]")
            assert b.wait("return location.pathname === '/ui/racks'")
            assert b.wait("return document.body.getAttribute('data-live') === 'open'"), "event stream not open"

            # the elevation: 12 slots, hosts at their U, coloured by state; the unplaced one beside
            assert b.js("return document.querySelectorAll('.elevation > li').length") == 12
            n1, n2 = _slot(b, "node01"), _slot(b, "node02")
            assert n1 and n2 and n1["u"] == "4" and n2["u"] == "9"
            assert "st-enrolled" in n1["cls"] and n1["state"] == "enrolled"
            assert b.js("return !!document.querySelector('.unplaced [data-host=spare]')")
            enrolled_bg = n2["bg"]
            b.screenshot(shots / "rack-1280.png")
            boxes = b.js(BOXES)

            # a state change through the REST API: colour and text change live, nothing moves
            assert api.post("/api/v1/hosts/node02/transition", json={"event": "maintain"}).status_code == 200
            took = _wait_slot(b, "node02", "state", "maintenance")
            n2 = _slot(b, "node02")
            assert n2 and "st-maintenance" in n2["cls"] and n2["bg"] != enrolled_bg
            # a power change through the REST API: shown live too
            r = api.post("/api/v1/hosts/node01/power", json={"action": "on"})
            assert r.status_code == 200 and r.json()["ok"], r.text
            _wait_slot(b, "node01", "power", "on")
            # an install's progress bar advances (task rows written as the conductor writes them: the
            # session hooks put their task.progress events in the controller's database)
            db = Settings(data_dir=srv.data_dir)
            host_id = api.get("/api/v1/hosts/node01").json()["id"]
            with Session(get_engine(db)) as s:
                task = Task(kind="install", host_id=host_id, status="running", progress=10, step="netboot")
                s.add(task)
                s.commit()
                for pct in (25, 60):
                    task.progress = pct
                    s.add(task)
                    s.commit()
                    assert b.wait(PROGRESS, "node01", pct), f"progress bar not at {pct}"
                task.status, task.progress = "succeeded", 100
                s.add(task)
                s.commit()
            get_engine(db).dispose()
            assert b.js(BOXES) == boxes, "a slot moved when events arrived"
            assert b.url.endswith("/ui/racks") and b.js("return performance.getEntriesByType('navigation').length") == 1
            b.screenshot(shots / "rack-live.png")
            print(f"state change shown after {took:.2f} s")

            # no horizontal overflow at 1280x800 and on a phone
            for w, h in ((1280, 800), (390, 844)):
                b.size(w, h)
                time.sleep(0.3)
                scroll, inner = b.js(OVERFLOW)
                assert scroll <= inner, f"{w}x{h}: content {scroll} px wide in a {inner} px viewport"
                b.screenshot(shots / f"rack-{w}x{h}.png")
            b.size(1280, 800)

            # the host page's power buttons drive the BMC; power off asks first
            b.get(f"{srv.url}/ui/hosts/node01")
            assert b.js("return document.querySelector('h1').textContent") == "node01"
            assert sim.ipmitool_power() == "on"
            b.click("#act-power-off")
            assert b.alert_text() == "Power off node01?"
            b.alert(accept=False)
            time.sleep(0.5)
            assert sim.ipmitool_power() == "on"  # dismissed: nothing sent
            b.click("#act-power-off")
            b.alert(accept=True)
            assert b.wait("return document.querySelector('#live .ok') !== null", timeout=20), \
                b.js("return document.querySelector('#live').textContent")
            assert sim.ipmitool_power() == "off"
            b.click("#act-power-on")
            assert b.wait("return (document.querySelector('#live .ok') || {}).textContent", timeout=20)
            assert sim.ipmitool_power() == "on"
            assert b.wait("return document.querySelector('[data-role=power] .pw-text').textContent === 'on'")
            scroll, inner = b.js(OVERFLOW)
            assert scroll <= inner
            b.screenshot(shots / "host.png")

            # the history log lives: a line written now appears without a reload
            api.post("/api/v1/hosts/node01/transition", json={"event": "maintain", "message": "<b>live</b> line"})
            assert b.wait("return Array.from(document.querySelectorAll('#history .msg'))"
                          ".some(function (e) { return e.textContent === '<b>live</b> line'; })"), "history not live"
            assert b.js("return document.querySelector('#history b')") is None  # text, never HTML

            # log out: the pages are gone
            b.click("form.logout button")
            assert b.wait("return location.pathname === '/ui/login'")
            b.get(f"{srv.url}/ui/racks")
            assert b.url.endswith("/ui/login")
    finally:
        sim.kill()
