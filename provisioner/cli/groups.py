"""The CLI's nouns. Command modules in provisioner/cli/ add commands to these.

main.py imports every command module by name; a new file that decorates
``@host_app.command(...)`` is one more name in that import.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import typer
from typer.core import TyperGroup

from provisioner.cli import exitcodes


class ProvGroup(TyperGroup):
    """The root command: usage errors are one ``error: ...`` line like every other error, help names values.

    Here rather than in main() so that the console script and CliRunner (the tests) behave the same.
    """

    _polished = False

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, windows_expand_args: bool = True, **extra: Any) -> Any:
        if not self._polished:
            from provisioner.cli.helpfmt import polish

            polish(self)
            self._polished = True
        try:
            # always "prov": under ``python -m provisioner.cli.main`` and CliRunner too, help and errors say prov
            rc = super().main(args=args, prog_name="prov", complete_var=complete_var,
                              standalone_mode=False, windows_expand_args=windows_expand_args, **extra)
        except typer.TyperException as exc:
            rc = _usage_error(exc)
        except typer.Abort:
            sys.stderr.write("error: aborted\n")
            rc = exitcodes.ERROR
        rc = rc if isinstance(rc, int) else exitcodes.OK
        if standalone_mode:
            sys.exit(rc)
        return rc


def _usage_error(exc: typer.TyperException) -> int:
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
        sys.stdout.write(ctx.get_help() + "\n")  # ``prov host``: the group's help, and 2 as for any usage error
        return exitcodes.USAGE
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    message = " ".join(str(exc.format_message()).split())  # type: ignore[attr-defined]
    sys.stderr.write(f"error: {message}{hint}\n")
    sys.stderr.flush()
    return int(getattr(exc, "exit_code", exitcodes.USAGE))


# add_completion: Typer's --install-completion/--show-completion (``prov completion SHELL`` prints the same script).
# rich_markup_mode=None: click's plain help; drawing it with rich costs every ``--help`` ~80 ms of imports.
app = typer.Typer(cls=ProvGroup, no_args_is_help=True, add_completion=True, rich_markup_mode=None,
                  help="prov: bare-metal and VM provisioning")
host_app = typer.Typer(no_args_is_help=True, help="Hosts: enrol, inspect, power, install, configure.")
rack_app = typer.Typer(no_args_is_help=True, help="Racks and rack-wide actions.")
profile_app = typer.Typer(no_args_is_help=True, help="OS profiles.")
token_app = typer.Typer(no_args_is_help=True, help="API tokens: through the API when logged in, else on this machine.")
template_app = typer.Typer(no_args_is_help=True, help="Install and boot templates.")
virt_app = typer.Typer(no_args_is_help=True, help="Host virtualisation pre-flight.")
vm_app = typer.Typer(no_args_is_help=True, help="KVM guests through libvirt.")
inventory_app = typer.Typer(no_args_is_help=True, help="Inventory export and schema.")
lab_app = typer.Typer(no_args_is_help=True, help="The virtual lab rack.")
task_app = typer.Typer(no_args_is_help=True, help="Background tasks.")
context_app = typer.Typer(no_args_is_help=True, help="Login profiles: one saved URL and token per controller.")


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
    "context": context_app,
}.items():
    app.add_typer(_sub, name=_name)
