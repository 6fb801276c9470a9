"""The console's one router (api/app.py mounts it with the public routers: it checks its own session)."""

from __future__ import annotations

from fastapi import APIRouter

from provisioner.api.ui import actions, live, pages

router = APIRouter(include_in_schema=False)
for part in (pages.router, actions.router, live.router):
    router.include_router(part)
