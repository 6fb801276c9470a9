"""``prov host add|set --network-file FILE``: a host's declared network from a YAML (or JSON) file.

The file holds what the host API takes (provisioner/netspec.py), with the bonds and VLANs at the
top level::

    nics:                       # the NIC list (instead of --mac), with static settings
      - {mac: "52:54:00:12:34:56", name: eth0, boot: true, address: 10.0.0.5/24, gateway: 10.0.0.1}
      - {mac: "52:54:00:12:34:57", name: eth1}
    bonds: []
    vlans:
      - {id: 100, link: eth0, address: 10.1.0.5/24}

Only the shape is checked here (a mapping of those keys, through the bounded YAML loader of
GitOps inventories); the rules are the API's, whose 422 names the field (``network.vlans[0].id``).
With ``bonds`` or ``vlans`` given, ``prov host set`` replaces both (a missing one becomes empty).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from provisioner.errors import InvalidInput

NetworkFileOpt = Annotated[
    Path | None,
    typer.Option("--network-file", dir_okay=False, help="the host's NICs with static addresses, bonds and VLANs "
                                                        "(YAML or JSON: nics, bonds, vlans)"),
]
KEYS = ("nics", "bonds", "vlans")
FIELD = "--network-file"


def read_network_file(path: Path) -> dict[str, Any]:
    """The request fields the file gives: ``nics`` and/or ``network`` ({bonds, vlans})."""
    from provisioner.gitops import yamlsafe

    try:
        data = yamlsafe.load_file(path, str_keys=True).data
    except OSError as exc:
        raise InvalidInput(field=FIELD, reason=f"cannot read {path}: {exc.strerror}") from None
    except yamlsafe.YamlError as exc:
        raise InvalidInput(field=FIELD, reason=f"{path}:{exc.line}: {exc.reason}") from None
    if not isinstance(data, dict):
        raise InvalidInput(field=FIELD, reason=f"{path}: a mapping of {', '.join(KEYS)} expected")
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise InvalidInput(field=FIELD, reason=f"{path}: unknown key {unknown[0]!r} (one of {', '.join(KEYS)})")
    out: dict[str, Any] = {}
    for key in KEYS:
        if key in data and not isinstance(data[key], list):
            raise InvalidInput(field=FIELD, reason=f"{path}: {key} must be a list")
    if "nics" in data:
        out["nics"] = data["nics"]
    if "bonds" in data or "vlans" in data:
        out["network"] = {"bonds": data.get("bonds") or [], "vlans": data.get("vlans") or []}
    if not out:
        raise InvalidInput(field=FIELD, reason=f"{path}: names no nics, bonds or vlans")
    return out
