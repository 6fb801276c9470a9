"""libvirt adapter, part 1: the connection to one host's libvirtd and what it says about the host.

Everything libvirt raises becomes a ``provisioner.errors`` class through ``translate``;
the other ``libvirt_*`` modules build on ``LibvirtHost`` (storage, networks, guest
planning, domains, guest create/delete) and ``libvirt.py`` assembles them into
``VirtConnection``.

URIs: ``qemu:///system`` (local), ``qemu+unix:///system?socket=...`` (a
libvirtd with its own socket, used by the tests), ``qemu+ssh://[user@]host/system``
(an enrolled KVM host), ``test:///default`` (libvirt's in-process test driver).
"""

from __future__ import annotations

import contextlib
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import libvirt

from provisioner.drivers.virt import preflight
from provisioner.drivers.virt.preflight import VirtReport
from provisioner.errors import NotFound, VirtError

DEFAULT_CONSOLE_DIR = "/var/log/libvirt/qemu"


def parse_xml(text: str) -> ET.Element:
    """Parse XML that libvirtd produced (trusted peer, no DTDs/entities), so defusedxml is not needed."""
    return ET.fromstring(text)  # noqa: S314


# libvirt prints every error to stderr unless a handler is registered; we translate them instead.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


@contextlib.contextmanager
def translate(what: str, *, kind: str | None = None, name: str | None = None) -> Iterator[None]:
    """Turn libvirtError into our errors; 'no such X' becomes NotFound."""
    try:
        yield
    except libvirt.libvirtError as exc:
        code = exc.get_error_code()
        msg = exc.get_error_message() or str(exc)
        if kind and code in (
            libvirt.VIR_ERR_NO_DOMAIN,
            libvirt.VIR_ERR_NO_NETWORK,
            libvirt.VIR_ERR_NO_STORAGE_POOL,
            libvirt.VIR_ERR_NO_STORAGE_VOL,
        ):
            raise NotFound(kind=kind, name=name or "?") from None
        raise VirtError(reason=f"{what}: {msg}", libvirt_code=code) from None


def ssh_target(uri: str) -> tuple[str, list[str]] | None:
    """``qemu+ssh://user@host:port/system?keyfile=K&no_verify=1`` -> ("user@host", ssh options).

    The same URI parameters libvirt's SSH transport reads (keyfile, no_verify), so the
    pre-flight script and console tails reach the host the way libvirt does. None for non-SSH URIs.
    """
    parts = urlsplit(uri)
    if not parts.scheme.endswith("+ssh") or not parts.hostname:
        return None
    target = f"{parts.username}@{parts.hostname}" if parts.username else parts.hostname
    opts = ["-p", str(parts.port)] if parts.port else []
    query = parse_qs(parts.query)
    if query.get("keyfile"):
        opts += ["-i", query["keyfile"][0]]
    if query.get("no_verify", ["0"])[0] == "1":
        opts += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    return target, opts


class LibvirtHost:
    """One open libvirt connection: the host's version, capabilities, pre-flight verdict and free memory."""

    def __init__(self, uri: str, *, console_dir: str | None = None, default_pool: str = "default",
                 default_network: str = "default") -> None:
        self.uri = uri
        self.console_dir = console_dir or DEFAULT_CONSOLE_DIR
        self.default_pool = default_pool
        self.default_network = default_network
        with translate(f"connect {uri}"):
            self._conn = libvirt.open(uri)

    # ------------------------------------------------------------------ basics
    def close(self) -> None:
        with contextlib.suppress(libvirt.libvirtError):
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def is_test(self) -> bool:
        return self.uri.startswith("test:")

    @property
    def is_local(self) -> bool:
        return ssh_target(self.uri) is None and "://" in self.uri and not urlsplit(self.uri).hostname

    def version(self) -> str:
        with translate("version"):
            v = self._conn.getLibVersion()
        return f"{v // 1_000_000}.{v // 1000 % 1000}.{v % 1000}"

    # ------------------------------------------------------------------ the host
    def domain_capabilities(self) -> dict[str, Any]:
        """Domain types libvirt offers for x86_64 and the host-model CPU it would give guests."""
        with translate("capabilities"):
            caps = parse_xml(self._conn.getCapabilities())
        types: list[str] = []
        for guest in caps.findall("guest"):
            arch = guest.find("arch")
            if arch is None or arch.get("name") not in ("x86_64", "i686"):
                continue
            for dom in arch.findall("domain"):
                t = dom.get("type", "")
                if t and t not in types:
                    types.append(t)
        out: dict[str, Any] = {"domain_types": types, "host_model": None, "host_model_features": []}
        for virt_type in ("kvm", "qemu"):
            if virt_type not in types:
                continue
            try:
                dc = parse_xml(self._conn.getDomainCapabilities(None, "x86_64", None, virt_type, 0))
            except libvirt.libvirtError:
                continue  # the test driver and old libvirts have no domain capabilities
            mode = dc.find("cpu/mode[@name='host-model']")
            if mode is not None and mode.get("supported") == "yes":
                out["host_model"] = mode.findtext("model")
                out["host_model_features"] = sorted(
                    f.get("name", "") for f in mode.findall("feature") if f.get("policy") != "disable"
                )
                out["host_model_type"] = virt_type
            break
        return out

    def preflight(self) -> VirtReport:
        """The host's verdict: facts from /proc and /sys (locally or over SSH), cross-checked with libvirt."""
        domcaps = self.domain_capabilities()
        ssh = ssh_target(self.uri)
        if ssh is None:
            facts = preflight.collect_facts("/")
        else:
            try:
                facts = preflight.remote_facts(ssh[0], ssh_options=ssh[1])
            except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as exc:
                raise VirtError(reason=f"pre-flight over SSH failed: {exc}") from None
        return preflight.evaluate(facts, domcaps)

    def free_memory_mib(self) -> int:
        """Memory available for a new guest. getInfo()/getFreeMemory() under-report on hosts with
        hot-plugged memory, so prefer the node memory stats (free + cache + buffers)."""
        try:
            stats = self._conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0)
            kib = int(stats.get("free", 0)) + int(stats.get("cached", 0)) + int(stats.get("buffers", 0))
            return kib // 1024
        except libvirt.libvirtError:
            with translate("free memory"):
                if self.is_test:
                    # the test driver's fake node: getFreeMemory() is a token 3 MiB, getInfo() a 3 GiB host
                    return int(self._conn.getInfo()[1])
                return int(self._conn.getFreeMemory()) // (1024 * 1024)
