"""bench/abuse's load generators: the API clients, the /healthz poller, the TFTP flood, a real TFTP client.

The API clients and the poller run as child processes of bench/abuse
(``python -m bench.abuse_load api|healthz CONFIG OUT``) so that neither the
200 clients' event loop nor the flood delays the poller's measurements; each
reads its settings (and the API token: never on a command line) from a 0600
JSON file and writes its figures to OUT as JSON. The TFTP flood and the real
TFTP client are threads of bench/abuse itself (they spend their time in the
kernel and in curl). Every loop is bounded by a deadline and every request by
a timeout; all traffic stays on 127.0.0.0/8.

Source addresses: the legitimate clients (poller, real TFTP client, the
installers) come from 127.0.0.1; the abusive ones (the TFTP flood, anonymous
boot-script fetchers) from 127.0.0.2-127.0.0.251, so per-address caps and rate
limits may refuse them (429 / TFTP errors, counted apart from 5xx) without
touching the legitimate ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import resource
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.abuse_http import ConnError, RawHttp, Reply

FLOOD_ADDRESSES = [f"127.0.0.{i}" for i in range(2, 251)]  # spread: a few transfers each
FLOOD_SINGLE = "127.0.0.251"  # one address holding many sockets: the per-client cap's case


def flood_address(i: int, single: int) -> str:
    return FLOOD_SINGLE if i < single else FLOOD_ADDRESSES[i % len(FLOOD_ADDRESSES)]


# --------------------------------------------------------------------------- API clients (child process)
def _bmc_verdict(resp: Reply) -> bool:
    """A 502/504 that names a BMC error: the BMC's answer passed on, not the controller failing."""
    try:
        code = str(resp.json().get("error", ""))
    except (ValueError, AttributeError):
        return False
    return code.startswith("bmc_") or code == "operator_action"


@dataclass
class Tally:
    """Per-route status counts and latencies (ms) of one client process."""

    status: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    def add(self, route: str, status: str, ms: float, error: str = "") -> None:
        self.status[route][status] += 1
        self.latency[route].append(round(ms, 2))
        if error:
            self.errors[route][error] += 1

    def to_json(self) -> dict[str, Any]:
        return {"status": {k: dict(v) for k, v in self.status.items()},
                "latency": dict(self.latency), "errors": {k: dict(v) for k, v in self.errors.items()}}


async def _request(client: RawHttp, tally: Tally, route: str, method: str, path: str,
                   params: dict[str, Any] | None = None, json_body: Any = None) -> Reply | None:
    t0 = time.perf_counter()
    try:
        resp = await client.request(method, path, params=params, json_body=json_body)
    except TimeoutError:
        tally.add(route, "timeout", (time.perf_counter() - t0) * 1000)
        return None
    except ConnError as exc:
        tally.add(route, "conn-error", (time.perf_counter() - t0) * 1000, f"connection: {exc}")
        return None
    ms = (time.perf_counter() - t0) * 1000
    status = str(resp.status_code)
    error = ""
    if resp.status_code >= 500 and _bmc_verdict(resp):
        status = f"{resp.status_code}-bmc"
    elif resp.status_code >= 400:
        try:
            error = str(resp.json().get("error", ""))
        except (ValueError, AttributeError):
            error = resp.text[:60]
    tally.add(route, status, ms, error)
    return resp


async def _mixed_client(i: int, cfg: dict[str, Any], client: RawHttp, tally: Tally, deadline: float) -> None:
    """80 % reads (host page, one host), 20 % writes (PATCH a host's roles; create/patch/delete a rack)."""
    rng = random.Random(cfg["seed"] * 1000 + i)
    spare, everyone = cfg["spare_hosts"], cfg["read_hosts"]
    n = 0
    while time.monotonic() < deadline:
        n += 1
        r = rng.random()
        if r < 0.40:
            await _request(client, tally, "GET /hosts?limit=50", "GET", "/api/v1/hosts",
                           params={"limit": 50, "offset": rng.randrange(0, max(1, len(everyone) - 50))})
        elif r < 0.80:
            await _request(client, tally, "GET /hosts/{h}", "GET", f"/api/v1/hosts/{rng.choice(everyone)}")
        elif r < 0.90:
            await _request(client, tally, "PATCH /hosts/{h}", "PATCH", f"/api/v1/hosts/{rng.choice(spare)}",
                           json_body={"roles": ["bench", f"r{rng.randrange(10)}"]})
        else:
            rack = f"abuse-{i}-{n}"
            resp = await _request(client, tally, "POST /racks", "POST", "/api/v1/racks",
                                  json_body={"name": rack, "size_u": 42})
            if resp is not None and resp.status_code in (200, 201):
                await _request(client, tally, "PATCH /racks/{r}", "PATCH", f"/api/v1/racks/{rack}",
                               json_body={"site": "abuse"})
                await _request(client, tally, "DELETE /racks/{r}", "DELETE", f"/api/v1/racks/{rack}")


