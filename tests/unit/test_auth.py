from __future__ import annotations

import hashlib
from pathlib import Path

from sqlmodel import Session, select

from provisioner import auth, migrate
from provisioner.db import get_engine
from provisioner.models import ApiToken
from provisioner.settings import Settings


def test_tokens_hashed_and_admin_once(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    migrate.upgrade(settings)
    first = auth.ensure_admin_token(settings)
    assert first and first.startswith(auth.PREFIX)
    assert auth.ensure_admin_token(settings) is None  # printed only on the very first start
    with Session(get_engine(settings)) as s:
        row = s.exec(select(ApiToken)).one()
        assert row.name == "admin" and row.token_hash == hashlib.sha256(first.encode()).hexdigest()
        other = auth.create_token(s, name="ci")
        assert other != first
        assert auth.verify_token(s, other).name == "ci"  # type: ignore[union-attr]
        assert auth.verify_token(s, "prov_nope") is None
        row2 = s.exec(select(ApiToken).where(ApiToken.name == "ci")).one()
        row2.revoked = True
        s.add(row2)
        s.commit()
        assert auth.verify_token(s, other) is None
    get_engine(settings).dispose()


def test_revoke_by_id_or_name_and_unknown_is_not_found(tmp_path: Path) -> None:
    import pytest

    from provisioner.errors import NotFound

    settings = Settings(data_dir=tmp_path)
    migrate.upgrade(settings)
    with Session(get_engine(settings)) as s:
        a = auth.create_token(s, name="ci")
        b = auth.create_token(s, name="ci")
        c = auth.create_token(s, name="ops")
        ids = {r.name + str(i): r.id for i, r in enumerate(auth.list_tokens(s))}
        assert [r.name for r in auth.list_tokens(s)] == ["ci", "ci", "ops"]
        assert [r.revoked for r in auth.revoke_tokens(s, "ci")] == [True, True]
        assert auth.verify_token(s, a) is None and auth.verify_token(s, b) is None
        assert auth.verify_token(s, c) is not None
        assert [r.name for r in auth.revoke_tokens(s, str(ids["ops2"]))] == ["ops"]
        assert auth.verify_token(s, c) is None
        with pytest.raises(NotFound):
            auth.revoke_tokens(s, "nobody")
        with pytest.raises(NotFound):
            auth.revoke_tokens(s, "999")
    get_engine(settings).dispose()
