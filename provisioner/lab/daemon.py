"""The lab daemon: the lab's long-running part, its own process group, and how the lab starts and stops it.

``python -m provisioner.lab.daemon daemon LAB_DIR`` runs prov's own dnsmasq
(``drivers/boot/dhcp.py``: DHCP with a reservation per MAC, iPXE handed the
controller's boot script URL), a TCP forwarder from the bridge address to the
controller, apt-cacher-ng on the bridge address, and one ipmi_sim BMC per
guest (``provisioner.lab.bmc``); SIGTERM stops all of it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from urllib.parse import urlsplit

from provisioner.errors import LabError
from provisioner.lab import bmc as labbmc
from provisioner.lab.spec import LabSpec, LabState

log = logging.getLogger("provisioner.lab")

BMC_USER = "admin"
_READY = "daemon.ready"


# Writes each guest's BMC config (passwords in files, never on a command line), starts the daemon in
# its own session and waits for its ready file; every step is recorded in state.json as it is made.
def start_daemon(spec: LabSpec, lab_dir: Path, state: LabState) -> None:
    bmcs = []
    for i in range(spec.hosts):
        cfg = labbmc.BmcConfig(name=spec.host_name(i), port=labbmc.free_udp_port(), username=BMC_USER,
                               password=labbmc.new_password(), uri=spec.uri,
                               state_dir=str(lab_dir / "bmc" / spec.host_name(i)))
        labbmc.write_config(cfg)
        bmcs.append(asdict(cfg))
    state.data["bmcs"] = bmcs
    state.save()
    (lab_dir / _READY).unlink(missing_ok=True)
    logf = (lab_dir / "daemon.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "provisioner.lab.daemon", "daemon", str(lab_dir)],
                            stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                            start_new_session=True, close_fds=True)
    logf.close()
    state.data["made"]["daemon_pid"] = proc.pid
    state.save()
    deadline = time.monotonic() + 60
    while not (lab_dir / _READY).exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = (lab_dir / "daemon.log").read_text(errors="replace")[-1500:]
            raise LabError(reason=f"the lab daemon did not come up: {tail}")
        time.sleep(0.2)


def stop_daemon(pid: int | None, timeout: float = 15.0) -> None:
    if not pid:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(int(pid), signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(int(pid), 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(int(pid), os.WNOHANG)
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(int(pid), signal.SIGKILL)


class Forwarder:
    """TCP relay ``listen`` -> ``target``: guests reach a controller that listens on loopback."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self.sock = socket.create_server(listen, reuse_port=False)
        self.stop = threading.Event()

    def serve(self) -> None:
        self.sock.settimeout(0.5)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(conn,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        client.settimeout(None)
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, upstream)
        sel.register(upstream, selectors.EVENT_READ, client)
        try:
            open_ends = 2
            while open_ends and not self.stop.is_set():
                for key, _ in sel.select(timeout=1.0):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    dst: socket.socket = key.data
                    data = src.recv(1 << 20)
                    if not data:
                        sel.unregister(src)
                        with contextlib.suppress(OSError):
                            dst.shutdown(socket.SHUT_WR)
                        open_ends -= 1
                        continue
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            sel.close()
            client.close()
            upstream.close()


def _acng_config(spec: LabSpec, conf: Path) -> None:
    cache = Path(spec.acng_cache)
    cache.mkdir(parents=True, exist_ok=True)
    conf.mkdir(parents=True, exist_ok=True)
    from provisioner.render import render

    (conf / "acng.conf").write_text(render("lab/acng.conf.j2", {
        "cache_dir": str(cache), "log_dir": str(conf), "port": spec.acng_port, "bind": spec.gateway,
        "pid_file": str(conf / "acng.pid"), "socket": str(conf / "acng.sock"),
    }))


def daemon(lab_dir: Path) -> int:
    """The lab's long-running part: dnsmasq, forwarder, apt-cacher-ng and the BMCs; SIGTERM stops all."""
    from provisioner.drivers.boot.dhcp import DhcpConfig, DnsmasqManager, HostEntry

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    state = LabState(lab_dir)
    spec = state.spec
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    children: list[subprocess.Popen[bytes]] = []
    manager: DnsmasqManager | None = None
    fwd: Forwarder | None = None
    try:
        net = spec.network
        cfg = DhcpConfig(interface=spec.bridge, server_ip=spec.gateway, http_base=spec.guest_url,
                         state_dir=lab_dir / "dnsmasq", mode="full",
                         range_start=str(net.network_address + 100), range_end=str(net.network_address + 199),
                         netmask=str(net.netmask), lease_time="1h")
        manager = DnsmasqManager(cfg)
        manager.write_config()
        # Every lab MAC has a reservation and gets boot information; whether a
        # boot installs is decided by the controller's per-MAC script (netboot + state).
        manager.sync([HostEntry(mac=spec.host_mac(i), hostname=spec.host_name(i), ip=spec.host_ip(i), netboot=True)
                      for i in range(spec.hosts)])
        manager.start()
        target = urlsplit(spec.controller_url)
        try:
            fwd = Forwarder((spec.gateway, spec.port), (target.hostname or "127.0.0.1", target.port or 80))
            threading.Thread(target=fwd.serve, name="lab-forwarder", daemon=True).start()
        except OSError as exc:
            # The controller itself listens on the bridge address (e.g. 0.0.0.0): nothing to forward.
            log.info("forwarder not started (%s): the controller is expected on %s", exc, spec.guest_url)
        conf = lab_dir / "acng"
        _acng_config(spec, conf)
        acng_err = (conf / "stderr.log").open("ab")
        children.append(subprocess.Popen(["apt-cacher-ng", "-c", str(conf), "ForeGround=1"],
                                         stdout=subprocess.DEVNULL, stderr=acng_err))
        for b in state.bmcs():
            err = (b.dir / "ipmi_sim.log").open("ab")
            children.append(subprocess.Popen(labbmc.command(b), stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                             cwd=b.dir))
        for b in state.bmcs():
            labbmc.wait_ready(b)
        _wait_tcp(spec.gateway, spec.acng_port, 15, "apt-cacher-ng")
        (lab_dir / _READY).write_text(str(os.getpid()))
        log.info("lab daemon ready: %d BMC(s), dnsmasq pid %s", len(children) - 1, manager.pid)
        while not stop.wait(1.0):
            for c in children:
                if c.poll() is not None:
                    log.error("lab child %s exited with %s", c.args[0] if isinstance(c.args, list) else c.args,
                              c.returncode)
                    children.remove(c)
                    break
        return 0
    except Exception:
        log.exception("lab daemon failed")
        return 1
    finally:
        if fwd is not None:
            fwd.stop.set()
            fwd.sock.close()
        for c in children:
            with contextlib.suppress(OSError):
                c.terminate()
        for c in children:
            try:
                c.wait(5)
            except subprocess.TimeoutExpired:
                c.kill()
        if manager is not None:
            with contextlib.suppress(Exception):
                manager.stop()


def _wait_tcp(host: str, port: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        time.sleep(0.2)
    raise LabError(reason=f"{what} did not listen on {host}:{port} within {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 2 and args[0] == "daemon":
        return daemon(Path(args[1]))
    sys.stderr.write("usage: python -m provisioner.lab.daemon daemon LAB_DIR\n")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
