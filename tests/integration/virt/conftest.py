"""A real libvirtd (QEMU driver; TCG on these machines) started by the test session itself.

It runs in its own network namespace and mount namespace (provisioner.lab.libvirtd), so
bridges, dnsmasq, iptables rules and libvirt's state never touch the machine; everything is
removed at the end of the session.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.drivers.virt.libvirt import VirtConnection, open_connection
from provisioner.drivers.virt.spec import NetworkSpec
from provisioner.lab.libvirtd import LibvirtdHandle, start_libvirtd, stop_libvirtd
from tests.support.helpers import require_binary, require_root

POOL = "prov-it"
NET = "prov-it-nat"
SUBNET = "10.231.0.0/24"


@pytest.fixture(scope="session")
def libvirtd() -> Iterator[LibvirtdHandle]:
    require_root()
    require_binary("libvirtd", "virtlogd", "virsh", "qemu-system-x86_64", "dnsmasq", "ip", "iptables")
    # short path: the control socket lives under it and sockaddr_un holds 108 bytes
    base = Path(tempfile.mkdtemp(prefix="prov-lv-"))
    handle = start_libvirtd(base)
    try:
        yield handle
    finally:
        stop_libvirtd(handle)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def infra(libvirtd: LibvirtdHandle) -> Iterator[LibvirtdHandle]:
    """The pool and NAT network the tests share, made through our own driver."""
    with open_connection(libvirtd.uri) as conn:
        conn.ensure_dir_pool(POOL, str(libvirtd.pool_dir))
        conn.ensure_network(NetworkSpec(NET, subnet=SUBNET, lease_minutes=10))
    yield libvirtd


@pytest.fixture
def conn(infra: LibvirtdHandle) -> Iterator[VirtConnection]:
    c = open_connection(infra.uri, console_dir=str(infra.console_dir), default_pool=POOL, default_network=NET)
    before = {g["name"] for g in c.list_guests()}
    yield c
    for g in c.list_guests():
        if g["name"] not in before:
            c.delete_guest(g["name"])
    c.close()


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:6]


@pytest.fixture(scope="session")
def ramdisk():  # type: ignore[no-untyped-def]
    """prov's test ramdisk (Debian kernel + busybox initramfs), built once and cached by provisioner.lab."""
    from provisioner.lab.ramdisk import ensure_ramdisk

    return ensure_ramdisk()
