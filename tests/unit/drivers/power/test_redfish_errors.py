"""Redfish errors classified from what happened on the wire, against real loopback peers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from provisioner.drivers.power.base import BmcSpec
from provisioner.drivers.power.redfish import RedfishPower
from provisioner.errors import BmcAuthError, BmcBusy, BmcTimeout, BmcUnreachable, ProvError
from tests.support.power import free_tcp_port

PASSWORD = "pw-secret-rf-1"


def driver(port: int, *, scheme: str = "http", timeout: float = 2.0) -> RedfishPower:
    return RedfishPower(BmcSpec("redfish", "127.0.0.1", port, "admin", PASSWORD, options={"scheme": scheme},
                                timeout=timeout))


@pytest.fixture
def http_status() -> Iterator[tuple[int, list[int], list[int]]]:
    """A web server answering every request with the status in ``box[0]`` (and counting requests)."""
    box = [401]
    hits: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(box[0])
            body = b'{"error": {"code": "Base.1.0.GeneralError", "message": "no"}}'
            self.send_response(box[0])
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield server.server_address[1], box, hits  # type: ignore[misc]
    finally:
        server.shutdown()
        server.server_close()


def test_closed_port_is_refused_at_once() -> None:
    t0 = time.monotonic()
    with pytest.raises(BmcUnreachable) as err:
        driver(free_tcp_port()).get_power_state()
    assert time.monotonic() - t0 < 1.0  # sushy alone retries a refused connect 3 times, 2 s apart
    assert err.value.message.endswith(": connection refused (TCP)") and PASSWORD not in str(err.value.to_dict())


def test_accepting_but_silent_peer_times_out_within_the_bound() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        t0 = time.monotonic()
        with pytest.raises(BmcTimeout) as err:
            driver(s.getsockname()[1], timeout=1.0).get_power_state()
        assert time.monotonic() - t0 < 1.5
        assert err.value.message == f"BMC 127.0.0.1:{s.getsockname()[1]}: no answer within 1.0s"


def test_http_statuses(http_status: tuple[int, list[int], list[int]]) -> None:
    port, box, hits = http_status
    with pytest.raises(BmcAuthError) as err:
        driver(port).get_power_state()
    assert err.value.message == f"BMC 127.0.0.1:{port}: user or password refused (HTTP 401)"
    box[0] = 403
    with pytest.raises(BmcAuthError, match="access refused"):
        driver(port).get_power_state()
    box[0] = 503
    with pytest.raises(BmcBusy):
        driver(port).get_power_state()
    assert hits.count(503) == 1  # no hidden retries by sushy: the power service owns them


def test_https_to_a_plain_http_server_names_tls(http_status: tuple[int, list[int], list[int]]) -> None:
    port, _box, _hits = http_status
    with pytest.raises(BmcUnreachable, match="TLS handshake failed") as err:
        driver(port, scheme="https").get_power_state()
    assert isinstance(err.value, ProvError) and PASSWORD not in err.value.message
