"""Throwaway Debian 12 SSH hosts in network namespaces, for Ansible tests and humans.

A host is a cached debootstrap root (``tar.zst`` under ``/var/cache/prov-test``,
keyed by the package list) mounted as an overlay, entered through its own net,
pid, mount, uts, ipc and cgroup namespaces and ``pivot_root`` (so the machine's
filesystem is gone), with ``/proc/sys`` read-only except ``/proc/sys/net``, a
minimal ``/dev`` (incl. ``/dev/fuse`` and ``/dev/net/tun``), its own cgroup in
every v1 hierarchy, and ``sshd`` on a veth address on a bridge we create.
A small Python init is PID 1 with ``container=prov-nshost`` in its environment,
so Ansible's facts call the target a container. apt inside targets goes
through an ``apt-cacher-ng`` bound to loopback and the bridge address.

Never run playbooks against a plain chroot of the root: nft, sysctls and
dockerd would act on the machine itself (docs/field-notes.md, "Throwaway SSH hosts and Ansible").
Needs root. Everything is named ``prov-cfg-*`` and removed by ``down()``.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CACHE_DIR = Path(os.environ.get("PROV_TEST_CACHE", "/var/cache/prov-test"))
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# python3-apt: Ansible's apt module; iproute2/procps: debugging inside a host.
PACKAGES = ("openssh-server", "python3", "python3-apt", "sudo", "ca-certificates", "iproute2", "procps")
ADMIN_USER = "prov"
# A password exists so tests can show that password login is refused.
TEST_PASSWORD = "prov-test-password"


class NsHostError(RuntimeError):
    pass


def _run(*args: str, check: bool = True, input_: str | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, input=input_)
    if check and proc.returncode != 0:
        raise NsHostError(f"{' '.join(args)}: rc={proc.returncode}: {proc.stderr.strip()[-500:]}")
    return proc


# --------------------------------------------------------------------------- root
def rootfs_key(packages: tuple[str, ...] = PACKAGES) -> str:
    spec = f"{SUITE} minbase {','.join(sorted(packages))} v1"
    return hashlib.sha256(spec.encode()).hexdigest()[:12]


def _clean_tree(tree: Path) -> None:
    """Make a debootstrap tree reusable: no caches, lists, host keys or machine id."""
    for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
        d = tree / sub
        if d.is_dir():
            for p in d.iterdir():
                if p.is_file():
                    p.unlink()
    for key in (tree / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    # apt's cache_valid_time looks at these mtimes: an empty index must look stale.
    for stale in (tree / "var/lib/apt/lists", tree / "var/lib/apt/periodic/update-success-stamp"):
        if stale.exists():
            os.utime(stale, (0, 0))
    mid = tree / "etc/machine-id"
    if mid.exists():
        mid.write_text("")
    for log in (tree / "var/log").glob("*.log"):
        log.write_text("")


def ensure_rootfs(cache: Path = CACHE_DIR, packages: tuple[str, ...] = PACKAGES) -> Path:
    """Return an unpacked golden root; build the cached ``tar.zst`` first if needed (~100 s once)."""
    key = rootfs_key(packages)
    base = cache / "cfg"
    base.mkdir(parents=True, exist_ok=True)
    tree = base / f"root-{key}"
    tarball = base / f"debian12-{key}.tar.zst"
    if (tree / ".complete").exists():
        return tree
    lock = base / f".lock-{key}"
    with open(lock, "w") as fh:
        import fcntl

        fcntl.flock(fh, fcntl.LOCK_EX)
        if (tree / ".complete").exists():
            return tree
        if not tarball.exists():
            build = Path(tempfile.mkdtemp(prefix="build-", dir=base))
            try:
                _run("debootstrap", "--variant=minbase", f"--include={','.join(packages)}", SUITE, str(build), MIRROR)
                _clean_tree(build)
                _run("tar", "--zstd", "-C", str(build), "-cf", f"{tarball}.part", ".")
                os.replace(f"{tarball}.part", tarball)
            finally:
                shutil.rmtree(build, ignore_errors=True)
        if tree.exists():
            shutil.rmtree(tree)
        tree.mkdir()
        _run("tar", "--zstd", "-C", str(tree), "-xpf", str(tarball))
        (tree / ".complete").write_text(key)
    return tree


# --------------------------------------------------------------------------- network
def _used_subnets() -> set[str]:
    out = _run("ip", "-4", "-o", "addr", "show", check=False).stdout
    nets = set()
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            nets.add(str(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network))
    return nets


@dataclass
class Bridge:
    name: str
    network: ipaddress.IPv4Network
    gateway: str

    @classmethod
    def create(cls, tag: str) -> Bridge:
        used = _used_subnets()
        rng = random.Random()
        for _ in range(200):
            net = ipaddress.IPv4Network(f"10.{rng.randint(180, 250)}.{rng.randint(0, 255)}.0/24")
            if str(net) not in used:
                break
        else:  # pragma: no cover
            raise NsHostError("no free 10.x.y.0/24 for the test bridge")
        name = f"prov-cfg-{tag}"[:15]
        gw = str(net.network_address + 1)
        _run("ip", "link", "add", name, "type", "bridge")
        _run("ip", "addr", "add", f"{gw}/{net.prefixlen}", "dev", name)
        _run("ip", "link", "set", name, "up")
        return cls(name, net, gw)

    def address(self, index: int) -> str:
        return str(self.network.network_address + 10 + index)

    def delete(self) -> None:
        _run("ip", "link", "del", self.name, check=False)


@dataclass
class AptProxy:
    """apt-cacher-ng on loopback and the bridge; the cache persists under CACHE_DIR/acng.

    apt-cacher-ng 3.7.4 keeps the port in a signed 16-bit integer: any port above
    32767 turns into a negative "service" and binding fails with "Error resolving
    address for binding: Success". ``free_low_port()`` picks one below 32768.
    """

    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(cls, bridge: Bridge, workdir: Path, port: int) -> AptProxy:
        conf = workdir / "acng"
        conf.mkdir(parents=True, exist_ok=True)
        cache = CACHE_DIR / "acng"
        cache.mkdir(parents=True, exist_ok=True)
        # Debian's default remaps point at mirror lists that are unreachable here;
        # map both archives to the one mirror that is, and pass nothing through.
        (conf / "acng.conf").write_text(
            f"CacheDir: {cache}\nLogDir: {conf}\nSupportDir: /usr/lib/apt-cacher-ng\n"
            f"Port: {port}\nBindAddress: 127.0.0.1 {bridge.gateway}\n"
            "Remap-debrep: deb.debian.org/debian ; http://deb.debian.org/debian/\n"
            "Remap-secdeb: deb.debian.org/debian-security security.debian.org/debian-security"
            " ; http://deb.debian.org/debian-security/\n"
            "PassThroughPattern: ^$\nExThreshold: 4\nPidFile: " + str(conf / "acng.pid") + "\n"
            "SocketPath: " + str(conf / "acng.sock") + "\n"
        )
        proc = subprocess.Popen(
            ["apt-cacher-ng", "-c", str(conf), "ForeGround=1"],
            stdout=subprocess.DEVNULL,
            stderr=open(conf / "stderr.log", "wb"),  # noqa: SIM115 - lives as long as the proxy
        )
        self = cls(port, workdir, proc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if _run("nc", "-z", bridge.gateway, str(port), check=False).returncode == 0:
                return self
            if proc.poll() is not None:
                raise NsHostError(f"apt-cacher-ng exited: {(conf / 'stderr.log').read_text()[-500:]}")
            time.sleep(0.1)
        self.stop()
        raise NsHostError("apt-cacher-ng did not listen within 10 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def free_low_port() -> int:
    """A free TCP port on loopback below 32768 (see AptProxy)."""
    import socket

    rng = random.Random()
    for _ in range(200):
        port = rng.randint(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise NsHostError("no free port below 32768")


# --------------------------------------------------------------------------- hosts
_INIT = r'''#!/usr/bin/python3
"""PID 1 of a prov namespace host: set up accounts once, start sshd, reap zombies."""
import json, os, signal, subprocess, sys, time
cfg = json.load(open("/etc/prov-nshost.json"))
if not os.path.exists("/etc/prov-nshost.done"):
    subprocess.run(["useradd", "-m", "-s", "/bin/bash", "-G", "sudo", cfg["user"]], check=True)
    subprocess.run(["chpasswd"], input=f"root:{cfg['password']}\n{cfg['user']}:{cfg['password']}\n",
                   text=True, check=True)
    for user, home in (("root", "/root"), (cfg["user"], "/home/" + cfg["user"])):
        os.makedirs(home + "/.ssh", mode=0o700, exist_ok=True)
        with open(home + "/.ssh/authorized_keys", "w") as fh:
            fh.write(cfg["pubkey"] + "\n")
        os.chmod(home + "/.ssh/authorized_keys", 0o600)
        subprocess.run(["chown", "-R", f"{user}:{user}", home + "/.ssh"], check=True)
    with open("/etc/sudoers.d/prov-nshost", "w") as fh:
        fh.write(f"{cfg['user']} ALL=(ALL:ALL) NOPASSWD: ALL\n")
    os.chmod("/etc/sudoers.d/prov-nshost", 0o440)
    open("/etc/prov-nshost.done", "w").close()
os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
subprocess.run(["/usr/sbin/sshd"], check=True)
open("/run/prov-nshost.ready", "w").close()
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    try:
        os.waitpid(-1, 0)
    except ChildProcessError:
        time.sleep(1)
'''

_SETUP = r'''set -e
R="$PROV_ROOT"
mount -t overlay overlay -o "lowerdir=$PROV_LOWER,upperdir=$PROV_UPPER,workdir=$PROV_WORK" "$R"
# overlay storage on an overlay root fails: engines get real directories
mkdir -p "$R/var/lib/docker" "$R/var/lib/containers"
mount --bind "$PROV_STATE/docker" "$R/var/lib/docker"
mount --bind "$PROV_STATE/containers" "$R/var/lib/containers"
mount -t proc proc "$R/proc"
# /proc/sys read-only except /proc/sys/net (which is this namespace's own)
mount --bind "$R/proc/sys" "$R/proc/sys"
mount -o remount,bind,ro "$R/proc/sys"
mount --bind "$R/proc/sys/net" "$R/proc/sys/net"
mount -o remount,bind,rw "$R/proc/sys/net"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
mount -t tmpfs -o mode=755,nosuid,nodev,noexec tmpfs "$R/sys/fs/cgroup"
for spec in $PROV_CGROUPS; do
  dir="${spec%%:*}"; opts="${spec#*:}"
  mkdir -p "$R/sys/fs/cgroup/$dir"
  mount -t cgroup -o "$opts,nosuid,nodev,noexec" cgroup "$R/sys/fs/cgroup/$dir"
done
mount -t tmpfs -o mode=755,nosuid tmpfs "$R/dev"
for n in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
  mknod -m 666 "$R/dev/${n%%:*}" c $(echo "$n" | cut -d: -f2) $(echo "$n" | cut -d: -f3)
done
mknod -m 666 "$R/dev/fuse" c 10 229
mkdir -p "$R/dev/net" "$R/dev/pts" "$R/dev/shm" "$R/dev/mqueue"
mknod -m 666 "$R/dev/net/tun" c 10 200
mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/dev/shm"
mount -t mqueue mqueue "$R/dev/mqueue"
ln -s /proc/self/fd "$R/dev/fd"
ln -s /proc/self/fd/0 "$R/dev/stdin"; ln -s /proc/self/fd/1 "$R/dev/stdout"; ln -s /proc/self/fd/2 "$R/dev/stderr"
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs "$R/run"
hostname "$PROV_NAME"
cd "$R"
mkdir -p .oldroot
pivot_root . .oldroot
cd /
umount -l /.oldroot
rmdir /.oldroot
exec /usr/bin/env -i container=prov-nshost PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
  /usr/bin/python3 /sbin/prov-init >/var/log/prov-init.log 2>&1
'''


def _cgroup_specs() -> list[tuple[str, str, str]]:
    """(mount dir, mount options, our own path) for every v1 hierarchy of this process."""
    own: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        if ctrls:
            own[ctrls] = path
    specs = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _dev, mnt, fstype, opts, *_ = line.split()
        if fstype != "cgroup" or not mnt.startswith("/sys/fs/cgroup/"):
            continue
        names = [o for o in opts.split(",") if o not in ("rw", "ro", "relatime", "nosuid", "nodev", "noexec")]
        key = ",".join(names)
        own_path = own.get(key)
        if own_path is None:
            continue
        specs.append((mnt, key, own_path))
    return specs


@dataclass
class NsHost:
    name: str
    address: str
    netns: str
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    cgroups: list[Path] = field(default_factory=list)
    veth: str = ""

    def ns_exec(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a machine-side command inside this host's network namespace (e.g. nft, sysctl)."""
        return _run("ip", "netns", "exec", self.netns, *args, check=check)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)  # --kill-child takes PID 1 (and its namespace) down
            self.proc.wait()
        for cg in self.cgroups:
            for _ in range(50):
                try:
                    cg.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
        _run("ip", "netns", "del", self.netns, check=False)
        if self.veth:
            _run("ip", "link", "del", self.veth, check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_host(
    name: str,
    index: int,
    bridge: Bridge,
    pubkey: str,
    workdir: Path,
    lower: Path,
    apt_proxy: str | None,
    timeout: float = 30.0,
) -> NsHost:
    """Start one host; returns when its sshd accepts connections."""
    tag = f"{bridge.name[-4:]}{index}"
    netns = f"prov-cfg-{name}"
    host = NsHost(name, bridge.address(index), netns, workdir / name, veth=f"pcv{tag}"[:15])
    up, wk, root, state = (host.workdir / d for d in ("upper", "work", "root", "state"))
    for d in (up, wk, root, state / "docker", state / "containers"):
        d.mkdir(parents=True, exist_ok=True)
    try:
        # per-host files go into the overlay's upper layer before it is mounted
        (up / "sbin").mkdir(exist_ok=True)
        (up / "sbin/prov-init").write_text(_INIT)
        (up / "sbin/prov-init").chmod(0o755)
        (up / "etc/ssh").mkdir(parents=True, exist_ok=True)
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(up / "etc/ssh/ssh_host_ed25519_key"))
        (up / "etc/prov-nshost.json").write_text(
            json.dumps({"user": ADMIN_USER, "password": TEST_PASSWORD, "pubkey": pubkey.strip()})
        )
        (up / "etc/prov-nshost.json").chmod(0o600)
        (up / "etc/hostname").write_text(name + "\n")
        (up / "etc/hosts").write_text(f"127.0.0.1 localhost\n{host.address} {name}\n")
        if apt_proxy:
            (up / "etc/apt/apt.conf.d").mkdir(parents=True, exist_ok=True)
            (up / "etc/apt/apt.conf.d/01prov-proxy").write_text(f'Acquire::http::Proxy "{apt_proxy}";\n')
        # network: veth from the bridge into the namespace
        _run("ip", "netns", "add", netns)
        _run("ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
        _run("ip", "link", "set", host.veth, "master", bridge.name, "up")
        host.ns_exec("ip", "link", "set", "lo", "up")
        host.ns_exec("ip", "addr", "add", f"{host.address}/{bridge.network.prefixlen}", "dev", "eth0")
        host.ns_exec("ip", "link", "set", "eth0", "up")
        host.ns_exec("ip", "route", "add", "default", "via", bridge.gateway)
        # its own cgroup in every v1 hierarchy
        cg_mounts = []
        for mnt, opts, own in _cgroup_specs():
            cg = Path(mnt + own.rstrip("/")) / netns
            cg.mkdir(exist_ok=True)
            host.cgroups.append(cg)
            cg_mounts.append(f"{Path(mnt).name}:{opts}")
        join = " ".join(f"echo $$ > {cg}/cgroup.procs;" for cg in host.cgroups)
        env = {
            **os.environ,
            "PROV_ROOT": str(root), "PROV_LOWER": str(lower), "PROV_UPPER": str(up), "PROV_WORK": str(wk),
            "PROV_STATE": str(state), "PROV_NAME": name, "PROV_CGROUPS": " ".join(cg_mounts),
        }
        (host.workdir / "setup.sh").write_text(_SETUP)
        host.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, "sh", "-c",
             f"{join} exec unshare --mount --pid --uts --ipc --cgroup --fork --propagation private "
             f"--kill-child=SIGKILL sh {host.workdir / 'setup.sh'}"],
            env=env, stdout=open(host.workdir / "console.log", "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if host.proc.poll() is not None:
                raise NsHostError(f"host {name} exited: {(host.workdir / 'console.log').read_text()[-800:]}")
            if _run("nc", "-z", "-w", "1", host.address, "22", check=False).returncode == 0:
                return host
            time.sleep(0.1)
        raise NsHostError(f"host {name}: sshd did not answer within {timeout:.0f} s")
    except BaseException:
        host.stop()
        raise


@dataclass
class Lab:
    """A bridge, an apt proxy and N hosts. ``with Lab.up(...) as lab:`` tears everything down."""

    bridge: Bridge
    proxy: AptProxy | None
    workdir: Path
    key: Path
    hosts: list[NsHost] = field(default_factory=list)

    @classmethod
    def up(cls, tag: str, names: list[str], workdir: Path, *, proxy_port: int | None = None) -> Lab:
        lower = ensure_rootfs()
        workdir.mkdir(parents=True, exist_ok=True)
        key = workdir / "id_ed25519"
        if not key.exists():
            _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "prov-test-admin", "-f", str(key))
        bridge = Bridge.create(tag)
        lab = cls(bridge, None, workdir, key)
        try:
            if proxy_port is not None:
                lab.proxy = AptProxy.start(bridge, workdir, proxy_port)
            pub = key.with_suffix(".pub").read_text()
            url = f"http://{bridge.gateway}:{proxy_port}" if proxy_port else None
            for i, name in enumerate(names):
                lab.hosts.append(start_host(name, i, bridge, pub, workdir / "hosts", lower, url))
        except BaseException:
            lab.down()
            raise
        return lab

    def down(self) -> None:
        for h in self.hosts:
            h.stop()
        self.hosts.clear()
        if self.proxy:
            self.proxy.stop()
        self.bridge.delete()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()


