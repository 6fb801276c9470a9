# ruff: noqa: F811  (pytest fixtures are imported from tests/support/install.py)
"""The install token belongs to the boot, not to a fetch of the public boot script (issue 18, item 4).

``GET /boot/ipxe/{mac}`` needs no credential (firmware has none). It used to mint a new token on
every call and so revoke the previous one: anyone who knew an installing host's MAC got a working
token and the real installer got 403. Now the netboot-on step mints once; every later fetch (over
HTTP, or a pxelinux/GRUB per-MAC config over TFTP) renders that same token, mints nothing,
revokes nothing and leaves a history line naming the address that asked. The token still dies
at done, error and abort. The install runs through the real workflow, with a fake BMC.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select

from provisioner import crud
from provisioner import states as S
from provisioner.conductor import boot_service, install, install_callbacks, install_tokens, power
from provisioner.drivers.boot.network import NetworkBoot
from provisioner.drivers.power.base import BootSetting, PowerAction, PowerInterface, PowerState
from provisioner.errors import Forbidden
from provisioner.models import Event, Host, Task
from provisioner.settings import Settings
from tests.support.helpers import banner_sshd
from tests.support.install import SSH_KEY, Api, add_host, api, db, settings  # noqa: F401

TOKEN_RE = re.compile(r"prov\.token=(\S+)")
INSTALLER = ("10.10.0.50", 40000)  # the machine itself
STRANGERS = [("203.0.113.7", 51000), ("203.0.113.8", 51001), ("198.51.100.9", 51002)]
FETCHES = 12  # per stranger


class FakeBmc(PowerInterface):
    power = PowerState.OFF

    def validate(self) -> None:
        pass

    def get_power_state(self) -> PowerState:
        return FakeBmc.power

    def set_power_state(self, action: PowerAction, *, soft_timeout: float = 60.0) -> None:
        FakeBmc.power = PowerState.OFF if action in (PowerAction.OFF, PowerAction.SOFT_OFF) else PowerState.ON

    def set_boot_device(self, setting: BootSetting) -> None:
        pass

    def get_boot_device(self) -> BootSetting | None:
        return None


@pytest.fixture
def fake_bmc(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    svc = power.get_service(settings)
    svc.driver_factory = FakeBmc
    svc.confirm_interval = 0.01
    monkeypatch.setattr(install, "POLL", 0.05)
    yield
    power.reset_services()


@pytest.fixture
def ssh_port() -> Iterator[int]:
    """Answers like sshd (a banner only): enough for the workflow's wait-for-SSH after done."""
    with banner_sshd() as port:
        yield port


def _client(api: Api, peer: tuple[str, int]) -> TestClient:
    """The same app as seen from another source address (the app's lifespan runs once, in ``api``)."""
    return TestClient(api.client.app, client=peer)


def _mac(db: Session, host: Host) -> str:
    return crud.host_nics(db, host_id=host.id or 0)[0].mac


def _host(db: Session, host_id: int) -> Host:
    db.expire_all()
    host = db.get(Host, host_id)
    assert host is not None
    return host


def _wait(db: Session, host_id: int, state: str, timeout: float = 20) -> Host:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        host = _host(db, host_id)
        if host.state == state:
            return host
        time.sleep(0.05)
    raise AssertionError(f"host never reached {state} (is {host.state}: {host.last_error})")


def _task_done(db: Session, host_id: int, timeout: float = 20) -> Task:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        db.expire_all()
        task = db.exec(select(Task).where(Task.host_id == host_id)).first()
        if task is not None and task.status in S.TASK_DONE:
            return task
        time.sleep(0.05)
    raise AssertionError("the install task did not finish")


def _boot_fetches(db: Session, host_id: int) -> list[str]:
    db.expire_all()
    rows = db.exec(select(Event).where(Event.host_id == host_id, Event.event == "boot-fetch")
                   .order_by(col(Event.id))).all()
    return [r.message for r in rows]


def _fetch(client: TestClient, mac: str) -> str:
    r = client.get(f"/boot/ipxe/{mac}")
    assert r.status_code == 200, r.text
    return r.text


def _token_of(script: str) -> str | None:
    m = TOKEN_RE.search(script)
    return m.group(1) if m else None


def _start_install(api: Api, db: Session, ssh_port: int) -> Host:
    """An available host, installed through the API: the workflow's netboot-on step mints the token."""
    host = add_host(db, state=S.AVAILABLE, netboot=False,
                    params={"ssh_authorized_keys": [SSH_KEY], "ssh_port": ssh_port})
    host.ip_address = "127.0.0.1"  # where the workflow waits for SSH after done
    host.bmc_address = "192.0.2.10"
    db.add(host)
    db.commit()
    mac = _mac(db, host)
    # before the install: a local boot, and nothing minted
    script = _fetch(_client(api, STRANGERS[0]), mac)
    assert _token_of(script) is None and "sanboot" in script
    assert _host(db, host.id or 0).install_token_hash is None
    r = api.client.post(f"/api/v1/hosts/{host.name}/install", headers=api.auth)
    assert r.status_code == 202, r.text
    return _wait(db, host.id or 0, S.INSTALL_WAIT)


