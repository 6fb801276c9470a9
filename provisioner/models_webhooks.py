"""Webhook subscriptions and their delivery log (issue 16, item 2; provisioner/conductor/webhooks.py).

A ``Webhook`` row is also the deliverer's cursor: ``cursor`` is the id of the newest event of
``event_stream`` this subscription has acknowledged (delivered with a 2xx, or skipped by its
filter), so a restart or another conductor continues after it and nothing acknowledged is sent
again. ``lease_owner``/``lease_until`` are the compare-and-set lease of the conductor that
delivers it now: one conductor per subscription at a time (provisioner/conductor/webhooks.py).
The secret is stored only encrypted (``secret_enc``, provisioner/secret_store.py, like BMC
passwords) and never leaves the database except as the HMAC key of a delivery.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, ForeignKey, Index, Integer, Text
from sqlmodel import Field, SQLModel

from provisioner.models import utcnow


class Webhook(SQLModel, table=True):
    __tablename__ = "webhook"
    # the deliverer's claim: enabled rows whose lease is free
    __table_args__ = (Index("ix_webhook_enabled_lease", "enabled", "lease_until"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=63, unique=True)
    url: str = Field(max_length=2048)
    events: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))  # [] = every kind
    secret_enc: str = Field(sa_column=Column(Text, nullable=False))
    enabled: bool = Field(default=True)
    disabled_reason: str = Field(default="", max_length=500)
    cursor: int = Field(default=0)  # newest event id acknowledged
    failures: int = Field(default=0)  # consecutive failed attempts (reset by a success)
    next_attempt_at: datetime | None = None  # after retries ran out: not before this
    lease_owner: str | None = Field(default=None, max_length=128)  # cluster member id of the deliverer
    lease_until: datetime | None = None
    last_delivery_at: datetime | None = None
    last_status_code: int | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class WebhookDelivery(SQLModel, table=True):
    """One attempt to POST one event to one subscription (the newest kept per subscription)."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (Index("ix_webhook_delivery_webhook_id", "webhook_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    webhook_id: int = Field(sa_column=Column(Integer, ForeignKey("webhook.id", ondelete="CASCADE"), nullable=False))
    event_id: int
    event_kind: str = Field(default="", max_length=32)
    at: datetime = Field(default_factory=utcnow)
    attempt: int = Field(default=1)
    status_code: int | None = None
    duration_ms: int = Field(default=0)
    ok: bool = Field(default=False)
    error: str = Field(default="", max_length=500)

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "event_id": self.event_id, "event_kind": self.event_kind, "at": self.at,
                "attempt": self.attempt, "status_code": self.status_code, "duration_ms": self.duration_ms,
                "ok": self.ok, "error": self.error}
