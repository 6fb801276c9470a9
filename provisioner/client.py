"""A thin HTTP client of prov's REST API, shared by the CLI and GitOps.

Every CLI command and every ``prov apply`` action goes through the REST API, so
REST, CLI and GitOps share one code path. Errors come back as ProvError
subclasses rebuilt from the API's JSON error body; a controller that cannot be
reached is ControllerUnreachable (its own exit code, not a peer's failure).

The client file (``prov login``) holds one login profile per controller::

    current: lab
    profiles:
      lab:  {url: "http://10.0.0.5:8700", token: "prov_..."}
      prod: {url: "https://prov.example.net", token: "prov_..."}

The profile used is ``--profile``/``PROV_PROFILE``, else ``current``, else
``default``; a file of the first format (``url:`` and ``token:`` at the top) is
the ``default`` profile. ``PROV_URL`` and ``PROV_TOKEN`` override the profile.
httpx and yaml are imported when a client is made, not when this module is:
``prov --version`` and ``--help`` never pay for them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provisioner import errors

if TYPE_CHECKING:
    import httpx

DEFAULT_URL = "http://127.0.0.1:8700"
DEFAULT_PROFILE = "default"
_BY_CODE: dict[str, type[errors.ProvError]] = {}


def _index(cls: type[errors.ProvError]) -> None:
    _BY_CODE.setdefault(cls.code, cls)
    for sub in cls.__subclasses__():
        _index(sub)


class ApiError(errors.ProvError):
    """An error body we could not map to a known class."""


class ControllerUnreachable(errors.ProvError):
    """The prov controller did not answer: refused, no route, no such name, TLS, timeout."""

    code = "controller_unreachable"
    http_status = 503
    template = "cannot reach the prov controller at {url}: {reason}"


_index(errors.ProvError)


def error_class(code: str) -> type[errors.ProvError]:
    """The ProvError class of an API error code (ApiError when this client does not know it)."""
    return _BY_CODE.get(code, ApiError)


def config_path() -> Path:
    return Path(os.environ.get("PROV_CLIENT_CONFIG") or Path.home() / ".config" / "prov" / "client.yaml")


@dataclass
class ClientConfig:
    """The client file: login profiles by name and the one in use."""

    current: str | None = None
    profiles: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any) -> ClientConfig:
        if not isinstance(data, dict):
            return cls()
        if "profiles" not in data and ("url" in data or "token" in data):  # the single-controller format
            flat = {k: str(data[k]) for k in ("url", "token") if data.get(k) is not None}
            return cls(current=DEFAULT_PROFILE, profiles={DEFAULT_PROFILE: flat})
        profiles: dict[str, dict[str, str]] = {}
        raw = data.get("profiles")
        for name, entry in (raw.items() if isinstance(raw, dict) else ()):
            if isinstance(entry, dict):
                profiles[str(name)] = {str(k): str(v) for k, v in entry.items() if v is not None}
        current = data.get("current")
        return cls(current=str(current) if current else None, profiles=profiles)

    def to_dict(self) -> dict[str, Any]:
        return {"current": self.current, "profiles": self.profiles}


def read_client_config(path: Path | None = None) -> ClientConfig:
    path = path or config_path()
    if not path.is_file():
        return ClientConfig()
    import yaml

    try:
        return ClientConfig.from_dict(yaml.safe_load(path.read_text()))
    except yaml.YAMLError as exc:
        reason = f"not a prov client file ({exc.__class__.__name__})"
        raise errors.InvalidInput(field=str(path), reason=reason) from None


def profile_name(cfg: ClientConfig, explicit: str | None = None) -> str:
    """The profile in use: the one named (``--profile``, ``PROV_PROFILE``), else the file's current one."""
    return explicit or os.environ.get("PROV_PROFILE") or cfg.current or DEFAULT_PROFILE


def load_client_config(profile: str | None = None) -> dict[str, str]:
    """The selected profile's ``url`` and ``token`` ({} when there is no client file)."""
    cfg = read_client_config()
    name = profile_name(cfg, profile)
    named = profile or os.environ.get("PROV_PROFILE")
    if named and name not in cfg.profiles:
        known = ", ".join(sorted(cfg.profiles)) or "none"
        raise errors.InvalidInput(
            field="profile", reason=f"no login profile {name!r} in {config_path()} (known: {known}; "
                                    f"prov login --profile {name})")
    return dict(cfg.profiles.get(name, {}))


class ProvClient:
    def __init__(
        self, url: str | None = None, token: str | None = None, timeout: float = 60.0, context: str | None = None,
        profile: str | None = None,
    ) -> None:
        import httpx

        cfg = {} if (url or os.environ.get("PROV_URL")) and (token or os.environ.get("PROV_TOKEN")) \
            else load_client_config(profile)
        self.url = (url or os.environ.get("PROV_URL") or cfg.get("url") or DEFAULT_URL).rstrip("/")
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
        return self._body(self._send(method, path, **kwargs))

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        import httpx

        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ControllerUnreachable(url=self.url, reason=exc.__class__.__name__) from exc
        if resp.status_code >= 400:
            raise self._error(resp)
        return resp

    @staticmethod
    def _body(resp: httpx.Response) -> Any:
        if resp.status_code == 204 or not resp.content:
            return None
        ctype = resp.headers.get("content-type", "")
        return resp.json() if "json" in ctype else resp.text

    def get_tagged(self, path: str, **kw: Any) -> tuple[Any, str | None]:
        """GET one object: its body and its ETag (None from a controller that sends none)."""
        resp = self._send("GET", path, **kw)
        return self._body(resp), resp.headers.get("etag")

    def update(self, path: str, change: Callable[[Any], dict[str, Any] | None], *, retries: int = 3) -> Any:
        """Read-modify-write that cannot lose another client's update: GET ``path``, PATCH it with
        ``change(current)`` (None: nothing to change, the current object is returned) and
        ``If-Match`` its ETag. If the object changed in between (412 precondition_failed), it is read
        and ``change`` applied again, up to ``retries`` times; then the 412 is raised."""
        attempt = 1
        while True:
            current, tag = self.get_tagged(path)
            body = change(current)
            if body is None:
                return current
            try:
                return self.patch(path, json=body, headers={"If-Match": tag} if tag else None)
            except errors.PreconditionFailed:
                if attempt >= retries:
                    raise
                attempt += 1

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
        cls = error_class(code)
        details = {k: v for k, v in body.items() if k not in ("error", "message")}
        err = cls(message, **details)
        err.details.setdefault("http_status", resp.status_code)
        if cls is ApiError:
            err.details.setdefault("error_code", code)  # exit code by the code a newer controller sent
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
