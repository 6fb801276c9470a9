"""The controller's process-wide Prometheus metrics: BMC calls, TFTP, HTTP boot, DHCP, installs, build.

Ground floor: the drivers (TFTP counts its own transfers), the conductor (BMC calls,
install phases) and the API (HTTP boot bytes, ``/metrics``) all import this module,
and it imports nothing of the package above it.

``REGISTRY`` is private, not prometheus_client's default one: a library that
registers into the default registry cannot clash with these names, and the API's
per-app registry (api/middleware.Metrics: one per app, tests build many) takes
this one in as a collector (api/routes/metrics.py), so one scrape shows both.
These series are process-wide on purpose: a transfer or a BMC call belongs to the
process, not to an app object. Tests compare values before and after, never
absolute ones.

Every increment here is one lock-protected add in prometheus_client; nothing is
counted per TFTP packet or per HTTP chunk beyond that.
"""

from __future__ import annotations

import os
import platform
import time
from bisect import bisect_right
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# No ``*_created`` series: every counter and histogram would otherwise carry a second gauge
# with its creation time, which doubles the series and which no dashboard of ours reads.
# (Process-wide in prometheus_client, so the API's own registry loses them too.)
disable_created_metrics()

REGISTRY = CollectorRegistry()

# --------------------------------------------------------------------------- BMC calls
# One BMC call is one attempt of conductor/power.PowerService.call (retries count again).
BMC_CALLS = Counter("prov_bmc_calls", "BMC calls (each attempt, retries included) by driver, operation and outcome",
                    ["driver", "op", "outcome"], registry=REGISTRY)
BMC_ERRORS = Counter("prov_bmc_call_errors", "Failed BMC calls by driver and error class (bmc_timeout, "
                     "bmc_unreachable, bmc_auth, bmc_busy, bmc_unsupported, bmc_error, ...)",
                     ["driver", "class"], registry=REGISTRY)
