"""``prov ansible collections-path``: where the Ansible collection prov ships (prov.provisioner) lives.

The collection (provisioner/ansible_collections/prov/provisioner: the inventory plugin
``prov.provisioner.prov``) is package data, so its directory is wherever pip put prov; this
command prints the directory Ansible wants in ANSIBLE_COLLECTIONS_PATH (Ansible looks in its
``ansible_collections`` subdirectory), so that no one has to guess a venv's site-packages::

    export ANSIBLE_COLLECTIONS_PATH=$(prov ansible collections-path)
"""

from __future__ import annotations

from pathlib import Path

import typer

from provisioner.cli import exitcodes
from provisioner.cli.groups import app
from provisioner.cli.output import fail

ansible_app = typer.Typer(no_args_is_help=True, help="The Ansible collection prov ships (prov.provisioner).")
app.add_typer(ansible_app, name="ansible")

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # provisioner/
COLLECTION = ("ansible_collections", "prov", "provisioner")


@ansible_app.command("collections-path")
def collections_path() -> None:
    """Print the directory for ANSIBLE_COLLECTIONS_PATH that holds prov.provisioner (its inventory plugin)."""
    if not (PACKAGE_DIR.joinpath(*COLLECTION) / "galaxy.yml").is_file():
        raise fail(f"the prov.provisioner collection is missing from {PACKAGE_DIR} (reinstall prov)", exitcodes.ERROR)
    typer.echo(str(PACKAGE_DIR))
