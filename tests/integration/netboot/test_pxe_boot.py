"""A machine really netboots: QEMU (TCG) -> our dnsmasq -> iPXE -> prov's HTTP -> ramdisk installer -> done.

Inside a network namespace with a bridge (10.77.0.1/24) and a tap, the test
runs ``prov serve`` (API + our TFTP on port 69 + our dnsmasq, started by the
boot service exactly as in production), enrolls a host with a fixed MAC in
install-wait, and boots ``qemu-system-x86_64 -boot n`` with a virtio NIC on
the tap:

* BIOS: SeaBIOS runs QEMU's iPXE NIC ROM (ipxe-qemu), which sends user class
  "iPXE", so dnsmasq hands it ``/boot/boot.ipxe`` over HTTP directly.
* UEFI (OVMF, NIC ROM disabled): the firmware's own PXE client asks with
  client-arch 7, gets ``ipxe.efi`` from *our TFTP server*, which then chains
  to HTTP.

The per-host iPXE script boots the test ramdisk (``ensure_ramdisk()``) from
``/boot/files``; its ``prov.run=`` script plays the installer: it fetches the
install file with the one-time token and posts ``done``. Afterwards the host
must be in ``booting`` with netboot off, and a second PXE boot of the same MAC
must get a lease but no boot information (and its iPXE script is the
local-boot one).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from sqlmodel import Session, select

from provisioner import states as S
from provisioner.models import Event, Host, Nic, Profile
from provisioner.settings import Settings
from tests.support.helpers import free_port, require_binary, require_root

pytestmark = pytest.mark.integration

MAC = "52:54:00:12:34:56"
HOST_IP = "10.77.0.50"
SERVER_IP = "10.77.0.1"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")

INSTALLER = """#!/bin/sh
# The "installer": what kickstart %pre/%post would do, in busybox sh.
CFG="$PROV_URL/install/v1/$PROV_TOKEN/config"
if wget -q -O /tmp/install.cfg "$CFG" && [ -s /tmp/install.cfg ]; then
    echo "PROV-INSTALLER: fetched install file ($(wc -c < /tmp/install.cfg) bytes)"
else
    echo "PROV-INSTALLER: fetch failed"
    exit 1
fi
if wget -q -O /tmp/done.json --header "Content-Type: application/json" \\
        --post-data '{"event": "done", "message": "netboot test installer"}' \\
        "$PROV_URL/install/v1/$PROV_TOKEN/events"; then
    echo "PROV-INSTALLER: done posted: $(cat /tmp/done.json)"
else
    echo "PROV-INSTALLER: done failed"
    exit 1
