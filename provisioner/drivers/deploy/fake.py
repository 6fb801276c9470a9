"""An in-memory DeployInterface for fast unit tests of conductor logic: records every render."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from provisioner.drivers.deploy.base import DeployInterface


@dataclass
class FakeDeploy(DeployInterface):
    # (what, template, context) per call; what is "install-config" or "agent"
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def render_install_config(self, template: str, context: Mapping[str, Any]) -> str:
        self.calls.append(("install-config", template, dict(context)))
        return f"# {template} for {context.get('host', {}).get('name', '?')} token={context.get('token')}\n"

    def render_agent_script(self, context: Mapping[str, Any]) -> str:
        self.calls.append(("agent", "deploy/agent.sh.j2", dict(context)))
        image = context.get("image", {})
        return f"#!/bin/sh\n# agent for {context.get('host', {}).get('name', '?')} image={image.get('url')}\n"
