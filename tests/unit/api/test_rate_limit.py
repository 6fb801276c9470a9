# ruff: noqa: F811  (pytest fixtures are imported from tests/support/install.py)
"""Per-source-address rate limits on the unauthenticated surfaces (issue 18).

Boot scripts, boot files and install callbacks each allow a burst per address, then answer 429
with Retry-After; other addresses, and the same address on another surface, are unaffected;
loopback is limited like any other address; the limiter's memory is bounded whatever the
number of addresses. The TFTP per-MAC config hook is limited the same way.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from provisioner import states as S
from provisioner.conductor import boot_service
from provisioner.drivers.boot.network import NetworkBoot
from provisioner.drivers.boot.tftp import TftpNotFound
from provisioner.ratelimit import RateLimiter
from provisioner.settings import Settings
from tests.support.install import add_host, db, settings  # noqa: F401

BURST = 5
LOW = {"rate_limit_boot_rate": 0.01, "rate_limit_boot_burst": BURST,
       "rate_limit_files_rate": 0.01, "rate_limit_files_burst": BURST,
       "rate_limit_install_rate": 0.01, "rate_limit_install_burst": BURST}
URLS = {"boot": "/boot/boot.ipxe", "files": "/boot/files/hello.txt", "install": "/install/v1/1.nope/config"}


@pytest.fixture
def low(settings: Settings) -> Settings:
    (settings.boot_dir / "hello.txt").write_text("hi\n")
    return settings.model_copy(update=LOW)


@pytest.fixture
def app(low: Settings) -> Iterator[TestClient]:
    from provisioner.api.app import create_app

    with TestClient(create_app(low), client=("10.0.0.1", 40000)) as client:
        yield client


def _as(client: TestClient, address: str) -> TestClient:
    return TestClient(client.app, client=(address, 40001))


@pytest.mark.parametrize("surface", sorted(URLS))
def test_a_burst_beyond_the_limit_gets_429_with_retry_after(app: TestClient, surface: str) -> None:
    url = URLS[surface]
    codes = [app.get(url).status_code for _ in range(BURST)]
    assert 429 not in codes, codes
    r = app.get(url)
    assert r.status_code == 429, r.text
    assert int(r.headers["retry-after"]) >= 1
    assert r.json()["error"] == "rate_limited"
    # another address is unaffected
    assert _as(app, "10.0.0.2").get(url).status_code != 429
    # and so is the same address on the other surfaces
    for other, other_url in URLS.items():
        if other != surface:
            assert app.get(other_url).status_code != 429, other


def test_the_limit_covers_the_per_mac_script_and_the_installer_routes(app: TestClient) -> None:
    urls = ["/boot/ipxe/52:54:00:00:00:01", "/install/v1/1.nope/events", "/install/v1/1.nope/report?event=start"]
    for i, url in enumerate(urls):
        client = _as(app, f"10.0.1.{i + 1}")
        method = client.post if url.endswith("/events") else client.get
        statuses = [method(url).status_code for _ in range(BURST + 1)]
        assert statuses[-1] == 429 and 429 not in statuses[:-1], (url, statuses)


def test_loopback_is_not_exempt_by_default(app: TestClient) -> None:
    local = _as(app, "127.0.0.1")
    assert [local.get("/boot/boot.ipxe").status_code for _ in range(BURST + 1)][-1] == 429


def test_exempt_networks_are_never_limited(low: Settings) -> None:
    from provisioner.api.app import create_app

    app = create_app(low.model_copy(update={"rate_limit_exempt": ["10.9.0.0/16"]}))
    exempt, other = TestClient(app, client=("10.9.1.2", 1)), TestClient(app, client=("10.8.1.2", 1))
    assert {exempt.get("/boot/boot.ipxe").status_code for _ in range(BURST * 3)} == {200}
    assert [other.get("/boot/boot.ipxe").status_code for _ in range(BURST + 1)][-1] == 429


def test_default_limits_leave_a_real_boot_alone(settings: Settings) -> None:
    """A PXE boot fetches a handful of scripts and files; the defaults allow far more from one address."""
    assert settings.rate_limit_boot_burst >= 50 and settings.rate_limit_files_burst >= 50
    assert settings.rate_limit_install_burst >= 100


def test_tokens_come_back_at_the_configured_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.check("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.check("a") == pytest.approx(0.5)
    now[0] += 0.5
    assert limiter.check("a") == 0.0
    assert limiter.check("a") > 0
    now[0] += 100  # refills up to the burst, not beyond
    assert [limiter.check("a") for _ in range(4)][-1] > 0


def test_memory_is_bounded_with_100000_distinct_addresses() -> None:
    limiter = RateLimiter(rate=1.0, burst=2, max_keys=5_000)
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        for i in range(100_000):
            assert limiter.check(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}") == 0.0
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(limiter) == 5_000
    assert used - base < 5 * 1024 * 1024, used - base  # a few MB for 5,000 buckets, not 100,000
    # the most recent addresses are still limited; the oldest were forgotten (a full bucket again)
    assert [limiter.check("10.1.134.159") for _ in range(2)][-1] > 0
    assert limiter.check("10.0.0.0") == 0.0


def test_the_default_bound_holds_over_http(low: Settings) -> None:
    from provisioner.api.app import create_app

    app = create_app(low.model_copy(update={"rate_limit_addresses": 50}))
    for i in range(200):
        TestClient(app, client=(f"10.3.0.{i}", 1)).get("/boot/boot.ipxe")
    assert all(len(limiter) <= 50 for limiter in app.state.rate_limiters.values())


def test_tftp_per_mac_configs_are_limited_per_client(db, low: Settings) -> None:
    host = add_host(db, state=S.ACTIVE, netboot=False)
    mac = "52-54-00-" + "-".join(f"{b:02x}" for b in bytes.fromhex(_nic_mac(db, host).replace(":", ""))[3:])
    hook = boot_service.tftp_hook(low, NetworkBoot(low))
    path = f"pxelinux.cfg/01-{mac}"
    assert all(hook(path, ("10.0.0.5", 2000 + i)) for i in range(BURST))
    with pytest.raises(TftpNotFound):
        hook(path, ("10.0.0.5", 3000))
    assert hook(path, ("10.0.0.6", 2000))  # another client is unaffected
    assert hook("undionly.kpxe", ("10.0.0.5", 3001)) is None  # static files are not the hook's


def _nic_mac(db, host) -> str:
    from provisioner import crud

    return crud.host_nics(db, host_id=host.id)[0].mac
