from __future__ import annotations

import itertools
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from factories import make_keys, node_row
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshnet.rows import Outcome, Row
from meshnet.store import Store
from meshnet.store.models import MODELS, Base, Cluster


def connect(store: Store):
    """A SQLAlchemy connection to the store's file (the store itself uses sqlite3)."""
    from sqlalchemy import create_engine

    return create_engine(store.url).connect()


def by_key(rows: list[Row]) -> list[dict]:
    return [r.to_json() for r in sorted(rows, key=lambda r: r.key)]


# -- schema ------------------------------------------------------------------------

def test_migrations_create_exactly_the_models_schema(store):
    with connect(store) as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_plain_models_have_the_schema_columns():
    """models.py (what the agent reads and writes) and schema.py (what alembic checks
    the migrations against) describe the same tables."""
    kinds = {"str": "VARCHAR", "int": "BIGINT", "float": "FLOAT", "bool": "BOOLEAN", "json": "JSON"}
    for model in [Cluster, *MODELS.values()]:
        table = Base.metadata.tables[model.TABLE]
        assert {c.name: str(c.type) for c in table.columns} == {
            c: kinds[k] for c, k in model.COLUMNS.items()}, model.TABLE


def test_upgrade_from_scratch_and_again_is_harmless(tmp_path):
    s = Store(tmp_path / "sub" / "state.db")
    s.upgrade()
    s.upgrade()
    with connect(s) as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    s.close()


