"""The catalog of install and boot templates: list, check, upload, render for a host.

Templates live in ``templates/<kind>/<name>.j2`` (shipped) and in
``{data_dir}/templates/<kind>/<name>.j2`` (operators' own; same name = override).
Every template is render-checked against a fixed sample context at start-up
and on upload (an upload in a child process killed at a deadline, with the
tighter render limits of render_limits.UPLOAD_LIMITS): a syntax error, a variable the context does not have (named in
the error), access to internals (anything starting with ``_``) or output that
is not of its kind (an iPXE script without ``#!ipxe``...) is refused.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jinja2
import yaml
from jinja2 import meta, nodes
from sqlmodel import Session

from provisioner import isolated
from provisioner.conductor.boot_context import boot_context
from provisioner.conductor.netboot import preview_boot_config
from provisioner.drivers.boot.configs import BOOT_KINDS
from provisioner.drivers.deploy.base import CONFIG_METHODS, INSTALL_METHODS
from provisioner.drivers.deploy.templates import TemplateDeploy
from provisioner.errors import InvalidInput, TemplateError
from provisioner.models import Host, Profile
from provisioner.netview import empty_view
from provisioner.render import get_env, render_string
from provisioner.render_limits import DEFAULT_LIMITS, UPLOAD_LIMITS, LimitExceeded, Limits
from provisioner.settings import Settings, get_settings

log = logging.getLogger(__name__)

# The install methods (drivers/deploy/base.py) whose installer fetches a config file have one kind each.
INSTALL_KINDS = CONFIG_METHODS
KINDS = (*INSTALL_KINDS, *BOOT_KINDS)
# Which template kind serves each profile install method.
METHOD_KIND = {m: m for m in CONFIG_METHODS}
DEFAULT_NAME = {"kickstart": "default", "preseed": "default", "autoinstall": "user-data"}

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
MAX_TEMPLATE_BYTES = 256 * 1024

# A fixed context: golden files and upload checks must not depend on the clock or a DB.
SAMPLE_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB3ZbQ2yq1f6vC8dK4mQ9oXo9t0w8ExampleKeyOnly0 admin@example"
SAMPLE_TOKEN = "7.SAMPLE-token_0123456789abcdefghijklmnopqrstuvw"  # noqa: S105 - not a secret


def sample_context(install_method: str = "kickstart", os_family: str | None = None) -> dict[str, Any]:
    base = "http://prov.example.net:8700"
    family = os_family or {"kickstart": "rhel", "autoinstall": "ubuntu"}.get(install_method, "debian")
    mirror = {"rhel": "https://dl.rockylinux.org/pub/rocky/9/BaseOS/x86_64/os/",
              "ubuntu": "http://archive.ubuntu.com/ubuntu"}.get(family, "http://deb.debian.org/debian")
    ib = f"{base}/install/v1/{SAMPLE_TOKEN}"
    kernel = f"{base}/boot/images/{family}/vmlinuz"
    initrd = f"{base}/boot/images/{family}/initrd.img"
    nic = {"mac": "52:54:00:12:34:56", "mac_hyphen": "52-54-00-12-34-56", "name": "eth0", "ip": "10.10.0.11",
           "boot": True}
    return {
        "base_url": base,
        "token": SAMPLE_TOKEN,
        "mac": nic["mac"],
        "nic": nic,
        "nics": [nic],
        "network": empty_view(),  # nothing declared: DHCP on the boot NIC (tests/golden/network/ for the rest)
        "urls": {
            "config": f"{ib}/config",
            "nocloud": f"{ib}/",
            "events": f"{ib}/events",
            "report": f"{ib}/report",
            "boot_script": f"{base}/boot/ipxe/{nic['mac']}",
            "kernel": kernel,
            "initrd": initrd,
            "kernel_grub": f"(http,prov.example.net:8700)/boot/images/{family}/vmlinuz",
            "initrd_grub": f"(http,prov.example.net:8700)/boot/images/{family}/initrd.img",
        },
        "host": {"id": 7, "name": "web01", "hostname": "web01", "domain": "lab.example.net",
                 "fqdn": "web01.lab.example.net", "roles": ["web"], "ip": "10.10.0.11"},
        "profile": {"name": f"{family}-{install_method}", "os_family": family, "install_method": install_method,
                    "kernel_url": kernel, "initrd_url": initrd,
                    "image_url": f"{base}/boot/images/debian-12.qcow2" if install_method == "image" else "",
                    "image_checksum": "sha256:" + "0" * 64 if install_method == "image" else "",
                    "kernel_args": "console=ttyS0,115200n8", "container_engine": "docker"},
        "install": {"admin_user": "prov", "ssh_authorized_keys": [SAMPLE_KEY], "timezone": "Europe/Berlin",
                    "locale": "en_US.UTF-8", "keyboard": "us", "mirror": mirror,
                    "mirror_scheme": mirror.split("://", 1)[0], "mirror_host": mirror.split("/")[2],
                    "mirror_dir": "/" + mirror.split("/", 3)[3], "proxy": "http://10.10.0.1:3142",
                    "disk": "/dev/vda", "release": {"rhel": "9", "ubuntu": "noble"}.get(family, "bookworm"),
                    "packages": ["vim", "htop"]},
    }


def discovery_sample() -> dict[str, Any]:
    return {"mac": "52:54:00:ab:cd:ef", "base_url": "http://prov.example.net:8700"}


def boot_sample() -> dict[str, Any]:
    return {"base_url": "http://prov.example.net:8700"}


def context_for(kind: str, name: str, install_method: str | None = None) -> dict[str, Any]:
    """The sample context a template of this kind and name is checked (and golden-rendered) with."""
    if kind in BOOT_KINDS and name == "discover":
        return discovery_sample()
    if kind == "ipxe" and name == "boot":
        return boot_sample()
    method = install_method or {"preseed": "preseed", "autoinstall": "autoinstall"}.get(kind, "kickstart")
    return sample_context(method)


@dataclass
class TemplateInfo:
    kind: str
    name: str
    source: str  # builtin | user
    path: str
    overrides_builtin: bool = False
    ok: bool | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def template_file(kind: str, name: str) -> str:
    check_kind_name(kind, name)
    return f"{kind}/{name}.j2"


def check_kind_name(kind: str, name: str) -> None:
    if kind not in KINDS:
        raise InvalidInput(field="kind", reason=f"unknown template kind {kind!r} (one of {', '.join(KINDS)})")
    if not NAME_RE.match(name) or name.endswith(".j2"):
        raise InvalidInput(field="name", reason=f"invalid template name {name!r} (letters, digits, . _ -; "
                                                f"no path, no .j2 suffix)")


def _scan(root: Path) -> dict[tuple[str, str], Path]:
    found: dict[tuple[str, str], Path] = {}
    for kind in KINDS:
        d = root / kind
        if d.is_dir():
            for p in sorted(d.glob("*.j2")):
                if p.is_file() and NAME_RE.match(p.name[:-3]):
                    found[(kind, p.name[:-3])] = p
    return found


_last_check: dict[tuple[str, str], str | None] = {}
_verdicts: dict[tuple[str, ...], str | None] = {}


def list_templates(settings: Settings | None = None, kind: str | None = None) -> list[TemplateInfo]:
    s = settings or get_settings()
    builtin = _scan(s.templates_dir)
    user = _scan(s.user_templates_dir)
    out: list[TemplateInfo] = []
    for key in sorted(set(builtin) | set(user)):
        if kind is not None and key[0] != kind:
            continue
        path = user.get(key) or builtin[key]
        info = TemplateInfo(kind=key[0], name=key[1], source="user" if key in user else "builtin", path=str(path),
                            overrides_builtin=key in user and key in builtin)
        if key in _last_check:
            info.error = _last_check[key]
            info.ok = info.error is None
        out.append(info)
    return out


# --------------------------------------------------------------------------- checks
def _static_check(kind: str, name: str, source: str, context: dict[str, Any], settings: Settings) -> None:
    """Refuse what the sandbox would only catch on the branch that runs: internals and unknown names."""
    label = f"{kind}/{name}"
    env = get_env(settings)
    try:
        ast = env.parse(source)  # parse and analyse only; nothing is executed
        undeclared = meta.find_undeclared_variables(ast)
    except jinja2.TemplateSyntaxError as exc:  # includes unknown filters/tests (TemplateAssertionError)
        raise TemplateError(template=label, reason=f"syntax error line {exc.lineno}: {exc.message}") from exc
    except LimitExceeded as exc:  # nested too deeply (checked while parsing)
        raise TemplateError(template=label, reason=f"over a render limit: {exc}") from exc
    except RecursionError as exc:
        raise TemplateError(template=label, reason="over a render limit: nested too deeply") from exc
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        attr: str | None = None
        if isinstance(node, nodes.Getattr):
            attr = node.attr
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            attr = node.arg.value
        if attr is not None and attr.startswith("_"):
            raise TemplateError(template=label, reason=f"not allowed in the sandbox: attribute {attr!r}")
    missing = sorted(undeclared - set(context) - set(env.globals))
    if missing:
        raise TemplateError(template=label, reason=f"missing variable {missing[0]!r}", variable=missing[0],
                            missing=missing)


def _kind_check(kind: str, name: str, text: str) -> None:
    """The rendered output must look like its kind (full validators run in the test suite)."""
    label = f"{kind}/{name}"
    if kind == "ipxe" and not text.startswith("#!ipxe\n"):
        raise TemplateError(template=label, reason="an iPXE script must start with '#!ipxe'")
    if kind == "autoinstall" and name != "meta-data" and not text.startswith("#cloud-config\n"):
        raise TemplateError(template=label, reason="cloud-init user-data must start with '#cloud-config'")
    if kind == "autoinstall":
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise TemplateError(template=label, reason=f"output is not valid YAML: {exc}") from exc
        if name == "user-data" and not (isinstance(data, dict) and isinstance(data.get("autoinstall"), dict)):
            raise TemplateError(template=label, reason="user-data has no 'autoinstall:' mapping")
    if kind == "kickstart":
        _kickstart_check(label, text)


def _kickstart_check(label: str, text: str) -> None:
    try:  # pykickstart is what ksvalidator uses; optional at run time (a dev dependency)
        from pykickstart.errors import KickstartError
        from pykickstart.parser import KickstartParser
        from pykickstart.version import makeVersion
    except ImportError:  # pragma: no cover
        return
    parser = KickstartParser(makeVersion(), followIncludes=False, errorsAreFatal=True)
    try:
        parser.readKickstartFromString(text)
    except KickstartError as exc:
        raise TemplateError(template=label, reason=f"kickstart does not validate: {exc}") from exc


def _contexts(kind: str, name: str) -> list[dict[str, Any]]:
    # Boot-kind install templates branch on the install method: exercise every branch.
    if kind in BOOT_KINDS and name not in ("discover", "boot"):
        return [sample_context(m) for m in INSTALL_METHODS]
    return [context_for(kind, name)]


def check_source(kind: str, name: str, source: str, settings: Settings | None = None,
                 limits: Limits = DEFAULT_LIMITS) -> str:
    """Check a template body; returns its rendering with the (first) sample context or raises TemplateError."""
    s = settings or get_settings()
    check_kind_name(kind, name)
    label = f"{kind}/{name}"
    first: str | None = None
    for ctx in _contexts(kind, name):
        _static_check(kind, name, source, ctx, s)
        text = render_string(source, ctx, name=label, settings=s, limits=limits)
        _kind_check(kind, name, text)
        first = text if first is None else first
    assert first is not None
    return first


def check_all(settings: Settings | None = None) -> list[TemplateInfo]:
    """Render-check every template (start-up). Errors are logged and kept for ``list_templates``."""
    s = settings or get_settings()
    infos = list_templates(s)
    for info in infos:
        try:
            source = Path(info.path).read_text()
            # Same body, same search path: same verdict (the API starts many times in one test process).
            key = (info.kind, info.name, str(s.templates_dir), str(s.user_templates_dir),
                   hashlib.sha256(source.encode()).hexdigest())
            if key not in _verdicts:
                try:
                    check_source(info.kind, info.name, source, s)
                    _verdicts[key] = None
                except (TemplateError, InvalidInput) as exc:
                    _verdicts[key] = exc.message
            info.error = _verdicts[key]
        except (OSError, UnicodeDecodeError) as exc:
            info.error = f"cannot read {info.path}: {exc}"
        info.ok = info.error is None
        if info.error:
            log.error("template %s/%s (%s) failed its check: %s", info.kind, info.name, info.source, info.error)
        _last_check[(info.kind, info.name)] = info.error
    return infos


def _check_in_child(kind: str, name: str, source: str, settings: Settings) -> None:
    check_source(kind, name, source, settings, UPLOAD_LIMITS)


def check_upload(kind: str, name: str, source: str, settings: Settings) -> None:
    """check_source for an operator's upload, in a child process: a template that would spin or
    eat memory is killed at ``settings.template_check_timeout`` and refused, the API unharmed."""
    try:
        isolated.call(_check_in_child, kind, name, source, settings, timeout=settings.template_check_timeout)
    except isolated.IsolatedFailure as exc:
        reason = f"over a render limit: rendering {exc.reason}" if exc.timed_out else f"check {exc.reason}"
        raise TemplateError(template=f"{kind}/{name}", reason=reason) from exc


def upload(kind: str, name: str, source: str | bytes, settings: Settings | None = None) -> TemplateInfo:
    """Check an operator's template and store it in the user templates dir (atomic replace)."""
    s = settings or get_settings()
    check_kind_name(kind, name)
    if isinstance(source, bytes):
        if len(source) > MAX_TEMPLATE_BYTES:
            raise InvalidInput(field="body", reason=f"template larger than {MAX_TEMPLATE_BYTES} bytes")
        try:
            source = source.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(field="body", reason="template is not UTF-8 text") from exc
    if len(source.encode()) > MAX_TEMPLATE_BYTES:
        raise InvalidInput(field="body", reason=f"template larger than {MAX_TEMPLATE_BYTES} bytes")
    check_upload(kind, name, source, s)
    target_dir = s.user_templates_dir / kind
    target_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target_dir, prefix=f".{name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(source)
    target = target_dir / f"{name}.j2"
    os.replace(tmp, target)
    # A cached compiled template of the shipped file with the same name would
    # otherwise keep being served: its up-to-date check watches the old file.
    cache = get_env(s).cache
    if cache is not None:
        cache.clear()
    _last_check[(kind, name)] = None
    builtin = (s.templates_dir / kind / f"{name}.j2").is_file()
    log.info("template %s/%s uploaded (%d bytes)%s", kind, name, len(source), " overriding the shipped one"
             if builtin else "")
    return TemplateInfo(kind=kind, name=name, source="user", path=str(target), overrides_builtin=builtin, ok=True)


