"""Fixtures for the virt unit tests: libvirt's in-process test driver and reports from recorded trees."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.drivers.virt import preflight as pf
from provisioner.drivers.virt.libvirt import VirtConnection, open_connection

TREES = Path(__file__).resolve().parents[3] / "support" / "virt_trees"
TEST_URI = "test:///default"


def tree_report(tree: str) -> pf.VirtReport:
    return pf.evaluate(pf.collect_facts(TREES / tree), {"domain_types": ["qemu", "kvm"]})


@pytest.fixture
def hw_report() -> pf.VirtReport:
    return tree_report("intel_ept_nested")


@pytest.fixture
def no_nested_report() -> pf.VirtReport:
    return tree_report("amd_npt_no_nested")


@pytest.fixture
def sw_report() -> pf.VirtReport:
    return tree_report("software_kvm_pvm")


@pytest.fixture
def conn() -> Iterator[VirtConnection]:
    """test:///default is one shared in-process instance: tests use unique names and clean up."""
    c = open_connection(TEST_URI)
    before = {g["name"] for g in c.list_guests()}
    yield c
    for g in c.list_guests():
        if g["name"] not in before:
            c.delete_guest(g["name"])
    c.close()


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:6]


def virt_xml_validate(xml: str, schema: str, tmp_path: Path) -> None:
    """libvirt's own RelaxNG schemas (virt-xml-validate from libvirt-clients)."""
    exe = shutil.which("virt-xml-validate")
    if exe is None:
        pytest.skip("virt-xml-validate not installed")
    path = tmp_path / f"{schema}-{uuid.uuid4().hex[:6]}.xml"
    path.write_text(xml)
    proc = subprocess.run([exe, str(path), schema], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, f"{schema} XML does not validate:\n{proc.stderr}\n{xml}"
