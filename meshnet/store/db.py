"""Store access: WAL-mode SQLite through the stdlib sqlite3 (the agent never loads
SQLAlchemy, ~19 MB of RSS, unless alembic has a migration to run).

One connection, shared by the event loop and the worker threads under a lock; every
write is one transaction. Reads are answered from memory until the next write."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

from meshnet.rows import SHARED_KINDS, Outcome, Row, check_signature, newer
from meshnet.store.models import MODELS, Cluster, Model, Node, Revocation


class MigrationError(Exception):
    """The migration of the state database failed (its one-line reason)."""


def migrations_dir() -> Path:
    """migrations/ at the top of a checkout, or packaged inside the wheel."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "_migrations", here.parent / "migrations"):
        if (candidate / "env.py").exists():
            return candidate
    raise RuntimeError("meshnet migrations not found")


def head_revision() -> str:
    """The newest migration, from the file names (`NNNN_what.py`), without loading alembic."""
    names = [p.name.split("_", 1)[0] for p in (migrations_dir() / "versions").glob("[0-9]*_*.py")]
    return max(names)


def alembic_config(url: str):
    from alembic.config import Config  # alembic is heavy; most starts never need it

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


PRAGMAS = ("PRAGMA journal_mode=WAL",
           "PRAGMA synchronous=FULL",  # an acknowledged write survives power loss too
           "PRAGMA busy_timeout=5000",
           "PRAGMA foreign_keys=ON")


def _decode(model: type[Model], values: tuple) -> Model:
    obj = model.__new__(model)
    for (col, kind), v in zip(model.COLUMNS.items(), values, strict=True):
        if v is not None:
            if kind == "json":
                v = json.loads(v)
            elif kind == "bool":
                v = bool(v)
        setattr(obj, col, v)
    return obj


def _encode(model: type[Model], obj: Model) -> list:
    out = []
    for col, kind in model.COLUMNS.items():
        v = getattr(obj, col, None)
        if v is None and col in model.DEFAULTS:
            d = model.DEFAULTS[col]
            v = d() if callable(d) else d
        if kind == "json":
            v = json.dumps(v)  # None too, as JSON null, like SQLAlchemy's JSON type
        elif kind == "bool" and v is not None:
            v = int(bool(v))
        out.append(v)
    return out


