"""The BMC password never leaves memory: not in any process's command line, a log line
(DEBUG), an exception message, an API response or a task row - while prov drives real
ipmi_sim and sushy-emulator BMCs through the REST API, with good and wrong passwords."""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from provisioner import auth
from provisioner.api.app import create_app
from provisioner.conductor import engine
from provisioner.conductor.power import PowerService
from provisioner.db import get_engine
from provisioner.errors import ProvError
from provisioner.models import Event, Host, Task
from provisioner.settings import Settings
from tests.support.power import IpmiSim, SushyEmulator, add_host, add_rack

pytestmark = pytest.mark.integration

GOOD = "Sup3r-S3cret-BMC-pw"
WRONG = "Wr0ng-S3cret-BMC-pw"


class CmdlineScanner:
    """Reads every process's argv over and over while operations run."""

    def __init__(self, needles: list[str]) -> None:
        self.needles = [n.encode() for n in needles]
        self.hits: list[str] = []
        self.scans = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                for n in self.needles:
                    if n in argv:
                        self.hits.append(f"pid {pid}: {argv[:200]!r}")
            self.scans += 1
            time.sleep(0.01)

    def __enter__(self) -> CmdlineScanner:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def api(settings: Settings, service: PowerService) -> Iterator[tuple[TestClient, dict[str, str]]]:
    engine.stop()
    engine.start(settings)
    app = create_app(settings)
    with Session(get_engine(settings)) as s:
        token = auth.create_token(s, name="secrets-test")
    client = TestClient(app, raise_server_exceptions=False)  # no lifespan: no background services
    try:
        yield client, {"Authorization": f"Bearer {token}"}
    finally:
        engine.stop()


def test_password_never_leaks(settings: Settings, api: tuple[TestClient, dict[str, str]],
                              ipmi_sim: Callable[..., IpmiSim], sushy: SushyEmulator,
                              caplog: pytest.LogCaptureFixture) -> None:
    client, hdr = api
    caplog.set_level(logging.DEBUG)
    sim = ipmi_sim(password=GOOD)
    other = ipmi_sim(password=GOOD)
    rack = add_rack(settings, "r1")
    add_host(settings, "good", port=sim.port, password=GOOD, options={"cipher_suite": 3}, rack_id=rack)
    add_host(settings, "bad", port=other.port, password=WRONG, options={"cipher_suite": 3})
    add_host(settings, "rf-bad", kind="redfish", port=sushy.port, password=WRONG, options={"scheme": "http"},
             rack_id=rack)
    needles = [GOOD, WRONG]
    bodies: list[str] = []
    canary = "Canary-Not-A-Secret-42"
    with CmdlineScanner([*needles, canary]) as scan:
        # prove the scanner sees a word on a command line
        probe = subprocess.Popen(["sh", "-c", "sleep 0.5", canary])
        probe.wait()
        for path, method, body in [
            ("/api/v1/hosts/good/power", "post", {"action": "on"}),
            ("/api/v1/hosts/good/power", "get", None),
            ("/api/v1/hosts/good/boot-device", "put", {"device": "pxe", "uefi": True}),
            ("/api/v1/hosts/good/verify", "post", None),
            ("/api/v1/hosts/bad/power", "post", {"action": "off"}),
            ("/api/v1/hosts/bad/power", "get", None),
            ("/api/v1/hosts/bad/verify", "post", None),
            ("/api/v1/hosts/rf-bad/power", "get", None),
            ("/api/v1/racks/r1/power", "get", None),
            ("/api/v1/racks/r1/power", "post", {"action": "on", "background": False}),
            ("/api/v1/racks/r1/boot-device", "put", {"device": "disk", "background": True}),
            ("/api/v1/racks/r1/power", "post", {"action": "cycle", "background": True}),
            ("/api/v1/hosts/good", "get", None),
            ("/api/v1/hosts/bad", "get", None),
            ("/api/v1/hosts/bad/events", "get", None),
        ]:
            r = client.request(method, path, headers=hdr, json=body)
            assert r.status_code < 500 or r.json()["error"].startswith("bmc_"), r.text
            bodies.append(r.text)
            for key in ("task_id",):
                if r.status_code == 200 and key in r.json():
                    engine.wait(r.json()[key], timeout=60)
        # a task is visible through the API too
        bodies.append(client.get("/api/v1/tasks", headers=hdr).text)
        # exception messages raised to Python callers
        from provisioner.conductor import power as power_mod

        with Session(get_engine(settings)) as s:
            bad_id = s.exec(select(Host.id).where(Host.name == "bad")).one()
        try:
            power_mod.power_action(int(bad_id or 0), "on", settings=settings)
        except ProvError as exc:
            bodies.append(str(exc))
            bodies.append(repr(exc))
            bodies.append(repr(exc.details))
        else:
            pytest.fail("wrong password accepted")
    assert scan.scans > 3
    assert scan.hits and all(canary in h for h in scan.hits), scan.hits
    # the wrong password really was tried and answered with an auth error
    assert any("bmc_auth" in b for b in bodies)
    assert "verify-failed" in "".join(bodies) and "available" in "".join(bodies)
    for text in bodies:
        for n in needles:
            assert n not in text
    for rec in caplog.records:
        line = rec.getMessage() + (str(rec.exc_info) if rec.exc_info else "")
        for n in needles:
            assert n not in line, line
    with Session(get_engine(settings)) as s:
        task_rows = list(s.exec(select(Task)).all())
        assert len(task_rows) == 2 and all(t.status == "succeeded" for t in task_rows)
        dump = " ".join(repr(t.model_dump()) for t in task_rows)
        dump += " ".join(repr(e.model_dump()) for e in s.exec(select(Event)).all())
        dump += " ".join(f"{h.bmc_error} {h.last_error}" for h in s.exec(select(Host)).all())
    for n in needles:
        assert n not in dump
