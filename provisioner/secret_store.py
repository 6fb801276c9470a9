"""BMC passwords encrypted at rest, and masking for everything that is logged.

The Fernet key comes from ``PROV_SECRET_KEY`` or from ``{data_dir}/secret.key``,
created 0600 on first use. A password is decrypted only in memory, at call time,
by the driver that needs it; every value that has been decrypted or stored is
registered with the log masker so it can never reach a log line or an error
(in a reply: unless its request carried it, see mask, so that no reply tells a
caller which of its values are stored secrets).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from provisioner.errors import ProvError
from provisioner.settings import Settings, get_settings

MASK = "********"
_known: set[str] = set()
_known_lock = threading.Lock()
# _known longest first, rebuilt when a secret is added (rare) instead of sorted on every masked line
_by_length: tuple[str, ...] = ()


class SecretKeyError(ProvError):
    code = "secret_key"
    template = "secret key: {reason}"


def _key_path(settings: Settings) -> Path:
    return settings.data_dir / "secret.key"


def load_key(settings: Settings | None = None) -> bytes:
    settings = settings or get_settings()
    if settings.secret_key:
        return settings.secret_key.encode()
    path = _key_path(settings)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: two controllers starting at once must not write two keys.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(Fernet.generate_key())
    return path.read_bytes().strip()


def _fernet(settings: Settings | None = None) -> Fernet:
    try:
        return Fernet(load_key(settings))
    except ValueError as exc:
        raise SecretKeyError(reason="not a valid Fernet key") from exc


def register(secret: str | None) -> None:
    """Remember a secret so log lines and messages mentioning it get masked."""
    global _by_length
    if secret and len(secret) >= 3:
        with _known_lock:
            if secret not in _known:
                _known.add(secret)
                _by_length = tuple(sorted(_known, key=len, reverse=True))


def encrypt(plaintext: str, settings: Settings | None = None, *, remember: bool = True) -> str:
    """``remember=False`` for values the masker already catches by shape (install tokens), so a
    long-running controller does not remember every token it ever minted."""
    if remember:
        register(plaintext)
    return _fernet(settings).encrypt(plaintext.encode()).decode()


def decrypt(ciphertext: str, settings: Settings | None = None, *, remember: bool = True) -> str:
    try:
        value = _fernet(settings).decrypt(ciphertext.encode()).decode()
    except InvalidToken as exc:
        raise SecretKeyError(reason="stored secret cannot be decrypted with this key") from exc
    if remember:
        register(value)
    return value


# Credentials the masker may not know by value (an operator token; an install token minted by
# another controller process or before a restart) are masked by where they travel and by their
# shape. One-time install tokens are ``<host id>.<secret>``
# (conductor/install_tokens.py) and ride in URL paths (installers cannot send headers), kernel
# command lines and query strings; operator tokens ride in Authorization headers. Whatever
# follows a carrier is masked up to the next delimiter, whatever its shape (the old rule wanted
# ``[A-Za-z0-9_-]{8,}``, and the dot of a real token stopped it after the host id).
_CARRIER = re.compile(
    r"(?P<carrier>(?i:/install/v1/|token=)|\b(?:Bearer|Basic) +)"  # HTTP auth schemes as clients spell them
    r"(?P<value>[^\s/?&#;,\"'<>()\[\]{}]+)"
)
# A token anywhere else (a repr, a JSON body, a percent-encoded URL): digits, a dot, and at least
# 32 URL-safe base64 characters (a real secret part has 43).
_TOKEN_SHAPE = re.compile(r"(?<![0-9])[0-9]{1,20}\.[A-Za-z0-9_\-]{32,}")


class Told:
    """What the reader of a reply sent (its request's path, query and body): a known secret found
    in it, in any of the spellings a message may give it, is no secret to that reader.

    ``texts`` is called the first time a secret is looked up (most replies hold none)."""

    def __init__(self, texts: Callable[[], Iterable[str]] = tuple) -> None:
        self._texts = texts
        self._forms: tuple[str, ...] | None = None

    def _spellings(self) -> tuple[str, ...]:
        if self._forms is None:
            forms: list[str] = []
            for text in self._texts():
                # as sent, and as a message may quote it: case-folded, whitespace collapsed,
                # escaped by repr() (a {name!r} template) or JSON
                base = (text, text.lower(), text.upper(), " ".join(text.split()))
                forms += [*base, *(repr(t)[1:-1] for t in base), *(json.dumps(t)[1:-1] for t in base)]
            self._forms = tuple(forms)
        return self._forms

    def __contains__(self, secret: object) -> bool:
        return isinstance(secret, str) and any(secret in form for form in self._spellings())


NOBODY = Told()


def mask(text: str, told: Told = NOBODY) -> str:
    """Replace every known secret in ``text``, and tokens by where they travel and their shape.

    ``told``: for a reply, what its request sent. A known secret that the request itself carried
    stays as it is: masking it told the caller which of its values are stored secrets (an error
    echoing ``'<guess>'`` came back as ``'********'`` exactly when the guess was a BMC password,
    issue 18), and unmasked it tells them only what they sent. Masking by shape (tokens) treats
    every value of one shape alike, so it applies everywhere."""
    for s in _by_length:
        if s in text and s not in told:
            text = text.replace(s, MASK)
    text = _CARRIER.sub(lambda m: m.group("carrier") + MASK, text)
    return _TOKEN_SHAPE.sub(MASK, text)


# Replies to unauthenticated requests: a value the client sent never comes back, secret or not
# (and what is left is masked as mask() does for a reply: never what the request carried).
# Values shorter than this cannot be a registered secret (see register) and are left alone.
ECHO = "<redacted>"
_MIN_ECHO = 3


def mask_reply(text: str, supplied: Iterable[str], told: Told = NOBODY) -> str:
    """``text`` with every client-supplied value replaced by ``ECHO`` (whether it is a secret or
    not, so the reply cannot tell), then masked as a reply to ``told``."""
    for value in sorted({v for v in supplied if len(v) >= _MIN_ECHO}, key=len, reverse=True):
        if value in text:
            text = text.replace(value, ECHO)
    return mask(text, told)


class MaskingFilter(logging.Filter):
    """Attached to the root handler: formats the record, then masks known secrets."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not kill logging
            message = str(record.msg)
        masked = mask(message)
        if masked != message or record.args:
            record.msg = masked
            record.args = None
        return True
