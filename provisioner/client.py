"""A thin HTTP client of prov's REST API, shared by the CLI and GitOps.

Every CLI command and every ``prov apply`` action goes through the REST API, so
REST, CLI and GitOps share one code path. Errors come back as ProvError
subclasses rebuilt from the API's JSON error body.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import yaml

from provisioner import errors

_BY_CODE: dict[str, type[errors.ProvError]] = {}


def _index(cls: type[errors.ProvError]) -> None:
    _BY_CODE.setdefault(cls.code, cls)
    for sub in cls.__subclasses__():
        _index(sub)


_index(errors.ProvError)


def config_path() -> Path:
    return Path(os.environ.get("PROV_CLIENT_CONFIG") or Path.home() / ".config" / "prov" / "client.yaml")


def load_client_config() -> dict[str, str]:
    path = config_path()
    if path.is_file():
        data = yaml.safe_load(path.read_text()) or {}
        if isinstance(data, dict):
            return {str(k): str(v) for k, v in data.items()}
    return {}


class ApiError(errors.ProvError):
    """An error body we could not map to a known class."""


class ProvClient:
    def __init__(
        self, url: str | None = None, token: str | None = None, timeout: float = 60.0, context: str | None = None
    ) -> None:
        cfg = load_client_config()
        self.url = (url or os.environ.get("PROV_URL") or cfg.get("url") or "http://127.0.0.1:8700").rstrip("/")
        self.token = token or os.environ.get("PROV_TOKEN") or cfg.get("token")
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        if context:
            # Recorded as part of the actor on every history line this client causes (see api/deps.py).
            headers["X-Prov-Context"] = context
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ProvClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise errors.DriverError(
                f"cannot reach the prov controller at {self.url}: {exc.__class__.__name__}",
            ) from exc
        if resp.status_code >= 400:
            raise self._error(resp)
        if resp.status_code == 204 or not resp.content:
            return None
        ctype = resp.headers.get("content-type", "")
        return resp.json() if "json" in ctype else resp.text

    @staticmethod
    def _error(resp: httpx.Response) -> errors.ProvError:
        try:
            body = resp.json()
        except ValueError:
            body = {"error": "http_error", "message": resp.text[:200] or resp.reason_phrase}
        if not isinstance(body, dict):
            body = {"error": "http_error", "message": str(body)}
        code = str(body.get("error", "http_error"))
        message = str(body.get("message") or body.get("detail") or resp.reason_phrase)
        cls = _BY_CODE.get(code, ApiError)
        details = {k: v for k, v in body.items() if k not in ("error", "message")}
        err = cls(message, **details)
        err.details.setdefault("http_status", resp.status_code)
        return err

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Any:
        return self.request("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> Any:
        return self.request("PUT", path, **kw)

    def patch(self, path: str, **kw: Any) -> Any:
        return self.request("PATCH", path, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.request("DELETE", path, **kw)
