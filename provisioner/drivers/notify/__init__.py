"""Outgoing notifications (webhook POSTs). Adapters only: no database, no conductor."""