fi
echo poweroff > /run/prov/after
"""


def _wait_for(pred, timeout: float, what: str, poll: float = 0.5, diag=None):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}" + (f"\n{diag()}" if diag else ""))


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return f"({path} missing)"


@pytest.fixture
def lab(bridge_net, tmp_path):
    """prov serve inside the namespace, with a host enrolled for install."""
    require_root()
    require_binary("qemu-system-x86_64", "dnsmasq")
    if not Path("/usr/lib/ipxe/undionly.kpxe").exists():
        require_binary("/usr/lib/ipxe/undionly.kpxe")
    from provisioner.conductor import install_tokens
    from provisioner.db import dispose_engines, get_engine
    from provisioner.lab.ramdisk import ensure_ramdisk
    from provisioner.migrate import upgrade

    for name in ("boot.j2", "install.j2"):
        text = (Path(__file__).resolve().parents[3] / "provisioner" / "templates" / "ipxe" / name).read_text()
        if re.search(r"^\s*inc\s", text, re.M):
            pytest.fail(f"templates/ipxe/{name} uses `inc`: Debian 12's iPXE (ipxe/ipxe-qemu 1.0.0+git-20190125) "
                        "fails it with 'Could not store \"prov_tries\": Operation not supported' and the script "
                        "aborts before chaining (seen on the guest screen); count with `set`/`iseq` instead")
    bridge_net.add_tap("tap0")
    data = tmp_path / "data"
    port = free_port()
    base = f"http://{SERVER_IP}:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROV_")}
    env.update({
        "PROV_DATA_DIR": str(data),
        "PROV_HOST": SERVER_IP,
        "PROV_PORT": str(port),
        "PROV_PUBLIC_URL": base,
        "PROV_TFTP_HOST": SERVER_IP,
        "PROV_TFTP_PORT": "69",
        "PROV_DHCP_ENABLED": "true",
        "PROV_DHCP_INTERFACE": "br0",
        "PROV_DHCP_RANGE": "10.77.0.100,10.77.0.150,255.255.255.0,10m",
        "PROV_UNKNOWN_MAC_ACTION": "ignore",
        "PROV_POWER_SYNC_ENABLED": "false",
        "PROV_LOG_JSON": "false",
        "PROV_LOG_LEVEL": "INFO",
    })
    settings = Settings(data_dir=data, host=SERVER_IP, port=port, public_url=base)
    settings.ensure_dirs()

    # the test ramdisk, copied into the boot root (a symlink out of it would be refused)
    rd = ensure_ramdisk()
    (settings.boot_dir / "ramdisk").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(rd.kernel, settings.boot_dir / "ramdisk" / "vmlinuz")
    shutil.copyfile(rd.initrd, settings.boot_dir / "ramdisk" / "initrd.img")
    (settings.boot_dir / "test").mkdir(exist_ok=True)
    (settings.boot_dir / "test" / "installer.sh").write_text(INSTALLER)

    upgrade(settings)
    with Session(get_engine(settings), expire_on_commit=False) as session:
        profile = Profile(name="netboot-test", os_family="debian", install_method="preseed",
                          kernel_url="ramdisk/vmlinuz", initrd_url="ramdisk/initrd.img",
                          kernel_args="console=ttyS0 prov.run=boot/files/test/installer.sh prov.poweroff=1")
        session.add(profile)
        session.commit()
        host = Host(name="pxe1", profile_id=profile.id, state=S.INSTALL_WAIT, netboot=True, bmc_kind="manual")
        session.add(host)
        session.commit()
        session.add(Nic(host_id=host.id, mac=MAC, boot=True, ip=HOST_IP, name="eth0"))
        session.commit()
        # what the install workflow does when it powers the host into PXE
        install_tokens.mint(session, host, settings)

    log_path = tmp_path / "prov-serve.log"
    logf = open(log_path, "wb")  # noqa: SIM115
    prov = shutil.which("prov", path=str(Path(os.sys.executable).parent)) or "prov"
    proc = subprocess.Popen([*bridge_net.server.prefix(), prov, "serve"], env=env, stdout=logf,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"prov serve exited {proc.returncode}:\n{_tail(log_path)}")
            r = bridge_net.server.run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                      f"{base}/boot/boot.ipxe", check=False)
            return r.stdout.strip() == "200" and (data / "dnsmasq" / "hosts.d").is_dir() and \
                any((data / "dnsmasq" / "hosts.d").iterdir())

        _wait_for(up, 60, "prov serve to answer", diag=lambda: _tail(log_path))
        yield {"ns": bridge_net.server, "base": base, "settings": settings, "log": log_path, "data": data,
               "tmp": tmp_path}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        logf.close()
        dispose_engines()


def _qemu(lab, name: str, uefi: bool) -> tuple[subprocess.Popen[bytes], Path]:
    serial = lab["tmp"] / f"{name}.serial"
    monitor = lab["tmp"] / f"{name}.mon"
    cmd = [*lab["ns"].prefix(), "qemu-system-x86_64", "-accel", "tcg", "-m", "384", "-smp", "1",
           "-display", "none", "-monitor", f"unix:{monitor},server,nowait", "-serial", f"file:{serial}",
           "-no-reboot",
           "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
           # no romfile=: QEMU finds ipxe-qemu's ROM itself (an absolute romfile= stopped it running here)
           "-device", f"virtio-net-pci,netdev=n0,mac={MAC},bootindex=1{',romfile=' if uefi else ''}",
           "-boot", "n"]
    # UEFI: no NIC ROM (romfile= empty), so OVMF's own virtio-net driver and PXE client boot,
    # fetch ipxe.efi from our TFTP server, and that iPXE chains to HTTP: the full first stage.
    if uefi:
        vars_copy = lab["tmp"] / f"{name}-vars.fd"
        shutil.copyfile(OVMF_VARS, vars_copy)
        cmd += ["-machine", "q35", "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(lab["tmp"] / f"{name}.err", "wb"),  # noqa: SIM115
                            start_new_session=True)
    return proc, serial


def screendump(lab, name: str) -> str:  # type: ignore[no-untyped-def]
    """The guest's screen as PNG (firmware and iPXE print there, not on the serial port)."""
    import socket as _socket
    import struct
    import zlib

    ppm = lab["tmp"] / f"{name}-screen.ppm"
    try:
        with _socket.socket(_socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(lab["tmp"] / f"{name}.mon"))
            time.sleep(0.3)
            s.sendall(f"screendump {ppm}\n".encode())
            time.sleep(1.5)
        _magic, dims, _maxval, pixels = ppm.read_bytes().split(b"\n", 3)
        w, h = map(int, dims.split())
        raw = b"".join(b"\x00" + pixels[y * w * 3:(y + 1) * w * 3] for y in range(h))

        def chunk(tag: bytes, data: bytes) -> bytes:
            return struct.pack("!I", len(data)) + tag + data + struct.pack("!I", zlib.crc32(tag + data))

        png = lab["tmp"] / f"{name}-screen.png"
        png.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack("!IIBBBBB", w, h, 8, 2, 0, 0, 0))
                        + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    except (OSError, ValueError) as exc:
        return f"(no screendump: {exc})"
    return f"guest screen: {png}"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def _script_fetches(log: str) -> int:
    """GETs of the per-host iPXE script in the access log (iPXE URL-encodes the colons)."""
    return log.count(f"/boot/ipxe/{MAC}") + log.count(f"/boot/ipxe/{MAC.replace(':', '%3A')}")


