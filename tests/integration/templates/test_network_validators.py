"""The declared networks of tests/support/network.py, in every installer file, through real validators.

kickstart      -> pykickstart's ``ksvalidator`` (RHEL 9, RHEL 10, Fedora 40; RHEL 8 when no search domain:
                  --ipv4-dns-search came with Fedora 39/RHEL 9); it also refuses a second line for one
                  device, which is why netview.kickstart_problems exists
preseed        -> ``debconf-set-selections -c``; its late_command really run by dash against a fake
                  /target, and the interfaces(5) file it writes run through Debian 12's own ifupdown
                  (``ifup --no-act``: the ``ip`` commands it would run) and cloud-init's ENI parser
autoinstall    -> ``cloud-init schema`` + the Subiquity keys (as test_template_validators.py), and its
                  ``network:`` through ``netplan generate`` (netplan.io)
NoCloud (image)-> ``netplan generate`` (strict netplan v2), and cloud-init's own parser/renderers
                  (``cloud-init devel net-convert``: ENI for Debian 12 images - the lab's -, sysconfig,
                  netplan); ``cloud-init schema --schema-type network-config`` where the installed
                  cloud-init has it (23.1+; Debian 12's 22.4 has none)
Each validator is also shown a broken network, to prove it really looks at it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from provisioner.render import render
from provisioner.settings import Settings
from tests.integration.templates.test_template_validators import SUBIQUITY_AUTOINSTALL_SCHEMA
from tests.support import network as samples
from tests.support.helpers import require_binary
from tests.support.install import make_settings

pytestmark = pytest.mark.integration

KSVALIDATOR = str(Path(sys.executable).with_name("ksvalidator"))
SAMPLES = list(samples.SAMPLES)
# ifupdown is what the Debian installer puts on the installed system, but not something to install on
# a machine whose network it would then claim: its ifup, unpacked from the Debian package (fetched once
# with apt-get download, like the lab's other payloads), only parses and prints (--no-act).
IFUPDOWN_CACHE = Path("/var/cache/prov-test/ifupdown")


def ifup_binary() -> str:
    found = shutil.which("ifup")
    if found:
        return found
    ifup = IFUPDOWN_CACHE / "root/sbin/ifup"  # Debian 12's package still ships /sbin
    if not ifup.exists() and shutil.which("apt-get") and shutil.which("dpkg"):
        IFUPDOWN_CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", "-q", "ifupdown"], cwd=IFUPDOWN_CACHE, capture_output=True,
                       timeout=120, check=False)
        debs = sorted(IFUPDOWN_CACHE.glob("ifupdown_*.deb"))
        if debs:
            subprocess.run(["dpkg", "-x", str(debs[-1]), str(IFUPDOWN_CACHE / "root")], capture_output=True,
                           timeout=60, check=False)
    if not ifup.exists():
        pytest.skip("ifupdown's ifup is neither installed nor downloadable (apt-get download ifupdown)")
    return str(ifup)


def ifup_dry_run(interfaces: Path, state: Path) -> subprocess.CompletedProcess[str]:
    state.mkdir(parents=True, exist_ok=True)
    return run(ifup_binary(), "--no-act", "--all", "--no-scripts", "--interfaces", str(interfaces),
               "--state-dir", str(state))


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return make_settings(tmp_path_factory.mktemp("netvalidators-data"))


def rendered(method: str, sample: str, settings: Settings) -> str:
    return render(samples.METHODS[method], samples.context(method, sample), settings)


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=120)


def expected(sample: str) -> dict[str, Any]:
    """What every renderer must carry: each static address, each VLAN id, each bond's members."""
    h = samples.host(sample)
    addrs = [n.address for n in h.nics if n.address] + [b.address for b in h.network.bonds if b.address] + \
        [v.address for v in h.network.vlans if v.address]
    return {"addresses": addrs, "vlan_ids": [v.id for v in h.network.vlans],
            "bonds": {b.name: len(b.members) for b in h.network.bonds}}


# --------------------------------------------------------------------------- kickstart
@pytest.mark.parametrize("sample", SAMPLES)
def test_kickstart_network_lines_pass_ksvalidator(shipped, tmp_path, sample):
    require_binary(KSVALIDATOR)
    text = rendered("kickstart", sample, shipped)
    f = tmp_path / "ks.cfg"
    f.write_text(text)
    versions = ["RHEL9", "RHEL10", "F40"] + ([] if "--ipv4-dns-search" in text else ["RHEL8"])
    for version in versions:
        r = run(KSVALIDATOR, "-e", "-v", version, str(f))
        assert r.returncode == 0, f"{version}: {r.stdout}{r.stderr}"
    lines = [ln for ln in text.splitlines() if ln.startswith("network ")]
    assert "--hostname=web01.lab.example.net --activate" in lines[0] and all("--activate" not in ln for ln in lines[1:])
    for addr in expected(sample)["addresses"]:
        assert f"--ip={addr.split('/')[0]} " in text
    # the rule kickstart_problems enforces is ksvalidator's: one line per device
    dup = tmp_path / "dup.cfg"
    dup.write_text(text.replace(lines[-1], lines[-1] + "\n" + lines[-1].replace("--vlanid=", "--vlanid=4")))
    assert run(KSVALIDATOR, "-v", "RHEL9", str(dup)).returncode != 0