async def _power_client(i: int, cfg: dict[str, Any], client: RawHttp, tally: Tally, deadline: float) -> None:
    """Power status of dead (closed port) and slow (silent) BMCs, one after another."""
    rng = random.Random(cfg["seed"] * 7000 + i)
    while time.monotonic() < deadline:
        kind, name = rng.choice(cfg["dead_hosts"])
        await _request(client, tally, f"GET /hosts/{{h}}/power ({kind})", "GET", f"/api/v1/hosts/{name}/power")


async def _anon_client(i: int, cfg: dict[str, Any], client: RawHttp, tally: Tally, deadline: float) -> None:
    """An unauthenticated neighbour on the provisioning network: boot scripts and install routes, no pause."""
    rng = random.Random(cfg["seed"] * 9000 + i)
    while time.monotonic() < deadline:
        r = rng.random()
        if r < 0.5:
            mac = "52:54:00:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(3))
            await _request(client, tally, "GET /boot/ipxe/{mac} (anon)", "GET", f"/boot/ipxe/{mac}")
        elif r < 0.7:
            await _request(client, tally, "GET /boot/boot.ipxe (anon)", "GET", "/boot/boot.ipxe")
        else:
            tok = f"{rng.randrange(1, 10**6)}.{os.urandom(16).hex()}"
            await _request(client, tally, "GET /install/v1/{tok}/config (anon)", "GET",
                           f"/install/v1/{tok}/config")


async def _run_api(cfg: dict[str, Any]) -> dict[str, Any]:
    """Every simulated client owns one connection (bench/abuse_http.py): nothing shared, nothing scanned."""
    tally = Tally()
    deadline = time.monotonic() + cfg["seconds"]
    auth = {"Authorization": f"Bearer {cfg['token']}"}
    clients: list[RawHttp] = []
    jobs = []
    for i in range(cfg["clients"]):
        client = RawHttp(cfg["url"], headers=auth, timeout=cfg["timeout"])
        fn = _power_client if i < cfg["power_clients"] else _mixed_client
        clients.append(client)
        jobs.append(asyncio.create_task(fn(i, cfg, client, tally, deadline)))
    for i in range(cfg["anon_clients"]):
        client = RawHttp(cfg["url"], local_address=flood_address(i, 0), timeout=cfg["timeout"])
        clients.append(client)
        jobs.append(asyncio.create_task(_anon_client(i, cfg, client, tally, deadline)))
    # at the deadline, requests still waiting (on a slow BMC, mostly) are abandoned, not counted
    done, pending = await asyncio.wait(jobs, timeout=cfg["seconds"] + cfg["grace"])
    for job in pending:
        job.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for client in clients:
        await client.close()
    crashed = [repr(j.exception()) for j in done if not j.cancelled() and j.exception() is not None]
    usage = resource.getrusage(resource.RUSAGE_SELF)  # the whole process: it runs only this phase
    return {**tally.to_json(), "abandoned": len(pending), "crashed": crashed[:5],
            "cpu_s": usage.ru_utime + usage.ru_stime}


# --------------------------------------------------------------------------- /healthz poller (child process)
def _run_healthz(cfg: dict[str, Any]) -> dict[str, Any]:
    """GET /healthz every ``interval`` s from 127.0.0.1 on a fresh connection, until the stop file appears."""
    with contextlib.suppress(OSError):
        os.nice(-5)  # the measuring process must not be the one that waits for a core
    stop = Path(cfg["stop_file"])
    end = time.monotonic() + cfg["max_seconds"]
    samples: list[tuple[float, float, str]] = []
    limits = httpx.Limits(max_keepalive_connections=0)  # a new TCP connection per poll, like a load balancer
    with httpx.Client(base_url=cfg["url"], limits=limits, timeout=cfg["timeout"]) as client:
        nxt = time.monotonic()
        while time.monotonic() < end and not stop.exists():
            t0 = time.monotonic()
            try:
                status = str(client.get("/healthz").status_code)
            except httpx.TimeoutException:
                status = "timeout"
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            samples.append((t0, (time.monotonic() - t0) * 1000, status))
            nxt = max(nxt + cfg["interval"], time.monotonic())  # missed slots are skipped, not queued
            time.sleep(max(0.0, nxt - time.monotonic()))
    return {"samples": samples}


