"""A pristine Debian 12 machine for one test: a debootstrap minbase root in its own namespaces.

Only two things are cached, both downloads and never an installed result:

* the minbase tarball (``debootstrap --variant=minbase bookworm``, as a
  fresh Debian 12 machine starts), rebuilt when older than ``MINBASE_MAX_AGE``;
* downloaded ``.deb`` files and pip's download/wheel cache, bind-mounted over
  the root's ``/var/cache/apt/archives`` and ``$PIP_CACHE_DIR``.

The root is a tmpfs in new mount, PID, UTS, IPC and network namespaces
(``unshare``; PID 1 is ``sleep infinity`` chrooted into it, so killing it ends
every process of the machine and frees the root). Its network has only loopback: the way out is
tests/fresh/egress.py's proxy, which the root's apt and pip are configured to
use exactly as a machine behind an HTTP proxy is (``Acquire::http::Proxy``,
``https_proxy``). This machine's own apt sources, the apt options they need and
its CA certificates are copied in, as a fresh machine of this kind has them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from provisioner.lab.ramdisk import locked
from tests.fresh.egress import Proxy

CACHE = Path(os.environ.get("PROV_FRESH_CACHE", "/var/cache/prov-test/fresh"))
MINBASE_MAX_AGE = 30 * 86400  # seconds; a month-old minbase still upgrades cheaply
RELEASE = "bookworm"
PROXY_PORT = 3128
EGRESS = Path(__file__).with_name("egress.py")
# What the root's shell sees: a login environment plus the proxy, nothing of this test process.
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "http_proxy": f"http://127.0.0.1:{PROXY_PORT}",
    "https_proxy": f"http://127.0.0.1:{PROXY_PORT}",
    "no_proxy": "127.0.0.1,localhost",
    # pip's own certificate bundle does not know this machine's TLS proxy; the system one does.
    "PIP_CERT": "/etc/ssl/certs/ca-certificates.crt",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "PIP_CACHE_DIR": "/var/cache/prov-fresh-pip",
}


def _mirror() -> str:
    """This machine's Debian mirror (the first deb URI of its apt sources)."""
    for src in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for line in src.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    legacy = Path("/etc/apt/sources.list")
    for line in legacy.read_text().splitlines() if legacy.exists() else []:
        if line.startswith("deb ") and "security" not in line:
            return line.split()[1]
    return "http://deb.debian.org/debian"


def minbase_tarball() -> Path:
    """The cached ``debootstrap --variant=minbase bookworm`` tree, as a tarball (built when missing/old)."""
    tarball = CACHE / f"minbase-{RELEASE}.tar"
    with locked(CACHE / ".minbase.lock"):
        if tarball.exists() and time.time() - tarball.stat().st_mtime < MINBASE_MAX_AGE:
            return tarball
        work = Path(tempfile.mkdtemp(prefix="prov-minbase-", dir=CACHE))
        try:
            root = work / "root"
            subprocess.run(["debootstrap", "--variant=minbase", RELEASE, str(root), _mirror()],
                           check=True, capture_output=True, timeout=1200)
            # No .debs in the tarball (debootstrap leaves them in the archive cache).
            for deb in (root / "var/cache/apt/archives").glob("*.deb"):
                deb.unlink()
            subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(work / "t.tar"), "."],
                           check=True, timeout=600)
            (work / "t.tar").replace(tarball)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return tarball


