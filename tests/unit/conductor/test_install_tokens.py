# ruff: noqa: F811  (pytest fixtures are imported from tests/support/install.py)
"""One-time install tokens: hash-only storage, expiry, revocation, malformed input."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest

from provisioner.conductor import install_tokens
from provisioner.errors import Forbidden
from provisioner.models import utcnow
from tests.support.install import add_host, db, settings  # noqa: F401


def test_mint_stores_only_a_hash_and_verify_returns_the_host(db, settings):
    host = add_host(db)
    token = install_tokens.mint(db, host, settings)
    assert token.startswith(f"{host.id}.")
    assert token not in (host.install_token_hash or "")
    assert host.install_token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert host.install_token_expires is not None
    ttl = (host.install_token_expires - utcnow()).total_seconds()
    assert settings.install_token_ttl - 60 < ttl <= settings.install_token_ttl
    assert install_tokens.verify(db, token).id == host.id


def test_minting_again_kills_the_previous_token(db, settings):
    host = add_host(db)
    first = install_tokens.mint(db, host, settings)
    second = install_tokens.mint(db, host, settings)
    with pytest.raises(Forbidden):
        install_tokens.verify(db, first)
    assert install_tokens.verify(db, second).id == host.id


def test_revoked_token_is_refused(db, settings):
    host = add_host(db)
    token = install_tokens.mint(db, host, settings)
    install_tokens.revoke(db, host)
    with pytest.raises(Forbidden) as exc:
        install_tokens.verify(db, token)
    assert exc.value.http_status == 403


def test_expired_token_is_refused(db, settings):
    host = add_host(db)
    token = install_tokens.mint(db, host, settings)
    host.install_token_expires = utcnow() - timedelta(seconds=1)
    db.add(host)
    db.commit()
    with pytest.raises(Forbidden):
        install_tokens.verify(db, token)


@pytest.mark.parametrize("bad", ["", "x", "1", "1.", ".abc", "abc.def", "99999.abc", "1." + "a" * 500, "-1.abc"])
def test_malformed_or_unknown_tokens_are_refused(db, settings, bad):
    add_host(db)
    with pytest.raises(Forbidden):
        install_tokens.verify(db, bad)


def test_token_of_one_host_with_another_hosts_id_is_refused(db, settings):
    a = add_host(db)
    b = add_host(db)
    token_a = install_tokens.mint(db, a, settings)
    install_tokens.mint(db, b, settings)
    forged = f"{b.id}.{token_a.split('.', 1)[1]}"
    with pytest.raises(Forbidden):
        install_tokens.verify(db, forged)