# --------------------------------------------------------------------------- TFTP flood (thread)
def rrq(name: str, options: dict[str, str] | None = None) -> bytes:
    body = name.encode() + b"\0octet\0"
    for k, v in (options or {}).items():
        body += k.encode() + b"\0" + v.encode() + b"\0"
    return struct.pack("!H", 1) + body


class TftpFlood:
    """``n`` UDP sockets that each send one RRQ per wave and never acknowledge anything.

    They do read what comes back (reading sends nothing) to count the server's answers.
    """

    def __init__(self, port: int, n: int, single: int, seed: int) -> None:
        self.port, self.n, self.single = port, n, single
        self.rng = random.Random(seed)
        self.socks: list[socket.socket] = []
        self.sent = 0
        self.answers: Counter[str] = Counter()

    def open(self) -> None:
        for i in range(self.n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((flood_address(i, self.single), 0))
            s.setblocking(False)
            self.socks.append(s)

    def _packet(self, i: int) -> bytes:
        kind = i % 4
        if kind == 0:  # the attacker's favourite: the longest timeout, big blocks
            return rrq("undionly.kpxe", {"timeout": "255", "blksize": "1468"})
        if kind == 1:
            return rrq("undionly.kpxe")
        if kind == 2:
            return rrq("ipxe.efi", {"tsize": "0", "blksize": "1468"})
        mac = "-".join(f"{self.rng.randrange(256):02x}" for _ in range(3))
        return rrq(f"pxelinux.cfg/01-52-54-00-{mac}")  # the per-MAC hook: a database read each

    def wave(self) -> None:
        for i, s in enumerate(self.socks):
            try:
                s.sendto(self._packet(i), ("127.0.0.1", self.port))
                self.sent += 1
            except OSError:
                self.answers["send-failed"] += 1

    def drain(self) -> None:
        for s in self.socks:
            for _ in range(64):  # bounded: a socket's buffer, at most
                try:
                    data = s.recv(2048)
                except (BlockingIOError, OSError):
                    break
                op = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 0
                if op == 5:
                    text = data[4:].split(b"\0")[0].decode(errors="replace")[:40]
                    self.answers[f"ERROR {text}"] += 1
                else:
                    self.answers[{3: "DATA", 6: "OACK"}.get(op, f"op{op}")] += 1

    def run(self, stop: threading.Event, interval: float) -> None:
        while not stop.is_set():
            self.wave()
            stop.wait(interval)
            self.drain()

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.socks.clear()


# --------------------------------------------------------------------------- real TFTP client (thread)
def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class TftpFetch:
    t: float
    ok: bool
    seconds: float
    detail: str = ""


def tftp_client_loop(port: int, want_sha: str, out: Path, stop: threading.Event, every: float,
                     results: list[TftpFetch]) -> None:
    """curl fetches undionly.kpxe from 127.0.0.1 every ``every`` s; each must match the file's sha256."""
    while not stop.is_set():
        t0 = time.monotonic()
        out.unlink(missing_ok=True)
        try:
            res = subprocess.run(["curl", "-sS", "--max-time", "15", "--tftp-blksize", "1468", "-o", str(out),
                                  f"tftp://127.0.0.1:{port}/undionly.kpxe"],
                                 capture_output=True, text=True, timeout=20, check=False)
            dt = time.monotonic() - t0
            if res.returncode != 0:
                results.append(TftpFetch(t0, False, dt, res.stderr.strip()[-120:]))
            elif sha256(out) != want_sha:
                results.append(TftpFetch(t0, False, dt, "sha256 mismatch"))
            else:
                results.append(TftpFetch(t0, True, dt))
        except subprocess.TimeoutExpired:
            results.append(TftpFetch(t0, False, time.monotonic() - t0, "curl did not finish in 20 s"))
        stop.wait(max(0.0, every - (time.monotonic() - t0)))


# --------------------------------------------------------------------------- entry point of the children
def main(argv: list[str]) -> int:
    role, config, out = argv[0], Path(argv[1]), Path(argv[2])
    cfg = json.loads(config.read_text())
    if role == "api":
        result = asyncio.run(_run_api(cfg))
    elif role == "healthz":
        result = _run_healthz(cfg)
    else:
        raise SystemExit(f"unknown role {role}")
    out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
