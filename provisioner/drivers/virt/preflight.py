"""Host virtualisation pre-flight: can this host run KVM guests, and which kind?

Two halves:

* ``collect_facts(root)`` reads what the kernel exposes (``/proc/cpuinfo``,
  ``/sys/module/kvm*``, ``/dev/kvm``, ``/sys/class/iommu``, ...) under ``root``,
  so it runs on the live machine (``root="/"``) and on recorded trees in tests.
  This module imports only the standard library at module level: the whole
  file is shipped to an enrolled host over SSH (``python3 -`` reading it on
  stdin) and its ``__main__`` block prints the facts as JSON there.
* ``evaluate(facts, domcaps)`` turns facts plus libvirt's domain capabilities
  into a report: a verdict per generation (G1 VT-x/AMD-V, G2 SLAT, G3 nested,
  G4 IOMMU, G5 SR-IOV) and an overall verdict.

The cross-check matters: libvirt offers domain type ``kvm`` whenever
``/dev/kvm`` opens, which is also true for the software back end ``kvm_pvm``
(pagetable-based VM) where stock guest kernels do not boot. So the verdict
comes from the CPU flags and the loaded module, never from libvirt alone.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# <linux/kvm.h>: #define KVMIO 0xAE; KVM_GET_API_VERSION = _IO(KVMIO, 0x00).
KVM_GET_API_VERSION = 0xAE00
# The KVM API version has been 12 since Linux 2.6.22 and is frozen (Documentation/virt/kvm/api.rst 4.1).
KVM_API_VERSION = 12

HARDWARE_KVM = "hardware-kvm"
HARDWARE_KVM_NO_NESTED = "hardware-kvm-no-nested"
SOFTWARE_KVM_ONLY = "software-kvm-only"
EMULATION_ONLY = "emulation-only"

PASS = "pass"  # noqa: S105 - a verdict, not a password
FAIL = "fail"
WARN = "warn"

# KVM modules we know; kvm_pvm is a software (shadow-paging, no VT-x) back end.
_HW_MODULES = ("kvm_intel", "kvm_amd")
_SW_MODULES = ("kvm_pvm",)


# --------------------------------------------------------------------------- facts


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _cpuinfo(root: Path) -> dict[str, Any]:
    text = _read(root / "proc/cpuinfo") or ""
    vendor = ""
    model = ""
    flags: set[str] = set()
    vmx_flags: set[str] = set()
    for block in text.split("\n\n"):
        for line in block.splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "vendor_id" and not vendor:
                vendor = value.strip()
            elif key == "model name" and not model:
                model = value.strip()
            elif key == "flags":
                flags.update(value.split())
            elif key == "vmx flags":  # Linux >= 5.9 lists EPT etc. here instead of in "flags"
                vmx_flags.update(value.split())
        if vendor:
            break
    return {"vendor": vendor, "model": model, "flags": sorted(flags), "vmx_flags": sorted(vmx_flags)}


def _modules(root: Path) -> dict[str, dict[str, str]]:
    """Loaded KVM modules and their parameters (``/sys/module`` and ``/proc/modules``)."""
    found: dict[str, dict[str, str]] = {}
    sysmod = root / "sys/module"
    for name in ("kvm", *_HW_MODULES, *_SW_MODULES, "vhost_net"):
        mdir = sysmod / name
        if not mdir.is_dir():
            continue
        params: dict[str, str] = {}
        pdir = mdir / "parameters"
        if pdir.is_dir():
            for p in sorted(pdir.iterdir()):
                value = _read(p)
                if value is not None:
                    params[p.name] = value.strip()
        found[name] = params
    for line in (_read(root / "proc/modules") or "").splitlines():
        name = line.split(" ", 1)[0]
        if name.startswith("kvm") or name == "vhost_net":
            found.setdefault(name, {})
    return found


def _dev_kvm(root: Path, live: bool) -> dict[str, Any]:
    path = root / "dev/kvm"
    info: dict[str, Any] = {"present": path.exists(), "api_version": None, "error": None}
    if not info["present"]:
        return info
    if not live:
        # Recorded trees store the API version the recorder saw as the file's content.
        text = (_read(path) or "").strip()
        info["api_version"] = int(text) if text.isdigit() else None
        return info
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        info["error"] = f"open: {exc.strerror}"
        return info
    try:
        info["api_version"] = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    except OSError as exc:
        info["error"] = f"KVM_GET_API_VERSION: {exc.strerror}"
    finally:
        os.close(fd)
    return info


def _iommu(root: Path, cmdline: str) -> dict[str, Any]:
    cls = root / "sys/class/iommu"
    units = sorted(p.name for p in cls.iterdir()) if cls.is_dir() else []
    groups_dir = root / "sys/kernel/iommu_groups"
    groups = len(list(groups_dir.iterdir())) if groups_dir.is_dir() else 0
    args = [a for a in cmdline.split() if a.split("=", 1)[0] in ("intel_iommu", "amd_iommu", "iommu")]
    return {"units": units, "groups": groups, "cmdline": args}


def _meminfo(root: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (_read(root / "proc/meminfo") or "").splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            out[key.strip()] = int(parts[0])  # kB, or a count for HugePages_*
    return out


def _hugepages(root: Path, meminfo: dict[str, int]) -> dict[str, Any]:
    sizes: dict[str, int] = {}
    hdir = root / "sys/kernel/mm/hugepages"
    if hdir.is_dir():
        for d in sorted(hdir.iterdir()):
            n = (_read(d / "nr_hugepages") or "0").strip()
            sizes[d.name.removeprefix("hugepages-")] = int(n) if n.isdigit() else 0
    return {
        "total": meminfo.get("HugePages_Total", 0),
        "free": meminfo.get("HugePages_Free", 0),
        "size_kb": meminfo.get("Hugepagesize", 0),
        "pools": sizes,
    }


def _sriov(root: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    ndir = root / "sys/class/net"
    if ndir.is_dir():
        for nic in sorted(ndir.iterdir()):
            text = (_read(nic / "device/sriov_totalvfs") or "").strip()
            if text.isdigit():
                out[nic.name] = int(text)
    return out


def collect_facts(root: str | Path = "/", *, live: bool | None = None) -> dict[str, Any]:
    """Everything the verdicts need, read under ``root``. ``live`` probes /dev/kvm with an ioctl."""
    rootp = Path(root)
    if live is None:
        live = rootp.resolve() == Path("/")
    cmdline = (_read(rootp / "proc/cmdline") or "").strip()
    meminfo = _meminfo(rootp)
    return {
        "root": str(rootp),
        "live": live,
        "hostname": (_read(rootp / "proc/sys/kernel/hostname") or "").strip(),
        "cpu": _cpuinfo(rootp),
        "modules": _modules(rootp),
        "dev_kvm": _dev_kvm(rootp, live),
        "iommu": _iommu(rootp, cmdline),
        "vhost_net": (rootp / "dev/vhost-net").exists(),
        "hugepages": _hugepages(rootp, meminfo),
        "sriov": _sriov(rootp),
        "memory": {"total_kb": meminfo.get("MemTotal", 0), "available_kb": meminfo.get("MemAvailable", 0)},
    }


# --------------------------------------------------------------------------- verdicts


@dataclass
class Generation:
    id: str
    name: str
    verdict: str  # pass | fail | warn
    detail: str


@dataclass
class VirtReport:
    overall: str
    summary: str
    kvm_allowed: bool
    nested_allowed: bool
    cpu_vendor: str
    kvm_module: str | None
    generations: list[Generation]
    warnings: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    libvirt: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VirtReport:
        gens = [Generation(**g) for g in data.get("generations", [])]
        rest = {k: v for k, v in data.items() if k != "generations"}
        return cls(generations=gens, **rest)

    def rows(self) -> list[dict[str, str]]:
        """The table view: one row per generation plus the overall line."""
        rows = [{"check": f"{g.id} {g.name}", "verdict": g.verdict, "detail": g.detail} for g in self.generations]
        rows.append({"check": "overall", "verdict": self.overall, "detail": self.summary})
        return rows


def _yes(value: str | None) -> bool:
    # kvm_intel prints Y/N, kvm_amd prints 1/0 for booleans.
    return (value or "").strip().upper() in ("Y", "1", "YES", "ON")


def evaluate(facts: dict[str, Any], domcaps: dict[str, Any] | None = None) -> VirtReport:
    cpu = facts.get("cpu", {})
    flags = set(cpu.get("flags", [])) | set(cpu.get("vmx_flags", []))
    vendor_id = cpu.get("vendor", "")
    vendor = {"GenuineIntel": "intel", "AuthenticAMD": "amd", "HygonGenuine": "amd"}.get(vendor_id, vendor_id or "?")
    modules: dict[str, dict[str, str]] = facts.get("modules", {})
    dev = facts.get("dev_kvm", {})
    dev_ok = bool(dev.get("present")) and dev.get("api_version") == KVM_API_VERSION
    hw_flag = "vmx" if "vmx" in flags else ("svm" if "svm" in flags else None)
    hw_module = next((m for m in _HW_MODULES if m in modules), None)
    sw_module = next((m for m in _SW_MODULES if m in modules), None)
    kvm_module = hw_module or sw_module or ("kvm" if "kvm" in modules else None)
    warnings: list[str] = []

    if not dev.get("present"):
        dev_text = "/dev/kvm missing"
    elif dev.get("error"):
        dev_text = f"/dev/kvm unusable ({dev['error']})"
    elif dev.get("api_version") is None:
        dev_text = "/dev/kvm present (API version not probed)"
    else:
        dev_text = f"/dev/kvm API {dev['api_version']}"

    # G1: hardware virtualisation = CPU flag + the vendor module + a usable /dev/kvm.
    if hw_flag and hw_module and dev_ok:
        g1 = Generation("G1", "VT-x/AMD-V", PASS, f"{hw_flag} flag, {hw_module} loaded, {dev_text}")
    elif hw_flag and not hw_module:
        g1 = Generation("G1", "VT-x/AMD-V", FAIL, f"{hw_flag} flag but no kvm_intel/kvm_amd module; {dev_text}")
    elif hw_flag:
        g1 = Generation("G1", "VT-x/AMD-V", FAIL, f"{hw_flag} flag, {hw_module} loaded, but {dev_text}")
    else:
        why = "no vmx/svm CPU flag"
        if "hypervisor" in flags:
            why += " (running as a guest without nested virtualisation exposed)"
        if sw_module:
            why += f"; KVM back end is {sw_module} (software, no hardware virtualisation)"
        g1 = Generation("G1", "VT-x/AMD-V", FAIL, f"{why}; {dev_text}")

    # G2: SLAT. Intel: EPT (cpu flag "ept" / vmx flag, kvm_intel ept=Y); AMD: NPT (flag "npt", kvm_amd npt=1).
    if vendor == "intel" or hw_module == "kvm_intel":
        name, flag, param = "EPT", "ept", modules.get("kvm_intel", {}).get("ept")
    else:
        name, flag, param = "NPT", "npt", modules.get("kvm_amd", {}).get("npt")
    if g1.verdict != PASS:
        g2 = Generation("G2", "SLAT", FAIL, f"{name}: needs G1" + ("" if flag in flags else f"; no {flag} flag"))
    elif flag in flags and (param is None or _yes(param)):
        g2 = Generation("G2", "SLAT", PASS, f"{name} ({flag} flag" + (f", module ept/npt={param})" if param else ")"))
    elif flag in flags:
        g2 = Generation("G2", "SLAT", FAIL, f"{name} in the CPU but disabled in the module ({param})")
    else:
        g2 = Generation("G2", "SLAT", FAIL, f"no {name}: guests use shadow paging (slow)")

    # G3: nested virtualisation (the module parameter; off by default on older kernels).
    nested_param = modules.get(hw_module or "", {}).get("nested") if hw_module else None
    if g1.verdict == PASS and _yes(nested_param):
        g3 = Generation("G3", "nested", PASS, f"{hw_module} nested={nested_param}")
    elif g1.verdict == PASS:
        g3 = Generation("G3", "nested", FAIL, f"{hw_module} nested={nested_param or 'absent'}")
    else:
        g3 = Generation("G3", "nested", FAIL, "needs G1")

    # G4: IOMMU (device assignment). Units in /sys/class/iommu mean it is on.
    iommu = facts.get("iommu", {})
    if iommu.get("units"):
        g4 = Generation("G4", "IOMMU", PASS, f"{len(iommu['units'])} unit(s), {iommu.get('groups', 0)} group(s)")
    elif iommu.get("cmdline"):
        g4 = Generation("G4", "IOMMU", FAIL, f"requested ({' '.join(iommu['cmdline'])}) but no unit in sysfs")
    else:
        g4 = Generation("G4", "IOMMU", FAIL, "no IOMMU unit (enable VT-d/AMD-Vi and intel_iommu=on)")

    # G5: SR-IOV capable NICs; virtual functions only help with an IOMMU.
    sriov = {k: v for k, v in facts.get("sriov", {}).items() if v > 0}
    if sriov and g4.verdict == PASS:
        g5 = Generation("G5", "SR-IOV", PASS, ", ".join(f"{k}: {v} VFs" for k, v in sriov.items()))
    elif sriov:
        g5 = Generation("G5", "SR-IOV", WARN, "SR-IOV NICs but no IOMMU: " + ", ".join(sriov))
    else:
        g5 = Generation("G5", "SR-IOV", FAIL, "no SR-IOV capable NIC")

    if g1.verdict == PASS and g3.verdict == PASS:
        overall, summary = HARDWARE_KVM, "hardware KVM with nested virtualisation"
    elif g1.verdict == PASS:
        overall, summary = HARDWARE_KVM_NO_NESTED, "hardware KVM without nested virtualisation"
    elif dev_ok or (dev.get("present") and kvm_module):
        overall = SOFTWARE_KVM_ONLY
        summary = f"software KVM only ({kvm_module or 'unknown module'}), no hardware virtualisation: use TCG (qemu)"
    else:
        overall, summary = EMULATION_ONLY, "no usable KVM: emulation (TCG) only"
    if g1.verdict == PASS and g2.verdict != PASS:
        warnings.append("no SLAT: KVM guests run with shadow page tables")

    libvirt_info: dict[str, Any] = dict(domcaps or {})
    if domcaps is not None:
        offers_kvm = "kvm" in domcaps.get("domain_types", [])
        libvirt_info["offers_kvm"] = offers_kvm
        if offers_kvm and g1.verdict != PASS:
            warnings.append(
                f"libvirt offers domain type 'kvm', but the host has no hardware virtualisation "
                f"(KVM back end: {kvm_module or 'none'}); stock guests do not boot under it, so kvm is refused",
            )
        if not offers_kvm and g1.verdict == PASS:
            warnings.append("hardware KVM present but libvirt does not offer domain type 'kvm' (permissions?)")
    if not facts.get("vhost_net"):
        warnings.append("no /dev/vhost-net: virtio-net runs in userspace (slower)")

    return VirtReport(
        overall=overall,
        summary=summary,
        kvm_allowed=overall in (HARDWARE_KVM, HARDWARE_KVM_NO_NESTED),
        nested_allowed=overall == HARDWARE_KVM,
        cpu_vendor=vendor,
        kvm_module=kvm_module,
        generations=[g1, g2, g3, g4, g5],
        warnings=warnings,
        facts=facts,
        libvirt=libvirt_info,
    )


# --------------------------------------------------------------------------- remote


def script_source() -> str:
    """This file's source: the self-contained script shipped to a remote host."""
    return Path(__file__).read_text()


def remote_facts(target: str, *, ssh_options: list[str] | None = None, timeout: float = 30.0) -> dict[str, Any]:
    """Run ``collect_facts`` on ``target`` (``[user@]host``) over SSH: ``ssh target python3 -``.

    Raises RuntimeError with ssh's stderr on failure; callers wrap it in a prov error.
    """
    cmd = ["ssh", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", *(ssh_options or []), target, "python3", "-"]
    proc = subprocess.run(cmd, input=script_source(), capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ssh {target}: exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
    data = json.loads(proc.stdout)
    if not isinstance(data, dict):
        raise RuntimeError(f"ssh {target}: unexpected output")
    return data


if __name__ == "__main__":  # pragma: no cover - runs on the remote host
    sys.stdout.write(json.dumps(collect_facts(sys.argv[1] if len(sys.argv) > 1 else "/")) + "\n")