def _host(lab) -> Host:  # type: ignore[no-untyped-def]
    from provisioner.db import get_engine

    with Session(get_engine(lab["settings"]), expire_on_commit=False) as session:
        return session.exec(select(Host).where(Host.name == "pxe1")).one()


def _done_events(lab) -> list[Event]:  # type: ignore[no-untyped-def]
    from provisioner.db import get_engine

    with Session(get_engine(lab["settings"])) as session:
        return list(session.exec(select(Event).where(Event.to_state == S.BOOTING)).all())


def _dnsmasq_log(lab) -> str:  # type: ignore[no-untyped-def]
    return (lab["data"] / "dnsmasq" / "dnsmasq.log").read_text(errors="replace")


@pytest.mark.timeout(420)
@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_machine_netboots_and_installs_once(lab, firmware):
    uefi = firmware == "uefi"
    if uefi and not (OVMF_CODE.exists() and OVMF_VARS.exists()):
        require_binary(str(OVMF_CODE))
    t0 = time.monotonic()
    proc, serial = _qemu(lab, "boot1", uefi)
    try:
        def diag() -> str:
            return (f"{screendump(lab, 'boot1')}\n--- serial\n{_tail(serial)}\n--- prov serve\n"
                    f"{_tail(lab['log'])}\n--- dnsmasq\n"
                    f"{_tail(lab['data'] / 'dnsmasq' / 'dnsmasq.log', 25)}")

        _wait_for(lambda: "PROV-INSTALLER: done posted" in (serial.read_text(errors="replace")
                                                              if serial.exists() else ""),
                  int(os.environ.get("PROV_NETBOOT_WAIT", "240")), "the ramdisk installer to post done", diag=diag)
        _wait_for(lambda: proc.poll() is not None, 30, "the guest to power off", diag=diag)
    finally:
        _stop(proc)
    first_boot = time.monotonic() - t0
    text = serial.read_text(errors="replace")
    assert "PROV-RAMDISK: up" in text and "PROV-INSTALLER: fetched install file" in text
    assert f"PROV-RAMDISK: ip={HOST_IP}" in text or HOST_IP in text

    # the controller's view: install done -> booting, netboot off, token revoked
    host = _host(lab)
    assert host.state == S.BOOTING
    assert host.netboot is False
    assert host.install_token_hash is None
    served = lab["log"].read_text(errors="replace")
    assert _script_fetches(served) >= 1 and "/boot/files/ramdisk/vmlinuz" in served
    dlog = _dnsmasq_log(lab)
    assert f"DHCPACK(br0) {HOST_IP} {MAC}" in dlog
    if uefi:
        # the firmware's PXE client fetched iPXE from our TFTP server
        assert re.search(r"tftp sent ipxe\.efi -> ", served), served[-3000:]

    # the per-host script is now the local-boot one
    r = lab["ns"].run("curl", "-s", f"{lab['base']}/boot/ipxe/{MAC}")
    assert r.stdout.startswith("#!ipxe") and "netboot is off" in r.stdout and "kernel " not in r.stdout

    assert len(_done_events(lab)) == 1
    print(f"{firmware}: first boot to install-done {first_boot:.0f} s")
    if uefi:
        return  # the second boot is the same DHCP/HTTP path as BIOS but ~2 min slower under TCG
    # second PXE boot of the same MAC: lease + chain, but the controller answers with the
    # local-boot script, so nothing reinstalls
    served = lab["log"].read_text(errors="replace")
    fetches_before = _script_fetches(served)
    kernels_before = served.count("/boot/files/ramdisk/vmlinuz")
    acks_before = dlog.count(f"DHCPACK(br0) {HOST_IP} {MAC}")
    proc2, serial2 = _qemu(lab, "boot2", uefi)
    try:
        _wait_for(lambda: _script_fetches(lab["log"].read_text(errors="replace")) > fetches_before, 150,
                  "the second boot to fetch its iPXE script",
                  diag=lambda: f"{screendump(lab, 'boot2')}\n{_tail(lab['data'] / 'dnsmasq' / 'dnsmasq.log', 30)}")
        time.sleep(5)  # give a (wrong) install chain time to show up
    finally:
        _stop(proc2)
    served2 = lab["log"].read_text(errors="replace")
    assert _dnsmasq_log(lab).count(f"DHCPACK(br0) {HOST_IP} {MAC}") > acks_before
    assert "gets the ipxe local-boot config" in served2[len(served):]
    assert served2.count("/boot/files/ramdisk/vmlinuz") == kernels_before
    assert "PROV-RAMDISK" not in (serial2.read_text(errors="replace") if serial2.exists() else "")
    host = _host(lab)
    assert host.state == S.BOOTING and host.netboot is False and host.install_token_hash is None
    assert len(_done_events(lab)) == 1  # still the one install
