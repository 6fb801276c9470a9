"""The text of error replies: secrets masked, and never an oracle for them.

Every error reply is masked by value (secret_store.mask), so a stored BMC password can never
appear in one. But masking by value alone told a caller which values are secret: a reply that
echoed the caller's input came back with ``'********'`` exactly when the input was a stored
password, and ``GET /boot/ipxe/<guess>`` needs no credentials (issue 18). So replies on the
unauthenticated surfaces (everything outside /api/) never carry a value the client sent, secret
or not: in our errors each is replaced by the same marker before masking, and validation errors
name only the parameters the route declares, in the schema's words. The reply for a stored
password is byte-for-byte the reply for any other value. Operator routes (token-checked) keep
their echoes, which name the object the operator asked about.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from provisioner.secret_store import mask, mask_reply

OPERATOR_PREFIX = "/api/"


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


def reply_text(request: Request, text: str) -> str:
    if is_public(request):
        return mask_reply(text, supplied(request))
    return mask(text)


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
    if is_public(request):
        echoes = supplied(request)
        return {k: _scrub(v, lambda t: mask_reply(t, echoes)) for k, v in body.items()}
    return {k: _scrub(v, mask) for k, v in body.items()}
