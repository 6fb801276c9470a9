"""The shipped deploy driver: install files and the deploy agent rendered from templates.

Operators' own templates (``{data_dir}/templates``) override the shipped ones;
both go through the one sandboxed environment of ``provisioner.render``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from provisioner.drivers.deploy.base import DeployInterface
from provisioner.render import render
from provisioner.settings import Settings

AGENT_TEMPLATE = "deploy/agent.sh.j2"


class TemplateDeploy(DeployInterface):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def render_install_config(self, template: str, context: Mapping[str, Any]) -> str:
        return render(template, dict(context), self.settings)

    def render_agent_script(self, context: Mapping[str, Any]) -> str:
        return render(AGENT_TEMPLATE, dict(context), self.settings)