# --------------------------------------------------------------------------- preseed
def _late_command(text: str) -> str:
    logical = text.replace("\\\n", " ")
    line = next(ln for ln in logical.splitlines() if ln.startswith("d-i preseed/late_command string "))
    return line.split(" string ", 1)[1]


@pytest.mark.parametrize("sample", SAMPLES)
def test_preseed_writes_a_network_cloud_init_reads_back(shipped, tmp_path, sample):
    require_binary("debconf-set-selections", "dash", "cloud-init")
    text = rendered("preseed", sample, shipped)
    f = tmp_path / "preseed.cfg"
    f.write_text(text)
    r = run("debconf-set-selections", "-c", str(f))
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    # The late_command as d-i runs it (a POSIX shell), against a fake /target: in-target and wget stubbed.
    target = tmp_path / "target"
    for d in ("etc/sudoers.d", "etc/ssh/sshd_config.d", "etc/network", "home/prov"):
        (target / d).mkdir(parents=True)
    script = "in_target() { :; }\nwget() { :; }\n" + \
        _late_command(text).replace("/target/", f"{target}/").replace("in-target ", "in_target ")
    r = subprocess.run(["dash", "-e", "-c", script], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    interfaces = (target / "etc/network/interfaces").read_text()
    assert interfaces.startswith("# prov:") and "source /etc/network/interfaces.d/*" in interfaces
    links = sorted(p.name for p in (target / "etc/systemd/network").iterdir())
    h = samples.host(sample)
    assert links == sorted(f"10-prov-{n.name}.link" for n in h.nics)
    first = (target / "etc/systemd/network" / f"10-prov-{h.nics[0].name}.link").read_text()
    assert f"[Match]\nMACAddress={h.nics[0].mac}\n\n[Link]\nName={h.nics[0].name}\n" in first
    # Debian's ifupdown: what it would do with the file (addresses, MTUs, the VLAN links it creates)
    r = ifup_dry_run(target / "etc/network/interfaces", tmp_path / "ifstate")
    assert r.returncode == 0, r.stderr
    cmds = r.stdout + r.stderr
    want = expected(sample)
    import ipaddress

    for addr in want["addresses"]:
        iface = ipaddress.IPv4Interface(addr)
        assert f"ip addr add {iface.ip}/{iface.netmask}" in cmds, cmds
    for v in h.network.vlans:
        assert f"type vlan id {v.id}" in cmds or f"vlan id {v.id}" in cmds, cmds
    for n in h.nics:
        if n.mtu:
            assert f"ip link set dev {n.name} mtu {n.mtu}" in cmds
    # cloud-init's ENI parser (addresses only: it reads no bond or VLAN options) agrees on the addresses
    out = tmp_path / "eni-out"
    r = run("cloud-init", "devel", "net-convert", "-p", str(target / "etc/network/interfaces"), "-k", "eni",
            "-d", str(out), "-D", "debian", "-O", "netplan")
    assert r.returncode == 0, r.stderr
    back = yaml.safe_load(next(out.rglob("*.yaml")).read_text())["network"]
    got_addrs = [a for kind in ("ethernets", "bonds", "vlans") for i in back.get(kind, {}).values()
                 for a in i.get("addresses", [])]
    assert sorted(got_addrs) == sorted(want["addresses"]), back
    if h.network.bonds:
        assert "ifenslave" in text.split("d-i pkgsel/include string ", 1)[1].splitlines()[0]
    if h.nics[0].address:  # the boot NIC static: the installer itself is reconfigured
        assert "; kill-all-dhcp; netcfg" in text and f"netcfg/get_ipaddress string {h.nics[0].address[:-3]}" in text


# --------------------------------------------------------------------------- netplan v2 documents
def _netplan_generate(tmp: Path, doc: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    (tmp / "etc/netplan").mkdir(parents=True, exist_ok=True)
    f = tmp / "etc/netplan/50-prov.yaml"
    f.write_text(yaml.safe_dump({"network": doc}))
    f.chmod(0o600)  # netplan warns about world-readable configs
    return run("netplan", "generate", "--root-dir", str(tmp))


def _networkd(tmp: Path) -> str:
    return "\n".join(p.read_text() for p in sorted((tmp / "run/systemd/network").glob("*")))


def _check_networkd(root: Path, sample: str) -> None:
    units = _networkd(root)
    want = expected(sample)
    for addr in want["addresses"]:
        assert f"Address={addr}" in units
    for vid in want["vlan_ids"]:
        assert f"Id={vid}" in units
    h = samples.host(sample)
    for n in h.nics:
        if any(n.mac in x for x in (units,)):
            assert f"MACAddress={n.mac}" in units


@pytest.mark.parametrize("sample", SAMPLES)
def test_autoinstall_network_passes_cloud_init_subiquity_and_netplan(shipped, tmp_path, sample):
    require_binary("cloud-init", "netplan")
    text = rendered("autoinstall", sample, shipped)
    f = tmp_path / "user-data"
    f.write_text(text)
    r = run("cloud-init", "schema", "--config-file", str(f))
    assert r.returncode == 0, r.stdout + r.stderr
    ai = yaml.safe_load(text)["autoinstall"]
    jsonschema.validate(ai, SUBIQUITY_AUTOINSTALL_SCHEMA)
    r = _netplan_generate(tmp_path / "root", ai["network"])
    assert r.returncode == 0 and "Error" not in r.stderr, r.stderr
    _check_networkd(tmp_path / "root", sample)
    if samples.host(sample).network.bonds:
        assert "Kind=bond" in _networkd(tmp_path / "root")


@pytest.mark.parametrize("sample", SAMPLES)
def test_nocloud_network_config_passes_netplan_and_cloud_init(shipped, tmp_path, sample):
    require_binary("cloud-init", "netplan")
    text = rendered("image", sample, shipped)
    doc = yaml.safe_load(text)
    assert doc["version"] == 2
    f = tmp_path / "network-config"
    f.write_text(text)
    help_text = run("cloud-init", "schema", "--help").stdout
    if "--schema-type" in help_text:  # cloud-init 23.1+: the network-config v2 JSON schema
        r = run("cloud-init", "schema", "--schema-type", "network-config", "--config-file", str(f))
        assert r.returncode == 0, r.stdout + r.stderr
    r = _netplan_generate(tmp_path / "root", doc)
    # gateway4 is deprecated in netplan (a warning) but what cloud-init's ENI renderer understands
    assert r.returncode == 0 and "Error" not in r.stderr, r.stderr
    _check_networkd(tmp_path / "root", sample)
    want = expected(sample)
    for kind, distro in (("eni", "debian"), ("sysconfig", "rhel"), ("netplan", "ubuntu"), ("networkd", "debian")):
        out = tmp_path / f"out-{kind}"
        r = run("cloud-init", "devel", "net-convert", "-p", str(f), "-k", "yaml", "-d", str(out), "-D", distro,
                "-O", kind)
        assert r.returncode == 0, f"{kind}: {r.stderr}"
        files = "\n".join(p.read_text() for p in out.rglob("*") if p.is_file())
        for addr in want["addresses"]:
            ip = addr.split("/")[0]
            assert ip in files, f"{kind}: {addr} missing\n{files}"
        if kind == "eni":
            # Debian 12's ifupdown: the default route as "gateway", the VLANs as NAME.ID with a raw device
            gw = next((d.get("gateway4") for k in ("ethernets", "bonds", "vlans")
                       for d in (doc.get(k) or {}).values() if d.get("gateway4")), None)
            if gw:
                assert re.search(rf"^\s+gateway {re.escape(gw)}$", files, re.M), files
            for v in samples.host(sample).network.vlans:
                assert f"vlan_id {v.id}" in files


def test_network_validators_refuse_broken_networks(tmp_path):
    require_binary("netplan", "cloud-init")
    bad = tmp_path / "interfaces"
    bad.write_text("auto eth0\niface eth0 inet statik\n    address 10.0.0.5/24\n")
    assert ifup_dry_run(bad, tmp_path / "ifstate").returncode != 0
    bad_vlan = {"version": 2, "ethernets": {"eth0": {"match": {"macaddress": samples.MAC0}, "set-name": "eth0"}},
                "vlans": {"eth0.5000": {"id": 5000, "link": "eth0"}}}
    assert _netplan_generate(tmp_path / "a", bad_vlan).returncode != 0
    dangling = {"version": 2, "vlans": {"v10": {"id": 10, "link": "nothere"}}}
    assert _netplan_generate(tmp_path / "b", dangling).returncode != 0
    f = tmp_path / "bad-address"
    f.write_text(yaml.safe_dump({"version": 2, "ethernets": {"e0": {"addresses": ["10.0.0.500/24"]}}}))
    r = run("cloud-init", "devel", "net-convert", "-p", str(f), "-k", "yaml", "-d", str(tmp_path / "o"), "-D",
            "debian", "-O", "eni")
    assert r.returncode != 0


def test_validators_are_the_real_programs():
    for prog in ("netplan", "cloud-init", "dash"):
        path = shutil.which(prog)
        if path is not None:
            assert path.startswith(("/usr/bin/", "/usr/sbin/", "/bin/", "/sbin/")), path