def _installer_and_strangers(api: Api, db: Session, host: Host) -> str:
    """The machine fetches its boot script, then strangers fetch it many times; returns the token."""
    minted = _host(db, host.id or 0)
    digest, ciphertext = minted.install_token_hash, minted.install_token_enc
    assert digest and ciphertext
    mac = _mac(db, host)
    token = _token_of(_fetch(_client(api, INSTALLER), mac))
    assert token is not None
    seen: set[str | None] = set()
    for peer in STRANGERS:
        client = _client(api, peer)
        seen |= {_token_of(_fetch(client, mac)) for _ in range(FETCHES)}
    # the same token every time: the netboot-on step's, never a new one
    assert seen == {token}
    assert install_tokens.verify(db, token).id == host.id
    after = _host(db, host.id or 0)
    assert (after.install_token_hash, after.install_token_enc) == (digest, ciphertext)
    # a history line for every fetch, naming the address it came from
    lines = _boot_fetches(db, host.id or 0)
    assert len(lines) == 1 + FETCHES * len(STRANGERS), lines
    for address in [INSTALLER[0]] + [p[0] for p in STRANGERS]:
        assert sum(f"from {address}:" in line for line in lines) == (1 if address == INSTALLER[0] else FETCHES)
    assert all("nothing minted or revoked" in line for line in lines)
    # and the real installer carries on with the token it got
    machine = _client(api, INSTALLER)
    r = machine.get(f"/install/v1/{token}/config")
    assert r.status_code == 200, r.text
    r = machine.post(f"/install/v1/{token}/events", json={"event": "start", "message": "early"})
    assert r.status_code == 200, r.text
    return token


def _token_is_dead(api: Api, db: Session, host: Host, token: str) -> None:
    machine = _client(api, INSTALLER)
    assert machine.get(f"/install/v1/{token}/config").status_code == 403
    assert machine.post(f"/install/v1/{token}/events", json={"event": "done"}).status_code == 403
    with pytest.raises(Forbidden):
        install_tokens.verify(db, token)
    h = _host(db, host.id or 0)
    assert h.install_token_hash is None and h.install_token_enc is None and not h.netboot
    # the next network boot is a local boot: no token, nothing minted, nothing noted
    before = len(_boot_fetches(db, host.id or 0))
    script = _fetch(_client(api, STRANGERS[1]), _mac(db, host))
    assert _token_of(script) is None and "sanboot" in script
    assert _host(db, host.id or 0).install_token_hash is None
    assert len(_boot_fetches(db, host.id or 0)) == before


def test_anonymous_fetches_neither_revoke_nor_mint_and_done_still_kills_the_token(
        api: Api, db: Session, fake_bmc: None, ssh_port: int) -> None:
    host = _start_install(api, db, ssh_port)
    token = _installer_and_strangers(api, db, host)
    r = _client(api, INSTALLER).post(f"/install/v1/{token}/events", json={"event": "done"})
    assert r.status_code == 200 and r.json()["state"] == S.BOOTING, r.text
    assert _task_done(db, host.id or 0).status == S.TASK_SUCCEEDED
    _wait(db, host.id or 0, S.ACTIVE)
    _token_is_dead(api, db, host, token)


def test_installer_error_after_anonymous_fetches_kills_the_token(
        api: Api, db: Session, fake_bmc: None, ssh_port: int) -> None:
    host = _start_install(api, db, ssh_port)
    token = _installer_and_strangers(api, db, host)
    r = _client(api, INSTALLER).get(f"/install/v1/{token}/report", params={"event": "error", "reason": "no-disk"})
    assert r.status_code == 200 and r.json()["state"] == S.INSTALL_FAILED, r.text
    assert _task_done(db, host.id or 0).status == S.TASK_FAILED
    _token_is_dead(api, db, host, token)


def test_abort_after_anonymous_fetches_kills_the_token(api: Api, db: Session, fake_bmc: None, ssh_port: int) -> None:
    host = _start_install(api, db, ssh_port)
    token = _installer_and_strangers(api, db, host)
    r = api.client.post(f"/api/v1/hosts/{host.name}/transition", headers=api.auth,
                        json={"event": "abort", "message": "wrong disk layout"})
    assert r.status_code == 200, r.text
    assert _task_done(db, host.id or 0).status == S.TASK_FAILED
    _token_is_dead(api, db, host, token)


