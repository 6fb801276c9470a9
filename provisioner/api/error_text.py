"""The text of error replies: secrets masked, and never an oracle for them.

Every error reply is masked (secret_store.mask), so a stored BMC password that found its way into
one never reaches the client. But masking by value alone told a caller which values are secret: a
reply that echoed the caller's input came back with ``'********'`` exactly when the input was a
stored password, on the unauthenticated routes (``GET /boot/ipxe/<guess>``) and on the operator
routes alike (``GET /api/v1/hosts/<guess>``, a profile or rack named in a body, a validator or a
template error quoting a value; issue 18). So:

* a reply is masked as a reply to its request (``told``): a known secret that the request itself
  carried, in its path, its query or its body, in any spelling a message gives it (case-folded,
  ``repr``- or JSON-escaped), stays as it is. The reply for a stored password is then the reply
  for any other value, byte for byte but for the value itself; what the request did not carry
  (the server's own text) is still masked;
* replies on the unauthenticated surfaces (everything outside /api/) never carry a value the
  client sent, secret or not: in our errors each is replaced by the same marker, and validation
  errors name only the parameters the route declares, in the schema's words. Operator routes
  (token-checked) keep their echoes, which name the object the operator asked about.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, unquote_plus

from starlette.requests import Request

from provisioner.api.middleware import REQUEST_BODY
from provisioner.secret_store import Told, mask, mask_reply

OPERATOR_PREFIX = "/api/"
# The parsed JSON body, when api/strict.JsonBodyGuard checked one (its strings unescaped).
_STRICT_BODY = "prov.strict_body"


def is_public(request: Request) -> bool:
    return not request.url.path.startswith(OPERATOR_PREFIX)


def supplied(request: Request) -> set[str]:
    """What this client chose: path parameters (and their segments) and query values; each also
    stripped and lower-cased (what a normaliser makes of it). The route's fixed path and its
    parameter names are the same for every caller and tell nothing (and a query key the route
    does not declare is never read). A body a route parses itself is its own to keep out of its
    errors (routes/installer.py names only its own fields)."""
    values: set[str] = set()
    for v in request.path_params.values():
        values.add(str(v))
        values.update(str(v).split("/"))
    values.update(v for _, v in request.query_params.multi_items())
    return values | {v.strip().lower() for v in values} | {v.strip() for v in values}


def _strings(value: Any) -> Iterator[str]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def told(request: Request) -> Told:
    """Everything the request carried, for secret_store.mask: path, query string, body (as sent and,
    for a JSON body, its strings unescaped). Read only when a reply holds a known secret."""
    scope = request.scope

    def texts() -> list[str]:
        raw_query = scope.get("query_string", b"").decode("latin-1")
        out = [scope.get("path", ""), unquote(scope.get("raw_path", b"").decode("latin-1")),
               raw_query, unquote_plus(raw_query)]
        body = b"".join(scope.get(REQUEST_BODY, ()))
        if body:
            text = body.decode("utf-8", errors="replace")
            out.append(text)
            checked = scope.get(_STRICT_BODY)
            value = getattr(checked, "value", None)
            if value is None:
                try:
                    value = json.loads(text)
                except ValueError:
                    value = None
            out.append("\n".join(_strings(value)))
        return out

    return Told(texts)


def reply_text(request: Request, text: str) -> str:
    if is_public(request):
        return mask_reply(text, supplied(request), told(request))
    return mask(text, told(request))


# Validation errors whose text comes from our own validators (which may quote the value); every
# other pydantic message is built from the schema (limits, patterns, allowed values), never the input.
_OWN_VALIDATOR_ERRORS = frozenset({"value_error", "assertion_error"})


def public_validation_error(error: dict[str, Any], field: str, message: str) -> tuple[str, str]:
    """A 422 on a public route names only what the route declares and quotes nothing it was sent:
    a body location may hold the client's own keys, and our validators' texts may quote values."""
    loc = tuple(error.get("loc", ()))
    if loc[:1] == ("body",):
        field = "body"
    if error.get("type") in _OWN_VALIDATOR_ERRORS:
        message = "invalid value"
    return field, message


def _scrub(value: Any, clean: Any) -> Any:
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, list):
        return [_scrub(v, clean) for v in value]
    if isinstance(value, dict):
        return {k: _scrub(v, clean) for k, v in value.items()}
    return value


def reply_body(request: Request, body: dict[str, Any]) -> dict[str, Any]:
    """Every string in an error body (the message and the error's details) through ``reply_text``."""
    heard = told(request)
    if is_public(request):
        echoes = supplied(request)
        return {k: _scrub(v, lambda t: mask_reply(t, echoes, heard)) for k, v in body.items()}
    return {k: _scrub(v, lambda t: mask(t, heard)) for k, v in body.items()}
