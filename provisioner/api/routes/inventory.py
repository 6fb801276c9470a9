"""``GET /inventory/ansible``: the dynamic inventory Ansible reads (``ansible-inventory -i``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from provisioner import crud
from provisioner.api.deps import SessionDep
from provisioner.conductor.inventory import build_inventory

router = APIRouter(tags=["inventory"])


@router.get("/inventory/ansible")
def ansible_inventory(
    session: SessionDep,
    host: str | None = Query(None, description="one host's variables (--host mode)"),
) -> dict[str, Any]:
    if host is not None:
        row = crud.get_host(session, host)
        return dict(build_inventory(session, [row])["_meta"]["hostvars"].get(row.name, {}))
    return build_inventory(session)