# --------------------------------------------------------------------------- for humans
def _state_file(workdir: Path) -> Path:
    return workdir / "lab.json"


def save_state(lab: Lab) -> Path:
    """Record pids and names so ``down`` can remove a lab started by another process."""
    state = {
        "bridge": lab.bridge.name,
        "proxy_pid": lab.proxy.proc.pid if lab.proxy and lab.proxy.proc else None,
        "key": str(lab.key),
        "hosts": [
            {"name": h.name, "address": h.address, "netns": h.netns, "veth": h.veth,
             "pid": h.proc.pid if h.proc else None, "cgroups": [str(c) for c in h.cgroups], "workdir": str(h.workdir)}
            for h in lab.hosts
        ],
    }
    path = _state_file(lab.workdir)
    path.write_text(json.dumps(state, indent=2))
    return path


def down_from_state(workdir: Path) -> None:
    state = json.loads(_state_file(workdir).read_text())
    for h in state["hosts"]:
        host = NsHost(h["name"], h["address"], h["netns"], Path(h["workdir"]), veth=h["veth"],
                      cgroups=[Path(c) for c in h["cgroups"]])
        if h["pid"]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(h["pid"], signal.SIGKILL)  # unshare --kill-child takes the host's PID 1 with it
            time.sleep(0.2)
        host.stop()
    if state.get("proxy_pid"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(state["proxy_pid"], signal.SIGTERM)
    _run("ip", "link", "del", state["bridge"], check=False)
    shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="testhost", description="throwaway Debian 12 SSH hosts in network namespaces")
    ap.add_argument("action", choices=["up", "down", "build"])
    ap.add_argument("name", help="lab name (a few letters); `up` starts hosts NAME-1..NAME-N")
    ap.add_argument("--hosts", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=None, help="default: /run/prov-testhost/NAME")
    args = ap.parse_args(argv)
    workdir = args.workdir or Path("/run/prov-testhost") / args.name
    if args.action == "build":
        print(ensure_rootfs())
        return
    if args.action == "down":
        down_from_state(workdir)
        print(f"lab {args.name} removed")
        return
    if _state_file(workdir).exists():
        raise SystemExit(f"lab {args.name} is already up ({workdir}); run `down` first")
    tag = args.name[:4]
    lab = Lab.up(tag, [f"{args.name[:6]}{i}" for i in range(1, args.hosts + 1)], workdir,
                 proxy_port=free_low_port())
    save_state(lab)
    for h in lab.hosts:
        print(f"{h.name}: ssh -i {lab.key} -o StrictHostKeyChecking=no {ADMIN_USER}@{h.address}"
              f"   (netns {h.netns}; nft/sysctl: ip netns exec {h.netns} ...)")
    print(f"apt proxy: http://{lab.bridge.gateway}:{lab.proxy.port if lab.proxy else '-'}; "
          f"password of root/{ADMIN_USER}: {TEST_PASSWORD}")


if __name__ == "__main__":
    main()