def _upsert_sql(model: type[Model]) -> str:
    cols = list(model.COLUMNS)
    return (f"INSERT INTO {model.TABLE} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
            f"ON CONFLICT(id) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in cols if c != "id"))


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Root-only, like the keys: it holds the join secret after a rotation. SQLite gives
        # the -wal and -shm files the mode of the database file.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        os.chmod(path, 0o600)
        self.path = path
        self.url = f"sqlite:///{path}"
        self._conn: sqlite3.Connection | None = None  # opened on first use
        self._lock = threading.RLock()  # the connection is shared by the loop and threads
        # Reads are answered from memory until the next write: the agent asks for the same
        # members and rows on every request, push and reconcile, and only it writes here.
        # Entries carry the generation they were read at; a write bumps it after committing.
        self.generation = 0
        self._cache: dict = {}
        self._cache_lock = threading.Lock()

    def _cached(self, key, load):
        gen = self.generation
        hit = self._cache.get(key)
        if hit is not None and hit[0] == gen:
            return hit[1]
        value = load()
        with self._cache_lock:
            if self.generation == gen:  # not if a write landed while we were reading
                self._cache[key] = (gen, value)
        return value

    def _written(self) -> None:
        with self._cache_lock:
            self.generation += 1
            self._cache.clear()

    def upgrade(self) -> None:
        """Bring the schema to the newest migration, in a child process (migrate.py): a
        store already there is left alone without starting it."""
        try:
            current = self._select("SELECT version_num FROM alembic_version")[0][0]
        except (sqlite3.Error, IndexError):  # no table yet: a new store
            current = None
        if current == head_revision():
            return
        out = subprocess.run([sys.executable, "-m", "meshnet.store.migrate", str(self.path)],
                             capture_output=True, text=True)
        self._written()
        if out.returncode != 0:
            lines = out.stderr.strip().splitlines()
            raise MigrationError(lines[-1] if lines else f"exit status {out.returncode}")

    @property
    def _db(self) -> sqlite3.Connection:
        with self._lock:
            if self._conn is None:
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                for pragma in PRAGMAS:
                    conn.execute(pragma).fetchall()
                self._conn = conn
            return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _select(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _load(self, model: type[Model], where: str = "", args: tuple = (), order: str = "") -> list:
        cols = ", ".join(model.COLUMNS)
        rows = self._select(f"SELECT {cols} FROM {model.TABLE} {where} {order}", args)
        return [_decode(model, r) for r in rows]

    @contextlib.contextmanager
    def _transaction(self):
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- cluster --------------------------------------------------------------------

    def cluster(self) -> Cluster | None:
        def load():
            found = self._load(Cluster, order="LIMIT 1")
            return found[0] if found else None
        return self._cached("cluster", load)

    def save_cluster(self, cluster: Cluster) -> None:
        cols = list(Cluster.COLUMNS)
        try:
            with self._transaction() as db:
                db.execute("DELETE FROM cluster")
                db.execute(f"INSERT INTO cluster ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                           _encode(Cluster, cluster))
        finally:
            self._written()

    def forget_cluster(self) -> None:
        """Drop the membership and every replicated row (keys stay: a node may join again)."""
        try:
            with self._transaction() as db:
                for model in MODELS.values():
                    db.execute(f"DELETE FROM {model.TABLE}")
                db.execute("DELETE FROM cluster")
        finally:
            self._written()

    # -- replicated rows ------------------------------------------------------------

    @staticmethod
    def _to_row(obj: Model) -> Row:
        data = {k: getattr(obj, k) for k in obj.DATA}
        return Row(obj.KIND, obj.id, obj.owner, obj.version, obj.deleted, data, obj.sig)

    def nodes(self, include_deleted: bool = False) -> list[Node]:
        """Members; without include_deleted, revoked nodes are left out too, so nothing
        (peers, placement, IPAM, endpoints) counts them any more.

        Answered from memory between writes: the objects are shared, read them only."""
        def load():
            if include_deleted:
                return self._load(Node, order="ORDER BY name, id")
            return self._load(Node, "WHERE deleted = 0 AND id NOT IN "
                              "(SELECT id FROM revocations WHERE deleted = 0)", order="ORDER BY name, id")
        return list(self._cached(("nodes", include_deleted), load))

    def revoked(self, node_id: str) -> bool:
        r = self._by_id(Revocation).get(node_id)
        return r is not None and not r.deleted

    def node(self, node_id: str) -> Node | None:
        return self._by_id(Node).get(node_id)

    def _by_id(self, model: type) -> dict:
        return self._cached(("by_id", model), lambda: {o.id: o for o in self.objects(model, True)})

    def objects(self, model: type, include_deleted: bool = False) -> list:
        """Every row of one kind, as detached ORM objects (shared: read them only), oldest
        version first."""
        def load():
            return self._load(model, "" if include_deleted else "WHERE deleted = 0",
                              order="ORDER BY version, id")
        return list(self._cached(("objects", model, include_deleted), load))

    def get(self, model: type, row_id: str):
        return self._by_id(model).get(row_id)

    def rows(self, owners: set[str] | None = None) -> list[Row]:
        """Every replicated row (tombstones included), node rows first, for sending."""
        def load():
            out: list[Row] = []
            for model in MODELS.values():
                out.extend(self._to_row(o) for o in self.objects(model, include_deleted=True))
            return out
        every = self._cached("rows", load)
        return list(every) if owners is None else [r for r in every if r.owner in owners]

    def max_version(self) -> int:
        return max((r.version for r in self.rows()), default=0)

    def digest(self) -> dict[str, str]:
        """Per owner, a hash of the (kind, id, version) set: equal hashes, equal rows."""
        def load():
            per_owner: dict[str, list[str]] = defaultdict(list)
            for r in self.rows():
                per_owner[r.owner].append(f"{r.kind}/{r.id}/{r.version}")
            return {o: hashlib.sha256("\n".join(sorted(v)).encode()).hexdigest()[:16]
                    for o, v in per_owner.items()}
        return dict(self._cached("digest", load))

    def merge(self, rows: list[Row]) -> tuple[list[tuple[Row, Outcome]], list[str]]:
        """Apply rows that win the merge rule, in one transaction.

        Returns (what changed, why rows were refused). A refused row changes nothing.
        """
        changed: list[tuple[Row, Outcome]] = []
        refused: list[str] = []
        now = time.time()
        # Rows we already hold (most of a push or an anti-entropy answer) need no
        # transaction: the merge rule ignores them.
        ordered = sorted((r for r in rows if r.kind not in MODELS or not self._known(r)),
                         key=lambda r: (r.kind != "node", r.version))
        if not ordered:
            return changed, refused
        try:
            return self._merge(ordered, now, changed, refused)
        finally:
            if changed:
                self._written()

    def _known(self, row: Row) -> bool:
        existing = self._by_id(MODELS[row.kind]).get(row.id)
        return existing is not None and newer(row, self._to_row(existing)) is Outcome.IGNORED

    def _merge(self, ordered, now, changed, refused):
        with self._transaction():
            for row in ordered:
                model = MODELS[row.kind]
                existing = self._one(model, row.id)
                outcome = newer(row, self._to_row(existing) if existing else None)
                if outcome is Outcome.IGNORED:
                    continue
                owner = self._one(Node, row.owner)
                why = check_signature(row, owner.identity_pub if owner else None)
                revoked = self._one(Revocation, row.owner)
                if why is None and revoked is not None and not revoked.deleted and row.kind != "revocation":
                    why = f"{row.owner} has been removed from the cluster"
                if (why is None and existing is not None and existing.owner != row.owner
                        and row.kind not in SHARED_KINDS):
                    why = f"{row.owner} may not overwrite a row owned by {existing.owner}"
                if why:
                    refused.append(f"{row.kind} {row.id}: {why}")
                    continue
                obj = model(id=row.id, **{k: row.data.get(k) for k in model.DATA})
                obj.owner, obj.version = row.owner, row.version
                obj.deleted, obj.sig, obj.received = row.deleted, row.sig, now
                self._db.execute(_upsert_sql(model), _encode(model, obj))
                changed.append((row, outcome))
        return changed, refused

    def _one(self, model: type[Model], row_id: str) -> Model | None:
        found = self._load(model, "WHERE id = ?", (row_id,))
        return found[0] if found else None
