"""Template checks: missing variables named, sandbox escapes refused, uploads stored and used."""

from __future__ import annotations

import pytest

from provisioner import templates_catalog as cat
from provisioner.errors import InvalidInput, TemplateError
from provisioner.render import render
from tests.support.install import make_settings


@pytest.fixture
def s(tmp_path):
    settings = make_settings(tmp_path / "data")
    settings.ensure_dirs()
    return settings


def test_all_shipped_templates_pass_the_startup_check(s):
    infos = cat.check_all(s)
    assert infos and all(i.ok for i in infos), [(i.kind, i.name, i.error) for i in infos if not i.ok]
    assert all(t.ok for t in cat.list_templates(s))


@pytest.mark.parametrize(
    ("source", "variable"),
    [("#!ipxe\necho {{ hots.name }}\n", "hots"),
     ("#!ipxe\n{% if false %}{{ never_defined }}{% endif %}\n", "never_defined"),
     ("#!ipxe\necho {{ host.name }} {{ tokn }}\n", "tokn")],
)
def test_missing_variable_is_rejected_by_name(s, source, variable):
    with pytest.raises(TemplateError) as exc:
        cat.upload("ipxe", "custom", source, s)
    assert variable in exc.value.message
    assert exc.value.http_status == 422
    assert not (s.user_templates_dir / "ipxe" / "custom.j2").exists()


@pytest.mark.parametrize(
    "source",
    ["#!ipxe\n{{ ''.__class__.__mro__ }}\n",
     "#!ipxe\n{{ host.__class__ }}\n",
     "#!ipxe\n{{ host['__class__'] }}\n",
     "#!ipxe\n{% for c in ''.__class__.__mro__[1].__subclasses__() %}{{ c }}{% endfor %}\n",
     "#!ipxe\n{{ cycler.__init__.__globals__ }}\n",
     "#!ipxe\n{{ lipsum.__globals__['os'] }}\n",
     "#!ipxe\n{% if false %}{{ host._sa_instance_state }}{% endif %}\n"],
)
def test_sandbox_escapes_are_refused(s, source):
    with pytest.raises(TemplateError) as exc:
        cat.upload("ipxe", "evil", source, s)
    assert "sandbox" in exc.value.message
    assert not (s.user_templates_dir / "ipxe" / "evil.j2").exists()


def test_sandbox_refuses_internals_at_render_time_too(s):
    from provisioner.render import render_string

    with pytest.raises(TemplateError, match="sandbox"):
        render_string("{{ ''.__class__.__mro__ }}", {})


@pytest.mark.parametrize(
    ("kind", "source", "reason"),
    [("ipxe", "echo no shebang {{ host.name }}\n", "#!ipxe"),
     ("autoinstall", "autoinstall: {}\n", "#cloud-config"),
     ("autoinstall", "#cloud-config\nhostname: x\n", "autoinstall"),
     ("kickstart", "bogus_command --x\n", "kickstart"),
     ("ipxe", "#!ipxe\n{% for %}\n", "syntax"),
     ("ipxe", "#!ipxe\n{{ host.name | nosuchfilter }}\n", "nosuchfilter")],
)
def test_wrong_output_for_the_kind_is_refused(s, kind, source, reason):
    name = "user-data" if kind == "autoinstall" else "custom"
    with pytest.raises(TemplateError) as exc:
        cat.upload(kind, name, source, s)
    assert reason in exc.value.message


@pytest.mark.parametrize(("kind", "name"), [("ipxe", "../x"), ("ipxe", "a/b"), ("bogus", "x"), ("ipxe", ".hidden"),
                                            ("ipxe", "x.j2"), ("ipxe", "")])
def test_bad_kind_or_name_is_refused(s, kind, name):
    with pytest.raises(InvalidInput):
        cat.upload(kind, name, "#!ipxe\n", s)


def test_upload_overrides_the_shipped_template_at_once(s):
    ctx = cat.context_for("ipxe", "local")
    assert "sanboot" in render("ipxe/local.j2", ctx, s)  # compiled and cached
    info = cat.upload("ipxe", "local", b"#!ipxe\necho site policy for {{ host.name }}\nexit\n", s)
    assert info.overrides_builtin and info.source == "user"
    assert render("ipxe/local.j2", ctx, s) == "#!ipxe\necho site policy for web01\nexit\n"
    listed = {(t.kind, t.name): t for t in cat.list_templates(s)}
    assert listed[("ipxe", "local")].source == "user"


def test_user_template_may_use_the_shared_cmdline_macro(s):
    src = ('#!ipxe\n{% from "common/cmdline.j2" import installer_args with context %}\n'
           "kernel {{ urls.kernel }} {{ installer_args() }}\ninitrd {{ urls.initrd }}\nboot\n")
    cat.upload("ipxe", "install", src, s)
    out = render("ipxe/install.j2", cat.sample_context("preseed"), s)
    assert "auto=true priority=critical" in out


def test_broken_user_template_is_reported_by_the_startup_check(s):
    d = s.user_templates_dir / "pxelinux"
    d.mkdir(parents=True)
    (d / "local.j2").write_text("DEFAULT {{ nope }}\n")
    bad = [i for i in cat.check_all(s) if not i.ok]
    assert [(i.kind, i.name) for i in bad] == [("pxelinux", "local")]
    assert "nope" in (bad[0].error or "")


def test_oversized_or_binary_upload_is_refused(s):
    with pytest.raises(InvalidInput):
        cat.upload("ipxe", "big", b"#!ipxe\n" + b"#" * (cat.MAX_TEMPLATE_BYTES + 1), s)
    with pytest.raises(InvalidInput):
        cat.upload("ipxe", "bin", b"#!ipxe\n\xff\xfe", s)