def test_upgrade_runs_alembic_in_a_child_and_reports_failure_in_one_line(tmp_path):
    from meshnet.store.db import MigrationError

    bad = tmp_path / "bad.db"
    bad.write_bytes(b"not a database " * 20)
    with pytest.raises(MigrationError, match=r"^file is not a database$"):
        Store(bad).upgrade()
    # A new store is migrated, read and written without loading SQLAlchemy in the process.
    code = ("import sys; from pathlib import Path; from meshnet.store import Store; "
            f"s = Store(Path({str(tmp_path / 'new.db')!r})); s.upgrade(); s.nodes(); s.forget_cluster(); "
            "print(sorted(m for m in ('sqlalchemy', 'alembic') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_wal_mode(store):
    assert store._select("PRAGMA journal_mode") == [("wal",)]
    assert store._select("PRAGMA foreign_keys") == [(1,)]
    assert store._select("PRAGMA synchronous") == [(2,)]  # FULL
    # persistent in the file, so other readers (sqlite3 CLI, backups) see it too
    db = sqlite3.connect(store.url.removeprefix("sqlite:///"))
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


# -- cluster -----------------------------------------------------------------------

def test_cluster_save_and_forget(store):
    assert store.cluster() is None
    store.save_cluster(Cluster(id="aa", secret_hash="h", created=1.0,
                               settings={"transit_cidr": "10.77.0.0/24"}))
    store.save_cluster(Cluster(id="bb", secret_hash="h2", created=2.0, settings={}))
    assert store.cluster().id == "bb"  # only one cluster at a time
    keys = make_keys()
    store.merge([node_row(keys, 10), node_row(make_keys(), 11, deleted=True)])
    store.forget_cluster()
    assert store.cluster() is None
    assert store.rows() == []
    assert store.nodes(include_deleted=True) == []
    assert store.digest() == {}
    assert store.max_version() == 0


# -- merge -------------------------------------------------------------------------

def test_merge_new_update_ignore(store):
    keys = make_keys()
    v1, v2 = node_row(keys, 10), node_row(keys, 20, transit_ip="10.77.0.9")
    assert store.merge([v1]) == ([(v1, Outcome.NEW)], [])
    assert store.merge([v2]) == ([(v2, Outcome.UPDATED)], [])
    assert store.merge([v1, v2]) == ([], [])
    assert store.rows() == [v2]
    assert store.node(keys.node_id).transit_ip == "10.77.0.9"
    assert store.max_version() == 20


def test_tombstones_are_kept_but_hidden_from_nodes(store):
    keys = make_keys()
    store.merge([node_row(keys, 10), node_row(keys, 11, deleted=True)])
    assert store.nodes() == []
    assert [n.id for n in store.nodes(include_deleted=True)] == [keys.node_id]
    assert store.rows()[0].deleted is True


def test_bad_signature_is_refused_and_stores_nothing(store):
    keys, other = make_keys(), make_keys()
    good = node_row(keys, 10)
    forged = Row(good.kind, good.id, good.owner, 11, False, good.data, other.sign(good.signing_bytes()))
    changed, refused = store.merge([forged])
    assert changed == []
    assert refused == [f"node {keys.node_id}: bad signature from {keys.node_id}"]
    assert store.rows() == []
    # and a forged newer version does not replace the genuine one
    store.merge([good])
    changed, refused = store.merge([forged])
    assert (changed, len(refused)) == ([], 1)
    assert store.rows() == [good]


def test_refused_row_does_not_spoil_the_rest_of_the_batch(store):
    a, b = make_keys(), make_keys()
    good = node_row(a, 10)
    tampered = Row(*[getattr(node_row(b, 10), f) for f in ("kind", "id", "owner")], 10, True,
                   node_row(b, 10).data, node_row(b, 10).sig)
    changed, refused = store.merge([tampered, good])
    assert changed == [(good, Outcome.NEW)]
    assert len(refused) == 1
    assert store.rows() == [good]


def test_non_owner_cannot_overwrite_a_row(store):
    victim, attacker = make_keys(), make_keys()
    original = node_row(victim, 10)
    store.merge([original])
    hijack = Row("node", victim.node_id, attacker.node_id, 99, True,
                 node_row(victim, 99, transit_ip="10.77.0.66").data).signed(attacker)
    changed, refused = store.merge([node_row(attacker, 5), hijack])
    assert [r.id for r, _ in changed] == [attacker.node_id]
    assert refused == [f"node {victim.node_id}: a node row must be owned by that node"]
    assert store.node(victim.node_id).version == 10
    assert store.node(victim.node_id).transit_ip == original.data["transit_ip"]


def test_digest_changes_with_versions(store):
    a, b = make_keys(), make_keys()
    store.merge([node_row(a, 10), node_row(b, 10)])
    d1 = store.digest()
    assert set(d1) == {a.node_id, b.node_id}
    store.merge([node_row(a, 11)])
    d2 = store.digest()
    assert d2[b.node_id] == d1[b.node_id]
    assert d2[a.node_id] != d1[a.node_id]


def test_rows_filtered_by_owner(store):
    a, b = make_keys(), make_keys()
    store.merge([node_row(a, 10), node_row(b, 10)])
    assert [r.owner for r in store.rows({a.node_id})] == [a.node_id]
    assert store.rows(set()) == []


# -- reads answered from memory until the next write ------------------------------

def test_reads_follow_every_kind_of_write(store):
    a, b = make_keys(), make_keys()
    assert (store.nodes(), store.cluster(), store.digest()) == ([], None, {})
    store.merge([node_row(a, 10)])
    assert [n.id for n in store.nodes()] == [a.node_id]
    d1 = store.digest()
    store.merge([node_row(a, 11, transit_ip="10.77.0.5"), node_row(b, 10)])
    assert store.node(a.node_id).transit_ip == "10.77.0.5"
    assert {n.id for n in store.nodes()} == {a.node_id, b.node_id}
    assert store.digest() != d1 and store.max_version() == 11
    store.save_cluster(Cluster(id="aa", secret_hash="h", created=1.0, settings={}))
    assert store.cluster().id == "aa"
    store.forget_cluster()
    assert (store.nodes(), store.cluster(), store.rows()) == ([], None, [])


def test_callers_cannot_spoil_the_cached_lists(store):
    keys = make_keys()
    store.merge([node_row(keys, 10)])
    store.nodes().clear()
    store.rows().clear()
    store.digest().clear()
    assert len(store.nodes()) == 1 and len(store.rows()) == 1 and len(store.digest()) == 1


def test_rows_already_held_need_no_transaction(store):
    keys = make_keys()
    row = node_row(keys, 10)
    store.merge([row])
    gen = store.generation
    assert store.merge([row, row]) == ([], [])
    assert store.generation == gen  # nothing written, the cache stays valid


def test_a_read_racing_a_write_is_not_cached(store):
    """A read that started before a write must not be kept as the answer after it."""
    keys = make_keys()
    stale = store._cached("nodes-test", lambda: (store._written(), "stale")[1])
    assert stale == "stale"
    assert store._cached("nodes-test", lambda: "fresh") == "fresh"
    store.merge([node_row(keys, 10)])
    assert [n.id for n in store.nodes()] == [keys.node_id]


def test_state_survives_reopen(store):
    keys = make_keys()
    row = node_row(keys, 10, labels={"zone": "b", "n": [1, 2]})
    store.merge([row])
    store.close()
    again = Store(Path(store.url.removeprefix("sqlite:///")))
    assert again.rows() == [row]
    again.close()


# -- convergence: any order, duplication and batching gives the same store -----------

OWNERS = [make_keys() for _ in range(3)]
HISTORY = [(10, False, "active"), (15, False, "active"), (20, False, "left"), (30, True, "left")]
POOL: list[Row] = [
    node_row(k, version + i, deleted=deleted, transit_ip=f"10.77.0.{version}", state=state,
             labels={"v": version})
    for i, k in enumerate(OWNERS)
    for version, deleted, state in HISTORY[: 2 + i]  # owner 0 ends live, owner 2 ends as a tombstone
]
EXPECTED = by_key([max((r for r in POOL if r.id == k.node_id), key=lambda r: r.version) for k in OWNERS])


@pytest.fixture(scope="module")
def reference_digest(migrated_db, tmp_path_factory):
    path = tmp_path_factory.mktemp("reference") / "state.db"
    shutil.copy(migrated_db, path)
    s = Store(path)
    s.merge(sorted(POOL, key=lambda r: r.version))
    assert by_key(s.rows()) == EXPECTED
    digest = s.digest()
    s.close()
    return digest


@st.composite
def deliveries(draw):
    """Every row of POOL at least once, some twice, in any order, cut into batches."""
    rows = draw(st.permutations(POOL)) + draw(st.lists(st.sampled_from(POOL), max_size=6))
    rows = draw(st.permutations(rows))
    cuts = sorted(draw(st.sets(st.integers(1, len(rows) - 1), max_size=len(rows) - 1)))
    bounds = [0, *cuts, len(rows)]
    return [rows[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=deliveries())
def test_any_order_duplication_and_batching_converge(migrated_db, reference_digest, batches):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "state.db"
        shutil.copy(migrated_db, path)
        s = Store(path)
        try:
            refused = []
            for batch in batches:
                refused += s.merge(batch)[1]
            assert refused == []
            assert by_key(s.rows()) == EXPECTED
            assert s.digest() == reference_digest
        finally:
            s.close()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.permutations(POOL), split=st.integers(0, len(POOL)))
def test_two_stores_fed_differently_agree(migrated_db, order, split):
    """Node A gets rows in one order, node B the reverse in two parts: same rows, same digest."""
    with tempfile.TemporaryDirectory() as d:
        stores = []
        for name in ("a", "b"):
            shutil.copy(migrated_db, Path(d) / name)
            stores.append(Store(Path(d) / name))
        a, b = stores
        try:
            a.merge(order)
            b.merge(order[::-1][:split])
            b.merge(order[::-1][split:])
            assert by_key(a.rows()) == by_key(b.rows()) == EXPECTED
            assert a.digest() == b.digest()
        finally:
            a.close()
            b.close()
