"""The session-less IPMI wire probe and the IPMI code tables, against real loopback sockets."""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Iterator
from multiprocessing import Pipe

import pytest

from provisioner.drivers.power import ipmi_codes
from provisioner.drivers.power.base import BmcSpec
from provisioner.drivers.power.ipmi_probe import PROBE_PACKET, WireProbe, wait_for
from provisioner.errors import BmcAuthError, BmcError, BmcTimeout, BmcUnreachable
from tests.support.power import free_udp_port


@pytest.fixture
def answering() -> Iterator[tuple[int, list[bytes]]]:
    """A UDP 'BMC' that answers every datagram (and records what it got)."""
    got: list[bytes] = []
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = s.recvfrom(512)
            except TimeoutError:
                continue
            got.append(data)
            s.sendto(b"\x06\x00\xff\x07pong", peer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield s.getsockname()[1], got
    finally:
        stop.set()
        t.join(2)
        s.close()


def test_probe_packet_is_get_channel_auth_capabilities() -> None:
    # RMCP class IPMI, session-less IPMI 1.5 header, netFn App (6), command 0x38; both checksums hold
    assert PROBE_PACKET[:4] == bytes([0x06, 0x00, 0xFF, 0x07])
    msg = PROBE_PACKET[14:]
    assert len(msg) == PROBE_PACKET[13] == 9
    assert msg[1] >> 2 == 0x06 and msg[5] == 0x38
    assert sum(msg[0:3]) & 0xFF == 0 and sum(msg[3:]) & 0xFF == 0


def test_closed_port_is_port_unreachable_at_once() -> None:
    probe = WireProbe("127.0.0.1", free_udp_port())
    t0 = time.monotonic()
    probe.settle(time.monotonic() + 2)
    assert probe.unreachable == "port unreachable (ICMP)" and not probe.answered
    assert time.monotonic() - t0 < 0.5


def test_answer_and_silence(answering: tuple[int, list[bytes]]) -> None:
    port, got = answering
    probe = WireProbe("127.0.0.1", port)
    probe.settle(time.monotonic() + 2)
    assert probe.answered and probe.unreachable is None and got == [PROBE_PACKET]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        probe = WireProbe("127.0.0.1", silent.getsockname()[1])
        t0 = time.monotonic()
        probe.settle(t0 + 0.3)
        assert not probe.done and 0.25 < time.monotonic() - t0 < 0.6
        probe.close()


def test_unknown_name_is_unreachable_without_blocking() -> None:
    t0 = time.monotonic()
    probe = WireProbe("no-such-bmc.invalid", 623, resolve_timeout=0.5)
    assert time.monotonic() - t0 < 1.0
    assert probe.unreachable in ("cannot resolve 'no-such-bmc.invalid'", None)  # None: the resolver was slow


def test_errno_names_what_happened() -> None:
    probe = WireProbe("127.0.0.1", 9)
    probe._fail(OSError(errno.ENETUNREACH, "Network is unreachable"))
    assert probe.unreachable == "no route to the BMC's network" and probe.due() is None
    probe = WireProbe("127.0.0.1", 9)
    probe._fail(OSError(errno.EHOSTUNREACH, "No route to host"))
    assert probe.unreachable is not None and probe.unreachable.startswith("host unreachable")


def test_wait_for_returns_on_the_reply_or_the_verdict(answering: tuple[int, list[bytes]]) -> None:
    mine, theirs = Pipe()
    # a closed port ends the wait long before its end, with the verdict
    probe = WireProbe("127.0.0.1", free_udp_port())
    t0 = time.monotonic()
    assert wait_for(mine, t0 + 3, probe) is False
    assert probe.unreachable == "port unreachable (ICMP)" and time.monotonic() - t0 < 0.5
    # a reply wins; a probe scheduled later is not sent at all
    port, got = answering
    probe = WireProbe("127.0.0.1", port, start_at=time.monotonic() + 5)
    theirs.send("done")
    assert wait_for(mine, time.monotonic() + 3, probe) is True and not probe.sent and got == []
    mine.recv()
    # nothing from the peer: the wait ends at its end and the probe saw the answer meanwhile
    probe = WireProbe("127.0.0.1", port)
    t0 = time.monotonic()
    assert wait_for(mine, t0 + 0.3, probe) is False
    assert probe.answered and 0.25 < time.monotonic() - t0 < 0.6


def test_code_tables_and_messages() -> None:
    assert ipmi_codes.describe_completion(0xC1) == "completion code 0xc1 (invalid command)"
    assert ipmi_codes.describe_completion(0xD4) == "completion code 0xd4 (insufficient privilege level)"
    assert ipmi_codes.completion_kind(0xC0) == "busy" and ipmi_codes.completion_kind(0xD4) == "error"
    assert ipmi_codes.rmcp_kind(0x0D) == "auth" and ipmi_codes.rmcp_kind(0x01) == "busy"
    spec = BmcSpec("ipmi", "127.0.0.1", 623, "admin", "pw-secret-1")
    probe = WireProbe("127.0.0.1", free_udp_port())
    probe.settle(time.monotonic() + 1)
    # the wire outranks what pyghmi said
    err = ipmi_codes.worker_error("timeout", spec, "no answer", "get_power", 1.0, probe)
    assert isinstance(err, BmcUnreachable) and err.message == "BMC 127.0.0.1:623: port unreachable (ICMP)"
    quiet = WireProbe("127.0.0.1", 9, start_at=time.monotonic() + 60)
    err = ipmi_codes.worker_error("timeout", spec, "no answer", "get_power", 4.73, quiet)
    assert isinstance(err, BmcTimeout) and err.message == "BMC 127.0.0.1:623: no answer within 4.7s"
    quiet.answered = True
    err = ipmi_codes.worker_error("timeout", spec, "no answer", "get_power", 2.0, quiet)
    assert "no answer within 2.0s to the power status" in err.message
    err = ipmi_codes.worker_error("auth", spec, "Incorrect password provided", "ping", 0.1, quiet)
    assert isinstance(err, BmcAuthError) and err.message.startswith("BMC 127.0.0.1:623: user or password refused")
    err = ipmi_codes.worker_error("error", spec, ipmi_codes.describe_completion(0xD4), "set_power", 0.1, quiet)
    assert isinstance(err, BmcError) and err.code == "bmc_error"
    assert err.message == "BMC 127.0.0.1:623: power change failed: completion code 0xd4 (insufficient privilege level)"
    assert all("pw-secret-1" not in str(e.to_dict()) for e in (err,))
    quiet.close()
