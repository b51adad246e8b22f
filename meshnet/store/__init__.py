"""The node's SQLite store: schema in models.py (created only by migrations/), access in db.py."""

from meshnet.store.db import Store

__all__ = ["Store"]