# From 10 ms (a local ipmi_sim) to the 60 s of a very slow Redfish service; the call bound
# (settings.power_call_timeout, 10 s by default) falls inside.
BMC_DURATION = Histogram("prov_bmc_call_duration_seconds", "Duration of one BMC call (the BMC's time, "
                         "without waiting for a slot)", ["driver", "op"], registry=REGISTRY,
                         buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
# Not a failure: the manual driver asks a person (drivers/power/manual.OperatorActionRequired).
OPERATOR_ACTION = "operator_action"


@contextmanager
def bmc_call(driver: str, op: str) -> Iterator[None]:
    """Count and time the BMC call in the ``with`` block; a raised error is classified by its code
    (errors.ProvError.code: the classes of conductor/power.py), anything else as ``unexpected``."""
    start = time.perf_counter()
    try:
        yield
    except Exception as exc:
        code = str(getattr(exc, "code", "") or "unexpected")
        outcome = OPERATOR_ACTION if code == OPERATOR_ACTION else "error"
        BMC_DURATION.labels(driver, op).observe(time.perf_counter() - start)
        BMC_CALLS.labels(driver, op, outcome).inc()
        if outcome == "error":
            BMC_ERRORS.labels(driver, code).inc()
        raise
    BMC_DURATION.labels(driver, op).observe(time.perf_counter() - start)
    BMC_CALLS.labels(driver, op, "ok").inc()


# --------------------------------------------------------------------------- TFTP
TFTP_OUTCOMES = ("ok", "failed", "refused", "size_probe")
TFTP_TRANSFERS = Counter("prov_tftp_transfers", "TFTP read requests by outcome: ok (sent in full), failed "
                         "(timed out, aborted, shed), refused (not found, not allowed, busy), size_probe "
                         "(the client asked for tsize and ended: UEFI PXE does so first)",
                         ["outcome"], registry=REGISTRY)
TFTP_BYTES = Counter("prov_tftp_bytes_sent", "Bytes of files the TFTP server sent in full", registry=REGISTRY)
TFTP_ACTIVE = Gauge("prov_tftp_active_transfers", "TFTP transfers running now", registry=REGISTRY)
for _outcome in TFTP_OUTCOMES:
    TFTP_TRANSFERS.labels(_outcome)

# --------------------------------------------------------------------------- HTTP boot
HTTP_BOOT_KINDS = ("file", "script", "install")
HTTP_BOOT_BYTES = Counter("prov_http_boot_bytes", "Response bytes sent to booting machines: file (kernels, "
                          "initrds, images from the boot root), script (iPXE scripts), install (installer "
                          "files under /install/v1)", ["kind"], registry=REGISTRY)
for _kind in HTTP_BOOT_KINDS:
    HTTP_BOOT_BYTES.labels(_kind)
_BOOT_ROUTES = (("/boot/files/", "file"), ("/boot/", "script"), ("/install/v1/", "install"))


def http_boot_counter(method: str, route: str, status: int) -> Counter | None:
    """The byte counter for a response of ``route`` (the route template), or None when it is not
    a boot download (asked once per response, at its start; the body chunks then only add)."""
    if method != "GET" or status not in (200, 206):
        return None
    for prefix, kind in _BOOT_ROUTES:
        if route.startswith(prefix):
            return HTTP_BOOT_BYTES.labels(kind)
    return None


# --------------------------------------------------------------------------- installs
INSTALL_OUTCOMES = ("succeeded", "failed", "error")
INSTALL_PHASE = Histogram("prov_install_phase_duration_seconds", "Duration of each completed install step "
                          "(conductor/install.STEPS; a step resumed after a restart counts from the resume)",
                          ["step"], registry=REGISTRY,
                          buckets=(0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200))
INSTALLS = Counter("prov_installs", "Finished install workflows: succeeded, failed (a step failed, timed "
                   "out or was aborted) or error (an unexpected exception)", ["outcome"], registry=REGISTRY)
for _outcome in INSTALL_OUTCOMES:
    INSTALLS.labels(_outcome)


# --------------------------------------------------------------------------- DHCP leases
# dnsmasq writes one line per lease: "<expiry epoch|0> <mac> <ip> <hostname> <client-id>" (and a
# "duid ..." line for DHCPv6). A scrape reads at most this much of the file (~50,000 leases: far
# more than a provisioning network holds), and parses it again only when its mtime or size changed.
MAX_LEASE_BYTES = 4 * 1024 * 1024


class DhcpLeases(Collector):
    """``prov_dhcp_leases``: unexpired leases in dnsmasq's lease file, read at scrape time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._expiries: list[int] = []  # sorted; 0 (infinite) leases are counted in _forever
        self._forever = 0

    def _load(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError:
            self._stamp, self._expiries, self._forever = None, [], 0
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_LEASE_BYTES)
        except OSError:
            self._stamp, self._expiries, self._forever = None, [], 0
            return
        expiries: list[int] = []
        forever = 0
        for line in data.splitlines():
            head = line.split(b" ", 1)[0]
            if not head.isdigit() or line.count(b" ") < 3:
                continue  # the DHCPv6 "duid" line, or a line cut at MAX_LEASE_BYTES
            if head == b"0":
                forever += 1
            else:
                expiries.append(int(head))
        expiries.sort()
        self._stamp, self._expiries, self._forever = stamp, expiries, forever

    def count(self, now: float | None = None) -> int:
        self._load()
        now = time.time() if now is None else now
        return self._forever + len(self._expiries) - bisect_right(self._expiries, int(now))

    def collect(self) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily("prov_dhcp_leases", "Unexpired DHCP leases in dnsmasq's lease file (0: DHCP off "
                              "or no lease yet)")
        g.add_metric([], self.count())
        yield g


# --------------------------------------------------------------------------- build, process
class _BuildInfo(Collector):
    """``prov_build_info{version,python,implementation,machine} 1``; the version is read on the
    first scrape (importlib.metadata costs ~30 ms: not at import, which the drivers do)."""

    def __init__(self) -> None:
        self._labels: dict[str, str] | None = None

    def labels(self) -> dict[str, str]:
        if self._labels is None:
            from importlib.metadata import PackageNotFoundError, version

            try:
                prov = version("provisioner")
            except PackageNotFoundError:
                prov = "0+unknown"
            self._labels = {"version": prov, "python": platform.python_version(),
                            "implementation": platform.python_implementation(), "machine": platform.machine()}
        return self._labels

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = self.labels()
        g = GaugeMetricFamily("prov_build_info", "prov's version and the Python it runs on (always 1)",
                              labels=list(labels))
        g.add_metric(list(labels.values()), 1)
        yield g


BUILD_INFO = _BuildInfo()
REGISTRY.register(BUILD_INFO)
# process_* (CPU, memory, open files, start time), python_info, python_gc_*
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)
