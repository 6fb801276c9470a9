"""Pre-flight verdicts against recorded trees, the live machine, and the shipped remote script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from provisioner.drivers.virt import preflight as pf

TREES = Path(__file__).resolve().parents[3] / "support" / "virt_trees"
LIBVIRT_KVM = {"domain_types": ["qemu", "kvm"], "host_model": "Skylake-Server", "host_model_features": ["vmx"]}


def report(tree: str, domcaps: dict | None = LIBVIRT_KVM) -> pf.VirtReport:
    return pf.evaluate(pf.collect_facts(TREES / tree), domcaps)


def verdicts(r: pf.VirtReport) -> dict[str, str]:
    return {g.id: g.verdict for g in r.generations}


def test_intel_with_ept_and_nested() -> None:
    r = report("intel_ept_nested")
    assert r.overall == pf.HARDWARE_KVM
    assert r.kvm_allowed and r.nested_allowed
    assert r.cpu_vendor == "intel" and r.kvm_module == "kvm_intel"
    assert verdicts(r) == {"G1": "pass", "G2": "pass", "G3": "pass", "G4": "pass", "G5": "pass"}
    assert "EPT" in r.generations[1].detail
    assert r.facts["sriov"] == {"enp59s0f0": 64}
    assert r.facts["hugepages"]["total"] == 16
    assert r.facts["vhost_net"] is True
    assert "intel_iommu=on" in r.facts["iommu"]["cmdline"]
    assert not any("offers domain type" in w for w in r.warnings)


def test_amd_with_npt_without_nested() -> None:
    r = report("amd_npt_no_nested")
    assert r.overall == pf.HARDWARE_KVM_NO_NESTED
    assert r.kvm_allowed and not r.nested_allowed
    assert r.cpu_vendor == "amd" and r.kvm_module == "kvm_amd"
    v = verdicts(r)
    assert (v["G1"], v["G2"], v["G3"], v["G4"], v["G5"]) == ("pass", "pass", "fail", "fail", "fail")
    assert "NPT" in r.generations[1].detail
    assert "nested=0" in r.generations[2].detail


def test_host_without_dev_kvm_is_emulation_only() -> None:
    r = report("no_dev_kvm", {"domain_types": ["qemu"]})
    assert r.overall == pf.EMULATION_ONLY
    assert not r.kvm_allowed and not r.nested_allowed
    assert r.kvm_module is None
    assert "/dev/kvm missing" in r.generations[0].detail
    assert "hypervisor" in r.generations[0].detail or "guest" in r.generations[0].detail


def test_software_kvm_is_not_trusted_even_when_libvirt_offers_kvm() -> None:
    r = report("software_kvm_pvm")
    assert r.overall == pf.SOFTWARE_KVM_ONLY
    assert not r.kvm_allowed and not r.nested_allowed
    assert r.kvm_module == "kvm_pvm"
    assert r.libvirt["offers_kvm"] is True
    assert any("libvirt offers domain type 'kvm'" in w and "kvm_pvm" in w for w in r.warnings)
    assert verdicts(r)["G1"] == "fail"


def test_flag_without_module_is_not_hardware_kvm(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text((TREES / "intel_ept_nested/proc/cpuinfo").read_text())
    r = pf.evaluate(pf.collect_facts(tmp_path), None)
    assert r.overall == pf.EMULATION_ONLY
    assert "no kvm_intel/kvm_amd module" in r.generations[0].detail


def test_report_round_trips_and_has_rows() -> None:
    r = report("amd_npt_no_nested")
    again = pf.VirtReport.from_dict(json.loads(json.dumps(r.to_dict())))
    assert again == r
    rows = r.rows()
    assert [row["check"].split()[0] for row in rows] == ["G1", "G2", "G3", "G4", "G5", "overall"]


def test_this_machine() -> None:
    """The live probe: /dev/kvm opened + KVM_GET_API_VERSION. With kvm_pvm it must be software-kvm-only."""
    facts = pf.collect_facts("/")
    assert facts["live"] is True
    r = pf.evaluate(facts, LIBVIRT_KVM)
    if Path("/sys/module/kvm_pvm").is_dir():
        assert facts["dev_kvm"]["api_version"] == pf.KVM_API_VERSION
        assert r.overall == pf.SOFTWARE_KVM_ONLY
        assert not r.kvm_allowed
    else:
        assert r.overall in (pf.HARDWARE_KVM, pf.HARDWARE_KVM_NO_NESTED, pf.SOFTWARE_KVM_ONLY, pf.EMULATION_ONLY)


def test_remote_script_is_self_contained() -> None:
    """What ships over SSH: the module's source on stdin of a bare ``python3 -`` (no provisioner on sys.path)."""
    proc = subprocess.run(
        [sys.executable, "-I", "-", str(TREES / "intel_ept_nested")],
        input=pf.script_source(), capture_output=True, text=True, check=True, timeout=30, cwd="/",
    )
    facts = json.loads(proc.stdout)
    assert facts == pf.collect_facts(TREES / "intel_ept_nested")
    assert pf.evaluate(facts).overall == pf.HARDWARE_KVM


def test_remote_facts_reports_ssh_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pf.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 255, "", "no route"))
    with pytest.raises(RuntimeError, match="no route"):
        pf.remote_facts("root@kvm1")
