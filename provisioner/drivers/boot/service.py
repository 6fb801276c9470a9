"""The boot services beside the API: TFTP and (optionally) dnsmasq DHCP.

``prov serve``'s lifespan calls ``start(settings)`` and, at shutdown, the
callable it returns. Each part starts independently: a TFTP port that cannot
be bound does not keep DHCP down, and neither keeps the API down (the failure
is logged so an operator can fix it through the API).

DHCP host files follow the database: a sync loop rewrites only the host files
whose content changed (``DnsmasqManager.sync``), every ``SYNC_INTERVAL``
seconds or at once when ``notify_hosts_changed()`` is called (e.g. after an
install-done switched netboot off).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from provisioner.db import session_scope
from provisioner.drivers.boot import bootfiles, tftp
from provisioner.drivers.boot.dhcp import DhcpConfig, DnsmasqManager, host_entries
from provisioner.settings import Settings

log = logging.getLogger(__name__)

SYNC_INTERVAL = 2.0  # seconds; a host-file rewrite is cheap and only happens on change
_wake = threading.Event()


def notify_hosts_changed() -> None:
    """Ask the DHCP sync loop to run now (netboot flag, MAC or reservation changed)."""
    _wake.set()


def sync_dhcp_hosts(manager: DnsmasqManager, settings: Settings) -> int:
    with session_scope(settings) as session:
        return manager.sync(host_entries(session))


def _sync_loop(manager: DnsmasqManager, settings: Settings, stop: threading.Event) -> None:
    while not stop.is_set():
        _wake.wait(SYNC_INTERVAL)
        _wake.clear()
        if stop.is_set():
            return
        try:
            sync_dhcp_hosts(manager, settings)
        except Exception:
            log.exception("dhcp host sync failed")


def start(settings: Settings) -> Callable[[], None]:
    stops: list[Callable[[], None]] = []
    settings.ensure_dirs()
    try:
        bootfiles.populate(settings.boot_dir)
    except OSError:
        log.exception("could not populate the boot root %s", settings.boot_dir)

    if settings.tftp_enabled:
        try:
            server = tftp.serve(settings)
            stops.append(server.stop)
        except Exception:
            log.exception("TFTP did not start on %s:%d", settings.tftp_host, settings.tftp_port)

    if settings.dhcp_enabled:
        try:
            manager = DnsmasqManager(DhcpConfig.from_settings(settings))
            manager.write_config()
            sync_dhcp_hosts(manager, settings)
            manager.start()
            stop_sync = threading.Event()
            thread = threading.Thread(target=_sync_loop, args=(manager, settings, stop_sync),
                                      name="dhcp-sync", daemon=True)
            thread.start()

            def stop_dhcp() -> None:
                stop_sync.set()
                _wake.set()
                thread.join(5)
                manager.stop()

            stops.append(stop_dhcp)
        except Exception:
            log.exception("DHCP (dnsmasq) did not start on %s", settings.dhcp_interface)

    def stop_all() -> None:
        for stop in reversed(stops):
            try:
                stop()
            except Exception:
                log.exception("stopping a boot service failed")

    return stop_all
