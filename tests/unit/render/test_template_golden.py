"""Golden files for every shipped template (fixed sample context) and the iPXE script checker.

``PROV_UPDATE_GOLDEN=1`` (or ``pytest --update-golden``) rewrites tests/golden/templates/.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner import templates_catalog as cat
from provisioner.render import render
from provisioner.settings import Settings
from tests.support.helpers import assert_golden
from tests.support.install import make_settings
from tests.support.ipxe_script import IpxeSyntaxError, parse

TEMPLATES = Path(__file__).resolve().parents[3] / "provisioner" / "templates"


def _cases() -> list[tuple[str, str, str | None]]:
    out: list[tuple[str, str, str | None]] = []
    for kind in cat.KINDS:
        for path in sorted((TEMPLATES / kind).glob("*.j2")):
            name = path.name[:-3]
            if kind in ("ipxe", "pxelinux", "grub") and name == "install":
                out += [(kind, name, m) for m in cat.INSTALL_METHODS]
            else:
                out.append((kind, name, None))
    return out


CASES = _cases()


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return make_settings(tmp_path_factory.mktemp("golden-data"))  # empty user templates dir


def render_case(kind: str, name: str, method: str | None, settings: Settings) -> str:
    return render(f"{kind}/{name}.j2", cat.context_for(kind, name, method), settings)


def test_every_kind_has_templates():
    kinds = {c[0] for c in CASES}
    assert kinds == set(cat.KINDS)
    assert len(CASES) >= 20


@pytest.mark.parametrize(("kind", "name", "method"), CASES, ids=lambda v: str(v))
def test_golden(kind, name, method, shipped):
    text = render_case(kind, name, method, shipped)
    suffix = f".{method}" if method else ""
    assert_golden(f"templates/{kind}/{name}{suffix}.txt", text)


@pytest.mark.parametrize(("kind", "name", "method"), [c for c in CASES if c[0] == "ipxe"], ids=lambda v: str(v))
def test_ipxe_scripts_parse(kind, name, method, shipped):
    script = parse(render_case(kind, name, method, shipped))
    names = script.names()
    # every script ends somewhere explicit: no silent hang in firmware
    assert "exit" in names
    if name == "install":
        assert {"kernel", "initrd", "boot", "imgfetch", "prompt", "shell"} <= set(names)
        fetch = next(c for c in script.commands if c[0] == "imgfetch")
        assert any("/report?event=error" in a for a in fetch)
        kernel = next(c for c in script.commands if c[0] == "kernel")
        assert any(a.startswith("prov.token=") for a in kernel)
        assert any(a.startswith("prov.url=") for a in kernel)
    if name == "local":
        assert "sanboot" in names
    if name == "boot":
        assert "chain" in names


@pytest.mark.parametrize(
    "bad",
    ["echo hi\n", "#!ipxe\ngoto nowhere\n", "#!ipxe\nfrobnicate\n", "#!ipxe\nkernel\n",
     "#!ipxe\necho ${prov_x}\n", "#!ipxe\n:a\n:a\n"],
)
def test_ipxe_checker_rejects(bad):
    with pytest.raises(IpxeSyntaxError):
        parse(bad)


def test_install_cmdlines_per_method(shipped):
    ks = render_case("ipxe", "install", "kickstart", shipped)
    assert f"inst.ks={cat.sample_context()['urls']['config']}" in ks
    ps = render_case("pxelinux", "install", "preseed", shipped)
    assert "auto=true priority=critical url=" in ps
    ai = render_case("grub", "install", "autoinstall", shipped)
    assert "autoinstall 'ds=nocloud-net;s=http://" in ai  # ";" quoted for GRUB
    ai_ipxe = render_case("ipxe", "install", "autoinstall", shipped)
    assert " ds=nocloud-net;s=http://" in ai_ipxe
