"""The boot services beside the API: TFTP and (optionally) dnsmasq DHCP, fed from the database.

``prov serve``'s lifespan calls ``start(settings)`` and, at shutdown, the
callable it returns. Each part starts independently: a TFTP port that cannot
be bound does not keep DHCP down, and neither keeps the API down (the failure
is logged so an operator can fix it through the API).

The boot driver never reads the database: this module hands it plain
``HostEntry`` reservations and, for TFTP, a per-MAC hook that answers with
``netboot.boot_config_for_mac``. DHCP reservations follow the database: a sync
loop rewrites only the host files whose content changed, every
``SYNC_INTERVAL`` seconds or at once when ``notify_hosts_changed()`` is called
(e.g. after an install-done switched netboot off).

Scale-out (issue 14): a boot agent (``--role boot --network CIDR``) serves only the hosts of
``settings.boot_networks`` (conductor/boot_agent.py: the rack's network, else the boot NIC's
address); every commit that changes hosts, NICs or racks wakes the sync loop at once:
in-process on SQLite, through PostgreSQL's LISTEN/NOTIFY from any API worker or conductor
(provisioner/changes.py), so a change reaches the agent's DHCP in well under a second.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from sqlmodel import Session, select

from provisioner import changes
from provisioner.conductor import netboot
from provisioner.conductor.boot_agent import NetworkFilter
from provisioner.db import session_scope
from provisioner.drivers.boot import bootfiles
from provisioner.drivers.boot.base import BootInterface
from provisioner.drivers.boot.dhcp import HostEntry, dhcp_name
from provisioner.drivers.boot.network import NetworkBoot
from provisioner.drivers.boot.tftp import DynamicHook, TftpNotFound, match_dynamic
from provisioner.errors import InvalidInput
from provisioner.models import Host, Nic, Rack
from provisioner.ratelimit import RateLimiter
from provisioner.settings import Settings

log = logging.getLogger(__name__)

SYNC_INTERVAL = 2.0  # seconds; a host-file rewrite is cheap and only happens on change
_wake = threading.Event()


def notify_hosts_changed() -> None:
    """Ask the DHCP sync loop to run now (netboot flag, MAC or reservation changed)."""
    _wake.set()


def host_entries(session: Session, networks: NetworkFilter | None = None) -> list[HostEntry]:
    """Every NIC prov knows (of the hosts ``networks`` serves: default all), as DHCP
    reservations (netboot follows the host's flag)."""
    entries: list[HostEntry] = []
    rows = session.exec(select(Nic, Host).where(Nic.host_id == Host.id)).all()
    if networks is not None and not networks.everything:
        rows = [r for r in rows if r[1].id in _served_host_ids(session, rows, networks)]
    for nic, host in rows:
        try:
            entries.append(HostEntry(mac=nic.mac, hostname=dhcp_name(host.name), ip=nic.ip,
                                     netboot=bool(host.netboot and (nic.boot or _only_nic(rows, host.id)))))
        except InvalidInput as exc:
            log.warning("dhcp: skipping NIC %s of host %s: %s", nic.mac, host.name, exc.message)
    return entries


def _served_host_ids(session: Session, rows: Sequence[tuple[Nic, Host]], networks: NetworkFilter) -> set[int | None]:
    rack_nets = {r.id: r.network for r in session.exec(select(Rack)).all()}
    boot_ips: dict[int | None, list[str | None]] = {}
    for nic, host in rows:
        if nic.boot or _only_nic(rows, host.id):
            boot_ips.setdefault(host.id, []).append(nic.ip)
    served: set[int | None] = set()
    for _nic, host in rows:
        rack_net = rack_nets.get(host.rack_id) if host.rack_id is not None else None
        if host.id not in served and networks.serves_host(rack_net, boot_ips.get(host.id, [])):
            served.add(host.id)
    return served


def host_served(session: Session, host: Host, networks: NetworkFilter) -> bool:
    """Is ``host`` this agent's (its rack's network, else its boot NIC's address)?"""
    if networks.everything:
        return True
    rows = [(nic, host) for nic in session.exec(select(Nic).where(Nic.host_id == host.id)).all()]
    return host.id in _served_host_ids(session, rows, networks)


def _only_nic(rows: Sequence[tuple[Nic, Host]], host_id: int | None) -> bool:
    return sum(1 for nic, _h in rows if nic.host_id == host_id) == 1


def _entries(settings: Settings) -> list[HostEntry]:
    with session_scope(settings) as session:
        return host_entries(session, NetworkFilter.from_cidrs(settings.boot_networks))


def sync_dhcp_hosts(boot: BootInterface, settings: Settings) -> int:
    return boot.sync_reservations(_entries(settings))


def tftp_hook(settings: Settings, boot: BootInterface) -> DynamicHook:
    """The TFTP server's per-MAC hook: pxelinux/GRUB configs by the netboot policy.

    Rate-limited per client address like the HTTP boot scripts (each answer reads the database
    and, for an installing host, writes a history line); over the limit: "file not found".
    """
    networks = NetworkFilter.from_cidrs(settings.boot_networks)
    limiter = RateLimiter(settings.rate_limit_boot_rate, settings.rate_limit_boot_burst,
                          settings.rate_limit_addresses, settings.rate_limit_exempt)

    def hook(rel: str, peer: tuple[str, int]) -> bytes | None:
        found = match_dynamic(rel)
        if found is None:
            return None
        if limiter.check(peer[0]) > 0:
            # debug: the TFTP server already logs every refusal, and a flood must not double that
            log.debug("tftp: %s asked for %s too often: refused (rate limit)", peer[0], rel)
            raise TftpNotFound(rel)
        kind, mac = found
        with session_scope(settings) as session:
            if not networks.everything and not _mac_served(session, mac, networks):
                raise TftpNotFound(rel)  # another agent's host (or nobody's): that agent answers
            text = netboot.boot_config_for_mac(session, mac, kind, settings, boot=boot, source=peer[0])
        if text is None:
            raise TftpNotFound(rel)  # unknown MAC or netboot off: nothing, never an installer
        return text.encode()

    return hook


def _mac_served(session: Session, mac: str, networks: NetworkFilter) -> bool:
    from provisioner import crud
    from provisioner.validators import normalize_mac

    try:
        host = crud.host_by_mac(session, mac=normalize_mac(mac))
    except ValueError:
        return False
    # an unknown MAC (discovery) is answered only by an agent serving everything
    return host is not None and host_served(session, host, networks)


def _sync_loop(boot: BootInterface, settings: Settings, stop: threading.Event) -> None:
    while not stop.is_set():
        _wake.wait(SYNC_INTERVAL)
        _wake.clear()
        if stop.is_set():
            return
        try:
            sync_dhcp_hosts(boot, settings)
        except Exception:
            log.exception("dhcp host sync failed")


def _follow_changes(settings: Settings) -> Callable[[], None]:
    """Wake the DHCP sync on every boot-relevant commit: this process's (SQLite and PostgreSQL)
    and, on PostgreSQL, every other process's through LISTEN prov_boot."""
    unsubscribe = changes.subscribe(lambda _tables: notify_hosts_changed())
    if settings.db_url.startswith("sqlite"):
        return unsubscribe
    listener = changes.Listener(settings.db_url, lambda _tables: notify_hosts_changed()).start()

    def stop() -> None:
        unsubscribe()
        listener.stop()

    return stop


def start(settings: Settings, boot: BootInterface | None = None) -> Callable[[], None]:
    b = boot or NetworkBoot(settings)
    stops: list[Callable[[], None]] = []
    settings.ensure_dirs()
    try:
        bootfiles.populate(settings.boot_dir)
    except OSError:
        log.exception("could not populate the boot root %s", settings.boot_dir)

    if settings.tftp_enabled:
        try:
            b.start_tftp(tftp_hook(settings, b))
            stops.append(b.stop_tftp)
        except Exception:
            log.exception("TFTP did not start on %s:%d", settings.tftp_host, settings.tftp_port)

    if settings.dhcp_enabled:
        try:
            b.start_dhcp(_entries(settings))
            stop_sync = threading.Event()
            thread = threading.Thread(target=_sync_loop, args=(b, settings, stop_sync),
                                      name="dhcp-sync", daemon=True)
            thread.start()

            def stop_dhcp() -> None:
                stop_sync.set()
                _wake.set()
                thread.join(5)
                b.stop_dhcp()

            stops.append(stop_dhcp)
        except Exception:
            log.exception("DHCP (dnsmasq) did not start on %s", settings.dhcp_interface)
        stops.append(_follow_changes(settings))

    def stop_all() -> None:
        for stop in reversed(stops):
            try:
                stop()
            except Exception:
                log.exception("stopping a boot service failed")

    return stop_all
