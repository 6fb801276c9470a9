"""The applied-inventory baseline (``InventoryApply``) and its BMC password fingerprints, server side.

``prov apply`` records, per host, the fingerprint (gitops/secrets.py: scrypt with this
controller's salt) of the password it gave the host. A record alone is only the client's
word, and it goes stale when someone sets the password by hand, so the controller checks
it against the password it actually stores:

* on write (``stamp``): each host's fingerprint is compared with the stored password's; a
  wrong one is dropped (the next plan then shows the change), a right one is stamped with a
  digest of the ciphertext it was checked against (Fernet ciphertexts are random per
  encryption and reveal nothing);
* on read (``current``): an entry whose stamp still equals the stored ciphertext's digest is
  current as it stands (no scrypt); otherwise the password was rewritten since, and the
  entry gets the fingerprint of the stored password now, keeping the recorded one as
  ``recorded_password`` when they differ (drift: the password was changed by hand);
* ``fingerprints``: the stored password's fingerprint of hosts no apply has recorded yet
  (adopted into an inventory), so plan need not call an unchanged password a change.

The value of a password never leaves this module; fingerprints are cached by a keyed
digest of the plaintext (HMAC with the secret key), so hosts sharing a password cost one
scrypt, and no plaintext is kept.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from sqlmodel import Session, col, select

from provisioner import secret_store
from provisioner.errors import ProvError
from provisioner.gitops.secrets import RECORDED, fingerprint_uncached
from provisioner.models import Host, InventoryApply
from provisioner.settings import Settings

STAMP = "secret"  # fingerprint entry key: digest of the ciphertext the fingerprint was checked against
_CACHE_MAX = 65536  # distinct passwords remembered (16-byte values): one fleet's worth
_IN_CHUNK = 500  # names per IN (...) query: far below SQLite's bound-parameter limit


def salt(settings: Settings) -> str:
    """Per-controller salt for password fingerprints, derived from the secret key (never stored)."""
    key = secret_store.load_key(settings)
    return hmac.new(key, b"prov-gitops-password-fingerprint", hashlib.sha256).hexdigest()[:32]


def cipher_digest(enc: str) -> str:
    return hashlib.sha256(enc.encode()).hexdigest()[:16]


class _Cache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fp: OrderedDict[tuple[str, str], str] = OrderedDict()

    def fingerprint(self, settings: Settings, enc: str) -> str | None:
        """The fingerprint of the password ``enc`` holds (None if it cannot be decrypted)."""
        try:
            plain = secret_store.decrypt(enc, settings)
        except ProvError:
            return None
        key = secret_store.load_key(settings)
        s = salt(settings)
        tag = (s, hmac.new(key, plain.encode(), hashlib.sha256).hexdigest())
        with self._lock:
            if tag in self._fp:
                self._fp.move_to_end(tag)
                return self._fp[tag]
        fp = fingerprint_uncached(plain, s)
        with self._lock:
            self._fp[tag] = fp
            while len(self._fp) > _CACHE_MAX:
                self._fp.popitem(last=False)
        return fp


_cache = _Cache()


def _ciphers(session: Session, names: Iterable[str]) -> dict[str, str | None]:
    wanted = sorted(set(names))
    out: dict[str, str | None] = {}
    for i in range(0, len(wanted), _IN_CHUNK):
        rows = session.exec(select(Host.name, Host.bmc_password_enc)  # type: ignore[call-overload]
                            .where(col(Host.name).in_(wanted[i:i + _IN_CHUNK]))).all()
        out.update({str(n): enc for n, enc in rows})
    return out


def _host(key: str) -> str | None:
    kind, _, name = key.partition("/")
    return name if kind == "host" and name else None


def stamp(session: Session, settings: Settings, fingerprints: dict[str, dict[str, str]],
          previous: dict[str, Any] | None) -> dict[str, dict[str, str]]:
    """What a PUT stores: each password fingerprint checked against the stored password and stamped."""
    prev = previous or {}
    names = [n for k, e in fingerprints.items() if (n := _host(k)) and "password" in e]
    ciphers = _ciphers(session, names)
    out: dict[str, dict[str, str]] = {}
    for key, entry in fingerprints.items():
        entry = {k: v for k, v in entry.items() if k not in (STAMP, RECORDED)}
        name = _host(key)
        if name is not None and "password" in entry:
            enc = ciphers.get(name)
            old = prev.get(key) or {}
            if not enc:
                entry.pop("password")
            elif old.get(STAMP) == cipher_digest(enc) and old.get("password") == entry["password"]:
                entry[STAMP] = old[STAMP]  # checked before against this very ciphertext
            elif _cache.fingerprint(settings, enc) == entry["password"]:
                entry[STAMP] = cipher_digest(enc)
            else:
                entry.pop("password")  # not the password the host holds: never claim it is
        out[key] = entry
    return out


def current(session: Session, settings: Settings, fingerprints: dict[str, Any]) -> dict[str, dict[str, str]]:
    """What a read returns: each recorded password fingerprint as the stored password's now."""
    names = [n for k, e in fingerprints.items() if (n := _host(k)) and isinstance(e, dict) and "password" in e]
    ciphers = _ciphers(session, names)
    out: dict[str, dict[str, str]] = {}
    for key, raw in fingerprints.items():
        entry = {k: str(v) for k, v in (raw or {}).items() if k != RECORDED}
        name = _host(key)
        if name is not None and "password" in entry:
            enc = ciphers.get(name)
            if not enc:
                entry[RECORDED] = entry.pop("password")
                entry.pop(STAMP, None)
            elif entry.get(STAMP) != cipher_digest(enc):
                now = _cache.fingerprint(settings, enc)
                if now != entry["password"]:
                    entry[RECORDED] = entry["password"]
                if now is None:
                    entry.pop("password")
                else:
                    entry["password"] = now
                entry[STAMP] = cipher_digest(enc)
        out[key] = entry
    return out


def fingerprints(session: Session, settings: Settings, names: Iterable[str]) -> dict[str, str | None]:
    """host -> fingerprint of its stored BMC password (None: no password, or no such host)."""
    wanted = list(dict.fromkeys(names))
    ciphers = _ciphers(session, wanted)
    return {n: (_cache.fingerprint(settings, enc) if (enc := ciphers.get(n)) else None) for n in wanted}


def latest(session: Session) -> InventoryApply | None:
    return session.exec(select(InventoryApply).order_by(col(InventoryApply.id).desc()).limit(1)).first()


def record_dict(session: Session, settings: Settings, row: InventoryApply) -> dict[str, Any]:
    """The shape ``GET /gitops/applied`` returns (what ``World.applied`` holds), fingerprints current."""
    return {"id": row.id, "source": row.source, "commit": row.commit, "inventory_digest": row.inventory_digest,
            "document": row.document, "objects": row.objects, "ok": row.ok,
            "fingerprints": current(session, settings, row.fingerprints or {}),
            "actor": row.actor, "created_at": row.created_at.isoformat(), "salt": salt(settings)}