# --------------------------------------------------------------------------- rendering for hosts
def install_template_name(profile: Profile, kind: str | None = None) -> str:
    """``<kind>/<name>.j2`` of the install file for ``profile`` (its ``template`` overrides the default)."""
    k = kind or METHOD_KIND.get(profile.install_method)
    if k is None:
        raise InvalidInput(field="profile.install_method",
                           reason=f"profile {profile.name} ({profile.install_method}) has no install file template")
    name = DEFAULT_NAME[k]
    if profile.template and (kind is None or kind == METHOD_KIND.get(profile.install_method)):
        name = profile.template.removesuffix(".j2")
        if "/" in name:
            pkind, _, name = name.partition("/")
            if pkind != k:
                raise InvalidInput(field="profile.template", reason=f"{profile.template!r} is not a {k} template")
    return template_file(k, name)


def render_install_file(session: Session, host: Host, token: str | None, settings: Settings | None = None,
                        *, kind: str | None = None, name: str | None = None) -> str:
    """The kickstart / preseed / autoinstall file (or ``name``: meta-data, vendor-data) for ``host``."""
    s = settings or get_settings()
    profile = session.get(Profile, host.profile_id) if host.profile_id is not None else None
    if profile is None:
        raise InvalidInput(field="profile", reason=f"host {host.name} has no profile")
    ctx = boot_context(session, host, s, token=token)
    tpl = template_file(kind or "autoinstall", name) if name else install_template_name(profile, kind)
    return TemplateDeploy(s).render_install_config(tpl, ctx)


def render_for_host(session: Session, host: Host, kind: str, settings: Settings | None = None) -> str:
    """What ``host`` would get for ``kind`` right now (placeholder token; nothing is minted)."""
    s = settings or get_settings()
    if kind in BOOT_KINDS:
        return preview_boot_config(session, host, kind, s)
    if kind not in INSTALL_KINDS:
        raise InvalidInput(field="kind", reason=f"unknown template kind {kind!r} (one of {', '.join(KINDS)})")
    return render_install_file(session, host, None, s, kind=kind)


def start(settings: Settings) -> Callable[[], None]:
    """Start-up hook (api/lifespan.py's optional services): render-check every template once.

    A broken template does not stop the controller (the operator needs the API
    to fix it); it is logged, listed with its error, and refused when rendered.
    """
    infos = check_all(settings)
    bad = [f"{i.kind}/{i.name}" for i in infos if not i.ok]
    if bad:
        log.error("%d of %d templates failed their check: %s", len(bad), len(infos), ", ".join(bad))
    else:
        log.info("all %d templates passed their check", len(infos))
    return lambda: None