# --------------------------------------------------------------------------- TFTP per-MAC configs
def _tftp_path(kind: str, mac: str) -> str:
    dashed = mac.replace(":", "-")
    return f"pxelinux.cfg/01-{dashed}" if kind == "pxelinux" else f"grub/grub.cfg-01-{dashed}"


@pytest.mark.parametrize("kind", ["pxelinux", "grub"])
@pytest.mark.parametrize("end", ["done", "error"])
def test_tftp_per_mac_configs_carry_the_same_token_and_revoke_nothing(
        db: Session, settings: Settings, kind: str, end: str) -> None:
    host = add_host(db, state=S.INSTALL_WAIT, netboot=True)
    token = install_tokens.mint(db, host, settings)  # what the netboot-on step does
    digest = host.install_token_hash
    hook = boot_service.tftp_hook(settings, NetworkBoot(settings))
    path = _tftp_path(kind, _mac(db, host))
    peers = [(INSTALLER[0], 2070)] + [(p[0], 2000 + i) for i, p in enumerate(STRANGERS * 4)]
    texts = [hook(path, peer) for peer in peers]
    assert all(t is not None for t in texts)
    assert {_token_of(t.decode()) for t in texts if t is not None} == {token}
    assert _host(db, host.id or 0).install_token_hash == digest
    install_tokens.verify(db, token)
    lines = _boot_fetches(db, host.id or 0)
    assert len(lines) == len(peers) and all(line.startswith(f"{kind} boot config fetched from ") for line in lines)
    assert {line.split(" fetched from ", 1)[1].split(":", 1)[0] for line in lines} == {p[0] for p in peers}

    # the installer's end still kills the token; the next TFTP boot is local, with no token
    install_callbacks.handle(db, _host(db, host.id or 0), install_callbacks.InstallEvent(end, "the end"), settings)
    with pytest.raises(Forbidden):
        install_tokens.verify(db, token)
    if end == "error":  # a failed host keeps netboot on until its task cleans up: its state decides
        assert _host(db, host.id or 0).state == S.INSTALL_FAILED
    text = hook(path, (STRANGERS[0][0], 3000))
    assert text is not None and b"prov.token" not in text
    assert (b"LOCALBOOT" in text) if kind == "pxelinux" else (b"exit" in text)
    assert _host(db, host.id or 0).install_token_hash is None


def test_http_and_tftp_fetches_of_one_boot_agree_on_the_token(api: Api, db: Session, settings: Settings) -> None:
    host = add_host(db, state=S.INSTALL_WAIT, netboot=True)
    token = install_tokens.mint(db, host, settings)
    hook = boot_service.tftp_hook(settings, NetworkBoot(settings))
    over_tftp = hook(_tftp_path("pxelinux", _mac(db, host)), (INSTALLER[0], 2070))
    assert over_tftp is not None and _token_of(over_tftp.decode()) == token
    assert _token_of(_fetch(_client(api, STRANGERS[0]), _mac(db, host))) == token
    install_tokens.verify(db, token)


def test_a_live_token_that_cannot_be_shown_again_is_left_alone(db: Session, settings: Settings) -> None:
    """A token minted before tokens were stored encrypted (or under another secret key): the boot gets
    a local-boot config and a history line; the installer that has the token keeps it."""
    host = add_host(db, state=S.INSTALL_WAIT, netboot=True)
    token = install_tokens.mint(db, host, settings)
    host.install_token_enc = None  # what a row from before migration 0003 holds
    db.add(host)
    db.commit()
    hook = boot_service.tftp_hook(settings, NetworkBoot(settings))
    text = hook(_tftp_path("grub", _mac(db, host)), (STRANGERS[2][0], 2000))
    assert text is not None and b"prov.token" not in text and b"exit" in text
    assert install_tokens.verify(db, token).id == host.id
    lines = _boot_fetches(db, host.id or 0)
    assert len(lines) == 1 and f"from {STRANGERS[2][0]}:" in lines[0] and "cannot be shown again" in lines[0]


def test_first_fetches_when_no_token_is_live_mint_exactly_one(db: Session, settings: Settings) -> None:
    """Netboot turned on without a mint (or the token expired): the first fetch mints, later ones reuse it."""
    host = add_host(db, state=S.INSTALL_WAIT, netboot=True)
    hook = boot_service.tftp_hook(settings, NetworkBoot(settings))
    path = _tftp_path("pxelinux", _mac(db, host))
    tokens: list[Any] = [_token_of((hook(path, (p[0], 2000)) or b"").decode()) for p in STRANGERS]
    assert tokens[0] is not None and set(tokens) == {tokens[0]}
    db.expire_all()  # the hook wrote through its own session
    install_tokens.verify(db, tokens[0])
    lines = _boot_fetches(db, host.id or 0)
    assert "minted on this first fetch" in lines[0] and all("nothing minted" in line for line in lines[1:])
