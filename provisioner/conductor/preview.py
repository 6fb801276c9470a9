"""``prov template render``'s server side: what a host would get for a kind now, with warnings.

The text is rendered exactly as the installer or firmware would get it
(templates_catalog.render_for_host: the same boot_context, SSH keys included),
with a placeholder instead of the install token; nothing is minted. The warnings
(render_warnings.py) say when that text is not what the host is served, or would
not work: another install method's file, another OS family's installer, a
controller URL no machine reaches, no SSH key, a local-boot config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session

from provisioner import crud, templates_catalog
from provisioner.conductor.boot_context import boot_context
from provisioner.conductor.netboot import install_allowed
from provisioner.drivers.boot.configs import BOOT_KINDS
from provisioner.models import Host, Profile
from provisioner.render_warnings import RenderWarning, boot_warnings, key_warnings, kind_warnings, url_warnings
from provisioner.settings import Settings, get_settings


@dataclass
class Preview:
    host: str
    kind: str
    template: str  # <kind>/<name>.j2 that was rendered
    text: str
    warnings: list[RenderWarning] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "kind": self.kind, "template": self.template, "text": self.text,
                "warnings": [w.to_dict() for w in self.warnings]}


def _template(host: Host, profile: Profile | None, kind: str) -> str:
    if kind in BOOT_KINDS:
        return f"{kind}/{'install' if install_allowed(host) else 'local'}.j2"
    assert profile is not None  # render_for_host refused a host without one
    return templates_catalog.install_template_name(profile, kind)


def preview(session: Session, ident: str | int, kind: str, settings: Settings | None = None) -> Preview:
    """Render ``kind`` for host ``ident`` (placeholder token) and say what to look twice at."""
    s = settings or get_settings()
    host = crud.get_host(session, ident)
    text = templates_catalog.render_for_host(session, host, kind, s)  # refuses unknown kinds, no profile
    profile = session.get(Profile, host.profile_id) if host.profile_id is not None else None
    warnings: list[RenderWarning] = []
    if profile is not None:
        warnings += kind_warnings(kind, profile=profile.name, os_family=profile.os_family,
                                  install_method=profile.install_method)
        if kind not in BOOT_KINDS:
            ctx = boot_context(session, host, s)  # the context the text was rendered with
            warnings += key_warnings(kind, keys=list(ctx["install"]["ssh_authorized_keys"]))
    warnings += boot_warnings(kind, host=host.name, state=host.state, installs=install_allowed(host))
    warnings += url_warnings(kind, base_url=s.base_url, public_url=s.public_url, text=text)
    return Preview(host=host.name, kind=kind, template=_template(host, profile, kind), text=text,
                   warnings=warnings)
