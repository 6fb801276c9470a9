"""Public boot files: ``GET``/``HEAD /boot/files/{path}`` from the boot root.

Public because firmware and installers carry no operator token; the files
there are the same for every host (iPXE binaries, kernels, initrds, images).
Per-host secrets never live in the boot root: install files are served by the
token-checked ``/install/v1`` routes instead.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse

from provisioner.api.deps import SettingsDep
from provisioner.api.ratelimit import RESPONSE, limit
from provisioner.conductor import netboot

PUBLIC = True
router = APIRouter(tags=["boot"], dependencies=[Depends(limit("files"))], responses=RESPONSE)


# Two routes, not one api_route for both methods: that gives GET and HEAD one operationId,
# which OpenAPI forbids (api/openapi.py). FileResponse answers HEAD with the headers alone.
_FILE: dict[str, Any] = {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
         "description": "the file (206 with a Range header)"}


@router.head("/boot/files/{path:path}", response_class=FileResponse, operation_id="boot_file_head",
             summary="A boot file's size and headers, without the body")
@router.get("/boot/files/{path:path}", response_class=FileResponse, responses={200: _FILE},
            summary="Download a boot file (Range supported)")
def boot_file(path: str, settings: SettingsDep) -> FileResponse:
    real = netboot.boot_file(settings, path)
    # FileResponse handles HEAD, Range/If-Range (206, 416, multipart) and sets Content-Length.
    return FileResponse(real, media_type="application/octet-stream", filename=None,
                        headers={"Cache-Control": "no-cache"})
