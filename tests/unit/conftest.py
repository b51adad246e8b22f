"""Shared fixtures for the unit tests: migrated SQLite stores (helpers live in factories.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from meshnet.store import Store


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory) -> Path:
    """One database migrated to head; tests copy it instead of re-running alembic each time."""
    path = tmp_path_factory.mktemp("template") / "state.db"
    store = Store(path)
    store.upgrade()
    store.close()
    return path


@pytest.fixture
def store(migrated_db, tmp_path):
    path = tmp_path / "state.db"
    shutil.copy(migrated_db, path)
    s = Store(path)
    yield s
    s.close()
