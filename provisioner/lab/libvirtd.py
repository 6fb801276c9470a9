"""A private, real libvirtd for tests, benches and the lab (no systemd needed).

``start_libvirtd(base_dir)`` creates a network namespace ``prov-virt-<id>`` and
runs, inside it, a small supervisor (this module's ``__main__``) that

* bind-mounts directories under ``base_dir`` over ``/etc/libvirt``, ``/run/libvirt``,
  ``/var/lib/libvirt`` and ``/var/log/libvirt`` (in its own mount namespace, so the
  machine's libvirt state is never touched and two instances can run side by side),
* writes a minimal configuration (root QEMU, no security driver, no cgroups,
  because the namespace has a fresh ``/sys`` without the cgroup v1 mounts),
* becomes a child subreaper (``PR_SET_CHILD_SUBREAPER``) and runs ``virtlogd``
  and ``libvirtd`` in the foreground, reaping QEMU/dnsmasq promptly: PID 1 on
  these machines reaps only about once a second, which makes
  ``virDomainDestroy`` take 1-2 s instead of ~0.2 s (docs/field-notes.md, "libvirtd without systemd").

Clients connect from outside through the socket:
``qemu+unix:///system?socket=<base>/run/libvirt-sock``. ``stop()`` ends the
supervisor (which stops its children), deletes the namespace and leaves
``base_dir`` for the caller to remove. The QEMU capability cache is kept under
``/var/cache/prov-test/libvirt-cache`` (libvirt revalidates it against the QEMU
binary), so the first start costs ~10 s and later ones ~1 s.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

CACHE_DIR = Path("/var/cache/prov-test/libvirt-cache")
# prctl(2): PR_SET_CHILD_SUBREAPER
_PR_SET_CHILD_SUBREAPER = 36

_LIBVIRTD_CONF = """\
# written by provisioner.lab.libvirtd
unix_sock_group = "root"
unix_sock_ro_perms = "0777"
unix_sock_rw_perms = "0770"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:file:{log}"
max_workers = 8
"""

_QEMU_CONF = """\
# written by provisioner.lab.libvirtd
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
# the network namespace has a fresh /sys without cgroup mounts
cgroup_controllers = [ ]
stdio_handler = "logd"
"""

_VIRTLOGD_CONF = """\
log_outputs = "3:file:{log}"
"""


@dataclass
class LibvirtdHandle:
    base: Path
    netns: str | None
    proc: subprocess.Popen[bytes]

    @property
    def socket(self) -> Path:
        return self.base / "run" / "libvirt-sock"

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.socket}"

    @property
    def console_dir(self) -> Path:
        """Where guests' serial logs go: a path that means the same inside and outside the namespace."""
        return self.base / "consoles"

    @property
    def pool_dir(self) -> Path:
        return self.base / "pool"

    def exec_prefix(self) -> list[str]:
        """Prefix to run a command inside the namespace (e.g. ``ip addr``)."""
        return ["ip", "netns", "exec", self.netns] if self.netns else []

    def log_tail(self, n: int = 40) -> str:
        parts = []
        for name in ("supervisor.log", "libvirtd.log", "virtlogd.log"):
            p = self.base / "log" / name
            if p.exists():
                parts.append(f"--- {name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-n:]))
        return "\n".join(parts)


def _virsh_ok(uri: str) -> bool:
    proc = subprocess.run(["virsh", "-q", "-c", uri, "version"], capture_output=True, timeout=20, check=False)
    return proc.returncode == 0


def start_libvirtd(base: Path, *, netns: bool = True, timeout: float = 90.0) -> LibvirtdHandle:
    """Start a private libvirtd under ``base`` and wait until ``virsh version`` answers."""
    for tool in ("libvirtd", "virtlogd", "virsh", "ip"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not installed")
    base.mkdir(parents=True, exist_ok=True)
    for d in ("etc", "run", "lib", "log", "consoles", "pool"):
        (base / d).mkdir(exist_ok=True)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    ns = None
    prefix: list[str] = []
    if netns:
        ns = f"prov-virt-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True, capture_output=True)
        prefix = ["ip", "netns", "exec", ns]
    else:
        prefix = ["unshare", "--mount", "--propagation", "private"]
    log = open(base / "log" / "supervisor.log", "ab")  # noqa: SIM115 - handed to the child
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.Popen(
        [*prefix, sys.executable, "-m", "provisioner.lab.libvirtd", str(base)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
    )
    log.close()
    handle = LibvirtdHandle(base=base, netns=ns, proc=proc)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = handle.log_tail()
            stop_libvirtd(handle)
            raise RuntimeError(f"libvirtd supervisor exited with {proc.returncode}\n{tail}")
        if handle.socket.exists() and _virsh_ok(handle.uri):
            return handle
        time.sleep(0.2)
    tail = handle.log_tail()
    stop_libvirtd(handle)
    raise RuntimeError(f"libvirtd did not answer within {timeout}s\n{tail}")


def stop_libvirtd(handle: LibvirtdHandle, timeout: float = 20.0) -> None:
    """Stop the supervisor (it destroys its children), then delete the namespace."""
    if handle.proc.poll() is None:
        handle.proc.send_signal(signal.SIGTERM)
        try:
            handle.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(handle.proc.pid, signal.SIGKILL)
            handle.proc.wait(5)
    if handle.netns:
        # Any process still in the namespace (a stray dnsmasq) would keep it alive.
        pids = subprocess.run(["ip", "netns", "pids", handle.netns], capture_output=True, text=True, check=False)
        for pid in pids.stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "delete", handle.netns], capture_output=True, check=False)


# --------------------------------------------------------------------------- the supervisor (inside the namespace)


def _bind(src: Path, dst: str) -> None:
    Path(dst).mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "--bind", str(src), dst], check=True)


