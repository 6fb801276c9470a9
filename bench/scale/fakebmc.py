"""Many IPMI 2.0 BMCs in one process: pyghmi's BMC server (RMCP+ over UDP), one socket each.

    python -m bench.scale.fakebmc COUNT PASSWORD_FILE PORTS_OUT LOG_OUT

10,000 ``ipmi_sim`` processes do not fit this machine (bench/power: ~1-2 MiB
RSS and a process each); ``pyghmi.ipmi.bmc.Bmc`` (what virtualbmc builds on)
speaks the same RMCP+ a real BMC does (Get Channel Authentication
Capabilities, Open Session, RAKP 1-4, Get Chassis Status, Close Session) and
all its sockets are served by one event loop, so COUNT BMCs cost one process.
It is a responder, not a simulator: chassis power is always "on".

What it records, per BMC, with ``time.time()`` (the controller's clock, same
machine): the first packet of each contact (the session-less capability
query every login starts with) and each answered chassis status. A call is
"in flight" from its first packet to its answer: seen from the BMCs' side,
so the figure holds whatever the controller's scheduler looks like.
PORTS_OUT is written once every socket is bound (one port a line); LOG_OUT on
SIGTERM, as JSON ``{"first": {port: [t...]}, "status": {port: [t...]}}``.
The password is read from a file, never taken from the command line.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import pyghmi.ipmi.bmc as bmc
import pyghmi.ipmi.private.serversession as serversession
import pyghmi.ipmi.private.session as ipmisession

# pyghmi 1.6.19 hands a session-less packet (a capability query: prov's probe, a client's retry) that
# reaches a socket with a live server session to ServerSession.sessionless_data, which does not exist
# (AttributeError ends the loop: the first full run lost every responder). Give it to the BMC, as a
# packet with no session would be.
serversession.ServerSession.sessionless_data = (  # type: ignore[attr-defined]
    lambda self, data, sockaddr: self.bmc.sessionless_data(data, sockaddr))
ERRORS = [0]

FIRST: dict[int, list[float]] = defaultdict(list)
STATUS: dict[int, list[float]] = defaultdict(list)


class CountingBmc(bmc.Bmc):
    def __init__(self, authdata: dict[str, str]) -> None:
        super().__init__(authdata, port=0, address="127.0.0.1")
        self.port = int(self.serversocket.getsockname()[1])

    def send_auth_cap(self, *args: object, **kw: object) -> object:  # every login's first packet
        FIRST[self.port].append(time.time())
        return super().send_auth_cap(*args, **kw)

    def get_power_state(self) -> str:
        STATUS[self.port].append(time.time())
        return "on"

    def get_boot_device(self) -> str:
        return "default"

    def set_boot_device(self, bootdevice: object) -> None:
        return None

    def power_on(self) -> None:
        return None

    def power_off(self) -> None:
        return None


def main() -> int:
    count, pw_file, ports_out, log_out = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
    authdata = {"admin": pw_file.read_text().strip()}
    bmcs = [CountingBmc(authdata) for _ in range(count)]
    tmp = ports_out.with_suffix(".tmp")
    tmp.write_text("".join(f"{b.port}\n" for b in bmcs))
    tmp.rename(ports_out)
    done = threading.Event()

    def dump(_sig: int, _frame: object) -> None:
        log_out.write_text(json.dumps({"first": FIRST, "status": STATUS, "errors": ERRORS[0]}))
        done.set()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, dump)
    while not done.is_set():
        try:
            ipmisession.Session.wait_for_rsp(1)
        except (AttributeError, KeyError, IndexError, ValueError, OSError):
            ERRORS[0] += 1  # one bad packet must not silence every BMC of this process
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
