"""The deploy interface: the contract between prov and what a network-booted host runs to install.

An install method is what a profile's ``install_method`` names. Three of them
boot an OS vendor's installer (kernel + initrd named by the profile), which
fetches one config file rendered from ``templates/<method>/``; ``image`` boots
prov's own deploy ramdisk instead, whose ``/init`` fetches and runs the
per-host agent script (kernel argument ``prov.run``) that streams the image to
the disk. Every file is rendered from a plain context dict (the conductor's
``boot_context``), never from database objects.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any

# The profile install methods prov knows, and those whose installer fetches a config file.
INSTALL_METHODS = ("kickstart", "preseed", "autoinstall", "image")
CONFIG_METHODS = ("kickstart", "preseed", "autoinstall")
# Image profiles boot prov's deploy ramdisk unless they name their own kernel: boot-root
# paths where ``prov serve`` / the lab place the ramdisk's build (provisioner.lab.ramdisk).
RAMDISK_KERNEL = "prov/vmlinuz"
RAMDISK_INITRD = "prov/initrd.img"
# What the deploy agent does after a successful write (the next network boot is a local
# boot, netboot being off), and after a failure (a shell on the console for the operator;
# the controller has already moved the host to install-failed).
AFTER_DEPLOY = "reboot"
AFTER_ERROR = "shell"


class DeployInterface(abc.ABC):
    """Renders what an installing host fetches; raises TemplateError/InvalidInput, never leaks Jinja2's."""

    methods: tuple[str, ...] = INSTALL_METHODS

    @abc.abstractmethod
    def render_install_config(self, template: str, context: Mapping[str, Any]) -> str:
        """A kickstart / preseed / autoinstall file (``<kind>/<name>.j2``) for one host."""

    @abc.abstractmethod
    def render_agent_script(self, context: Mapping[str, Any]) -> str:
        """The image deploy agent the deploy ramdisk runs (``context`` has ``image`` and ``deploy`` parts)."""