def _supervise(base: Path) -> int:
    # Our own view of the libvirt directories; mounts made here stay in this mount namespace.
    subprocess.run(["mount", "--make-rprivate", "/"], check=False)
    etc, run, lib, log = base / "etc", base / "run", base / "lib", base / "log"
    (etc / "qemu" / "networks").mkdir(parents=True, exist_ok=True)
    (etc / "nwfilter").mkdir(exist_ok=True)
    (etc / "storage").mkdir(exist_ok=True)
    (etc / "libvirtd.conf").write_text(_LIBVIRTD_CONF.format(log=log / "libvirtd.log"))
    (etc / "qemu.conf").write_text(_QEMU_CONF)
    (etc / "virtlogd.conf").write_text(_VIRTLOGD_CONF.format(log=log / "virtlogd.log"))
    (etc / "libvirt.conf").write_text("")
    for sub in ("qemu/nvram", "dnsmasq", "network", "images"):
        (lib / sub).mkdir(parents=True, exist_ok=True)
    (log / "qemu").mkdir(exist_ok=True)
    _bind(etc, "/etc/libvirt")
    _bind(run, "/run/libvirt")
    _bind(lib, "/var/lib/libvirt")
    _bind(log, "/var/log/libvirt")
    _bind(CACHE_DIR, "/var/cache/libvirt")

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    children: dict[int, str] = {}
    virtlogd = subprocess.Popen(["virtlogd", "-p", str(run / "virtlogd.pid")])
    children[virtlogd.pid] = "virtlogd"
    time.sleep(0.1)
    libvirtd = subprocess.Popen(["libvirtd", "-f", "/etc/libvirt/libvirtd.conf", "-p", str(run / "libvirtd.pid")])
    children[libvirtd.pid] = "libvirtd"

    class _Stop(Exception):
        pass

    def _term(_sig: int, _frm: object) -> None:
        # Raising interrupts the blocking waitpid (PEP 475 would otherwise retry it).
        raise _Stop

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    rc = 0
    try:
        while True:
            try:
                pid, status = os.waitpid(-1, 0)  # reaps QEMU, dnsmasq, ... (we are their subreaper)
            except ChildProcessError:
                break
            if pid in children:
                print(f"{children[pid]} exited with status {status}", flush=True)
                rc = 1
                break
    except _Stop:
        pass
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Stop: libvirtd first (it leaves QEMU running by design), then every remaining descendant.
    for proc in (libvirtd, virtlogd):
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + 10
    for proc in (libvirtd, virtlogd):
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.1, deadline - time.monotonic()))
    _kill_descendants()
    return rc


def _kill_descendants() -> None:
    """SIGKILL whatever we adopted as subreaper (QEMU, dnsmasq) and reap it."""
    me = os.getpid()
    for _ in range(50):
        kids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == me:
                    kids.append(int(stat.parent.name))
        if not kids:
            return
        for pid in kids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass


if __name__ == "__main__":
    sys.exit(_supervise(Path(sys.argv[1])))
