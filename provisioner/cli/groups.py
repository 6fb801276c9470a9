"""The CLI's nouns. Command modules in provisioner/cli/ add commands to these.

main.py imports every command module by name; a new file that decorates
``@host_app.command(...)`` is one more name in that import.
"""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="prov: bare-metal and VM provisioning")
host_app = typer.Typer(no_args_is_help=True, help="Hosts: enrol, inspect, power, install, configure.")
rack_app = typer.Typer(no_args_is_help=True, help="Racks and rack-wide actions.")
profile_app = typer.Typer(no_args_is_help=True, help="OS profiles.")
token_app = typer.Typer(no_args_is_help=True, help="API tokens (run on the controller's machine).")
template_app = typer.Typer(no_args_is_help=True, help="Install and boot templates.")
virt_app = typer.Typer(no_args_is_help=True, help="Host virtualisation pre-flight.")
vm_app = typer.Typer(no_args_is_help=True, help="KVM guests through libvirt.")
inventory_app = typer.Typer(no_args_is_help=True, help="Inventory export and schema.")
lab_app = typer.Typer(no_args_is_help=True, help="The virtual lab rack.")
task_app = typer.Typer(no_args_is_help=True, help="Background tasks.")



def _version(value: bool) -> None:
    if value:
        from provisioner import __version__

        typer.echo(f"prov {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """prov: bare-metal and VM provisioning."""


for _name, _sub in {
    "host": host_app,
    "rack": rack_app,
    "profile": profile_app,
    "token": token_app,
    "template": template_app,
    "virt": virt_app,
    "vm": vm_app,
    "inventory": inventory_app,
    "lab": lab_app,
    "task": task_app,
}.items():
    app.add_typer(_sub, name=_name)