def clean_tree(src: Path, dest: Path) -> None:
    """Copy the working tree as a clean clone has it: the files git knows, none it ignores (.venv, caches).

    Tracked files (as they are now, so uncommitted edits are tested too) plus untracked files that
    .gitignore does not exclude; without git metadata, everything but the usual local state.
    """
    dest.mkdir(parents=True)
    if (src / ".git").exists() and shutil.which("git"):
        listed = subprocess.run(["git", "-C", str(src), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                capture_output=True, check=True).stdout
        files = [f for f in listed.decode().split("\0") if f and (src / f).exists()]
    else:
        skip = {".git", ".venv", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", "build", "dist"}
        files = []
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames[:] = [d for d in dirnames if d not in skip and not d.endswith(".egg-info")]
            files += [os.path.relpath(os.path.join(dirpath, f), src) for f in filenames]
    tar = subprocess.Popen(["tar", "-C", str(src), "--null", "-T", "-", "-cf", "-"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    untar = subprocess.Popen(["tar", "-C", str(dest), "-xf", "-"], stdin=tar.stdout)
    assert tar.stdin and tar.stdout
    tar.stdout.close()
    tar.stdin.write("\0".join(files).encode())
    tar.stdin.close()
    if tar.wait(300) != 0 or untar.wait(300) != 0:
        raise RuntimeError(f"copying {src} to {dest} failed")


def _apt_options() -> str:
    """The options of this machine's apt.conf.d that concern reaching its mirror (not cleaning hooks)."""
    keep = []
    for conf in sorted(Path("/etc/apt/apt.conf.d").glob("*")):
        for line in conf.read_text(errors="replace").splitlines():
            if line.strip().startswith(("Acquire::Check-Valid-Until", "Acquire::Check-Date", "Acquire::http::Proxy",
                                        "Acquire::https::Proxy", "Acquire::Retries")):
                keep.append(line.strip())
    return "\n".join(dict.fromkeys(keep))


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the test process dies, however it dies.

    unshare ignores SIGTERM while it waits for its child, and --kill-child only ties the machine's
    PID 1 to unshare; this ties unshare to us, so a killed test run leaves no machine behind.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Result:
    returncode: int
    output: str


@dataclass
class FreshMachine:
    """A running pristine root; ``sh()`` runs a command in it as root (or ``user``).

    The root is a tmpfs mounted inside the machine's own mount namespace: it goes away with the
    machine (no multi-GB ``rm -rf``, which this machine's discard-mounted disk makes slow), and
    from outside it is reached through ``/proc/<its PID 1>/root`` (``root``).
    """

    dir: Path
    mountpoint: Path = field(init=False)  # where the root is mounted, as the machine's namespace sees it
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    init_pid: int = field(default=0, init=False)
    proxy: Proxy | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.mountpoint = self.dir / "root"

    @property
    def root(self) -> Path:
        """The machine's root directory, from this machine (valid while it runs)."""
        if not self.init_pid:
            raise RuntimeError("the machine is not running")
        return Path(f"/proc/{self.init_pid}/root")

    # ------------------------------------------------------------------ set-up
    def _overlay(self) -> Path:
        """What goes over the minbase tree: this machine's way to its mirrors, and the proxy."""
        top = self.dir / "overlay"
        etc = top / "etc"
        for d in ("apt/sources.list.d", "apt/apt.conf.d", "dpkg/dpkg.cfg.d", "ssl/certs"):
            (etc / d).mkdir(parents=True, exist_ok=True)
        # This machine's apt sources and the options they need; the proxy is the way out.
        sources = Path("/etc/apt/sources.list.d")
        for src in [*sources.glob("*.sources"), *sources.glob("*.list")]:
            shutil.copy(src, etc / "apt/sources.list.d" / src.name)
        if Path("/etc/apt/sources.list").exists():
            shutil.copy("/etc/apt/sources.list", etc / "apt/sources.list")
        (etc / "apt/apt.conf.d/00-this-machine").write_text(_apt_options() + "\n")
        (etc / "apt/apt.conf.d/01-proxy").write_text(
            f'Acquire::http::Proxy "http://127.0.0.1:{PROXY_PORT}";\n'
            # The .deb cache is a bind mount of this machine's directory; root fetches into it.
            'APT::Sandbox::User "root";\n')
        # dpkg without fsync: a throwaway root, and the tier's wall time is mostly dpkg.
        (etc / "dpkg/dpkg.cfg.d/00-unsafe-io").write_text("force-unsafe-io\n")
        # The CA certificates this machine trusts (its TLS proxy's among them).
        local_ca = Path("/usr/local/share/ca-certificates")
        if local_ca.is_dir():
            shutil.copytree(local_ca, top / "usr/local/share/ca-certificates", dirs_exist_ok=True)
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", etc / "ssl/certs/ca-certificates.crt")
        (etc / "hostname").write_text("fresh\n")
        (etc / "hosts").write_text("127.0.0.1 localhost fresh\n::1 localhost\n")
        (etc / "resolv.conf").write_text("# no DNS: apt and pip go through the proxy on 127.0.0.1\n")
        (top / "var/cache/prov-fresh-pip").mkdir(parents=True, exist_ok=True)
        return top

    def start(self) -> None:
        tarball = minbase_tarball()
        overlay = self._overlay()
        apt_cache = CACHE / "apt-archives"
        pip_cache = CACHE / "pip"
        for d in (apt_cache / "partial", pip_cache):
            d.mkdir(parents=True, exist_ok=True)
        pip_cache.chmod(0o1777)  # a sudo user's pip shares it (downloads only)
        self.mountpoint.mkdir(parents=True)
        sock = self.dir / "egress.sock"
        self.proxy = Proxy(sock)
        r = str(self.mountpoint)
        setup = f"""
set -e
mount -t tmpfs -o mode=0755,size=16g prov-fresh {r}
tar -C {r} --numeric-owner -xf {tarball}
rm -f {r}/etc/apt/sources.list {r}/etc/resolv.conf
cp -a {overlay}/. {r}/
ip link set lo up
mount -t proc proc {r}/proc
mount -t sysfs -o ro sysfs {r}/sys
mount --rbind /dev {r}/dev
mount -t tmpfs tmpfs {r}/run
mount -t tmpfs tmpfs {r}/tmp
mount --bind {apt_cache} {r}/var/cache/apt/archives
mount --bind {pip_cache} {r}/var/cache/prov-fresh-pip
hostname fresh
{sys.executable} {EGRESS} relay {PROXY_PORT} {sock} &
exec chroot {r} /bin/sleep infinity
"""
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--uts", "--ipc", "--net", "--pid", "--fork", "--kill-child",
             "--propagation", "private", "/bin/sh", "-c", setup],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode() if self.proc.stdout else ""
                raise RuntimeError(f"the fresh machine did not start: {out}")
            child = self._child()
            with contextlib.suppress(OSError):
                if child and os.readlink(f"/proc/{child}/root") == r and self._relay_up(child):
                    self.init_pid = child
                    return
            time.sleep(0.1)
        raise RuntimeError("the fresh machine did not start within 120 s")

    def _child(self) -> int:
        assert self.proc
        with contextlib.suppress(OSError):
            kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            return int(kids[0]) if kids else 0
        return 0

    def _relay_up(self, pid: int) -> bool:
        # /proc/net/tcp of the machine's namespace: 127.0.0.1:PROXY_PORT listening (state 0A)
        with contextlib.suppress(OSError):
            want = f"0100007F:{PROXY_PORT:04X}"
            return any(line.split()[1] == want and line.split()[3] == "0A"
                       for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:])
        return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        if self.proxy:
            self.proxy.close()
        self.init_pid = 0
        # The root (a tmpfs) and every mount went with the mount namespace; what is left is small.
        with contextlib.suppress(OSError):
            self.mountpoint.rmdir()
        shutil.rmtree(self.dir / "overlay", ignore_errors=True)

    # ------------------------------------------------------------------ running things inside
    def _argv(self, script: str, user: str | None, cwd: str) -> tuple[list[str], dict[str, str]]:
        home = "/root" if user is None else f"/home/{user}"
        env = dict(BASE_ENV, HOME=home, USER=user or "root", LOGNAME=user or "root")
        inner = ["/bin/bash", "-c", f"cd {cwd} && {script}"]
        if user is not None:
            inner = ["/usr/bin/setpriv", "--reuid", user, "--regid", user, "--init-groups", "--", *inner]
        return ["nsenter", "-t", str(self.init_pid), "-m", "-u", "-i", "-n", "-p", "-r", "-w", *inner], env

    def sh(self, script: str, *, user: str | None = None, cwd: str = "/", timeout: float = 600) -> Result:
        argv, env = self._argv(script, user, cwd)
        proc = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
                              check=False)
        return Result(proc.returncode, proc.stdout.decode(errors="replace"))

    def spawn(self, script: str, log: Path, *, user: str | None = None, cwd: str = "/") -> subprocess.Popen[bytes]:
        """Start a long-running command (its output goes to ``log``); it dies with the machine."""
        argv, env = self._argv(script, user, cwd)
        with log.open("ab") as fh:
            return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT)

    def pids(self, pattern: str) -> list[int]:
        """This machine's processes whose command line contains ``pattern`` (seen from outside)."""
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if os.readlink(proc / "root") == str(self.mountpoint) and pattern in (
                        (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")):
                    found.append(int(proc.name))
        return found

    def http_status(self, url: str) -> int:
        """GET ``url`` from inside the machine's network namespace (this machine's python, no proxy)."""
        code = (f"import urllib.request,sys\ntry:\n print(urllib.request.urlopen({url!r}, timeout=5).status)\n"
                "except Exception as e:\n print(getattr(e, 'code', 0))")
        out = subprocess.run(["nsenter", "-t", str(self.init_pid), "-n", sys.executable, "-c", code],
                             capture_output=True, text=True, timeout=30, check=False, env={"PATH": BASE_ENV["PATH"]})
        return int(out.stdout.strip() or 0)


@contextlib.contextmanager
def fresh_machine(base: Path) -> Iterator[FreshMachine]:
    m = FreshMachine(base)
    try:
        m.start()
        yield m
    finally:
        m.stop()
