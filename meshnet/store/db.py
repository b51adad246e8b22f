"""Store access: WAL-mode SQLite via SQLAlchemy, schema upgraded by alembic on open."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import defaultdict
from pathlib import Path

from sqlalchemy import create_engine, delete, event, select, text
from sqlalchemy.orm import sessionmaker

from meshnet.rows import SHARED_KINDS, Outcome, Row, check_signature, newer
from meshnet.store.models import MODELS, Cluster, Node, Revocation


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


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")  # an acknowledged write survives power loss too
    cur.execute("PRAGMA busy_timeout=5000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Root-only, like the keys: it holds the join secret after a rotation. SQLite gives
        # the -wal and -shm files the mode of the database file.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        os.chmod(path, 0o600)
        self.url = f"sqlite:///{path}"
        self.engine = create_engine(self.url)
        event.listen(self.engine, "connect", _sqlite_pragmas)
        self.session = sessionmaker(self.engine, expire_on_commit=False)
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
        """Bring the schema to the newest migration; a store already there is left alone
        without importing alembic (a second or more on a slow machine)."""
        try:
            with self.engine.connect() as conn:
                current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except Exception:  # no table yet: a new store
            current = None
        if current == head_revision():
            return
        from alembic import command

        command.upgrade(alembic_config(self.url), "head")

    def close(self) -> None:
        self.engine.dispose()

    # -- cluster --------------------------------------------------------------------

    def cluster(self) -> Cluster | None:
        def load():
            with self.session() as s:
                return s.scalars(select(Cluster)).first()
        return self._cached("cluster", load)

    def save_cluster(self, cluster: Cluster) -> None:
        try:
            with self.session.begin() as s:
                s.execute(delete(Cluster))
                s.add(cluster)
        finally:
            self._written()

    def forget_cluster(self) -> None:
        """Drop the membership and every replicated row (keys stay: a node may join again)."""
        try:
            with self.session.begin() as s:
                for model in MODELS.values():
                    s.execute(delete(model))
                s.execute(delete(Cluster))
        finally:
            self._written()

    # -- replicated rows ------------------------------------------------------------

    @staticmethod
    def _to_row(obj) -> Row:
        data = {k: getattr(obj, k) for k in obj.DATA}
        return Row(obj.KIND, obj.id, obj.owner, obj.version, obj.deleted, data, obj.sig)

    def nodes(self, include_deleted: bool = False) -> list[Node]:
        """Members; without include_deleted, revoked nodes are left out too, so nothing
        (peers, placement, IPAM, endpoints) counts them any more.

        Answered from memory between writes: the objects are shared, read them only."""
        def load():
            with self.session() as s:
                q = select(Node).order_by(Node.name, Node.id)
                if not include_deleted:
                    revoked = select(Revocation.id).where(Revocation.deleted.is_(False))
                    q = q.where(Node.deleted.is_(False), Node.id.not_in(revoked))
                return list(s.scalars(q))
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
            with self.session() as s:
                q = select(model).order_by(model.version, model.id)
                if not include_deleted:
                    q = q.where(model.deleted.is_(False))
                return list(s.scalars(q))
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
        with self.session.begin() as s:
            for row in ordered:
                model = MODELS[row.kind]
                existing = s.get(model, row.id)
                outcome = newer(row, self._to_row(existing) if existing else None)
                if outcome is Outcome.IGNORED:
                    continue
                owner = s.get(Node, row.owner)
                why = check_signature(row, owner.identity_pub if owner else None)
                revoked = s.get(Revocation, row.owner)
                if why is None and revoked is not None and not revoked.deleted and row.kind != "revocation":
                    why = f"{row.owner} has been removed from the cluster"
                if (why is None and existing is not None and existing.owner != row.owner
                        and row.kind not in SHARED_KINDS):
                    why = f"{row.owner} may not overwrite a row owned by {existing.owner}"
                if why:
                    refused.append(f"{row.kind} {row.id}: {why}")
                    continue
                if existing is None:
                    existing = model(id=row.id)
                    s.add(existing)
                for k in model.DATA:
                    setattr(existing, k, row.data.get(k))
                existing.owner, existing.version = row.owner, row.version
                existing.deleted, existing.sig, existing.received = row.deleted, row.sig, now
                s.flush()
                changed.append((row, outcome))
        return changed, refused
