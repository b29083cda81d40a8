"""The disk tier: one file per entry plus a SQLite index, shared by every process on the disk.

Why not diskcache or lmdb (docs/caching.md has the long form): an entry here needs a
checksum, an exact byte cap with least-recently-used eviction, per-kind counters that
outlive the process, and no code path that could unpickle. diskcache has no checksums
and keeps pickle as a storage mode; lmdb has a fixed map size and no eviction. SQLite
(WAL mode) gives the multi-process transactions, files give cheap large values.

Writes are atomic: the value goes to a temp file, is renamed to a name no other write
uses, and only then is the index row committed. A reader checks size and sha256; a
mismatch is a miss and the entry is removed. Files are sealed (seal.py: an HMAC over kind,
key and bytes under the cache secret): one whose MAC fails is a miss, counted as forged.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from zturbo.caches.base import SCHEMA, CacheTier, check_key, check_kind, log
from zturbo.caches.seal import Sealer

_ORPHAN_GRACE_S = 60.0  # a file this new may belong to a write that hasn't committed yet

_TABLES = """
CREATE TABLE IF NOT EXISTS entries (
    kind TEXT NOT NULL, key TEXT NOT NULL, file TEXT NOT NULL, size INTEGER NOT NULL,
    sha256 TEXT NOT NULL, created REAL NOT NULL, accessed REAL NOT NULL,
    PRIMARY KEY (kind, key)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_accessed ON entries (accessed);
CREATE TABLE IF NOT EXISTS counters (
    kind TEXT NOT NULL, name TEXT NOT NULL, value REAL NOT NULL,
    PRIMARY KEY (kind, name)) WITHOUT ROWID;
"""


class DiskTier(CacheTier):
    """Entries under ``root/v{SCHEMA}/``, at most ``max_bytes`` of values, LRU by last access."""

    name = "disk"

    def __init__(self, root: Path, max_bytes: int, secret: bytes | None = None) -> None:
        """``secret``: the seal's key (default: the cache secret, seal.cache_secret)."""
        super().__init__()
        self._sealer = Sealer(self.name, secret)
        self.root = Path(root) / f"v{SCHEMA}"
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        with self._lock:
            self._db()

    # --- the CacheTier contract -------------------------------------------------------

    def get(self, kind: str, key: str) -> bytes | None:
        check_key(kind, key)
        try:
            with self._lock:
                row = self._db().execute(
                    "SELECT file, size, sha256 FROM entries WHERE kind = ? AND key = ?",
                    (kind, key)).fetchone()
            if row is None:
                return None
            file, size, digest = row
            data = self._read(file)
            if data is None or len(data) != size or hashlib.sha256(data).hexdigest() != digest:
                self._remove_bad(kind, key, file)
                return None
            opened = self._sealer.open(kind, key, data)
            if opened is None:  # intact but not sealed for this key: a miss, left in place
                return None
            with self._lock, self._transaction() as db:
                db.execute("UPDATE entries SET accessed = ? WHERE kind = ? AND key = ? AND "
                           "file = ?", (time.time(), kind, key, file))
            return opened
        except (OSError, sqlite3.Error) as exc:
            self.failed("get", exc)
            return None

    def put(self, kind: str, key: str, data: bytes) -> None:
        check_key(kind, key)
        data = self._sealer.seal(kind, key, bytes(data))
        if len(data) > self.max_bytes:
            return
        file = f"data/{kind}/{key[:2]}/{key}.{secrets.token_hex(6)}.bin"
        try:
            self._write(file, data)
        except OSError as exc:
            self.failed("put", exc)
            return
        try:
            now = time.time()
            with self._lock, self._transaction() as db:
                old = db.execute("SELECT file FROM entries WHERE kind = ? AND key = ?",
                                 (kind, key)).fetchone()
                db.execute("INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (kind, key, file, len(data), hashlib.sha256(data).hexdigest(),
                            now, now))
                doomed = self._evict(db, kind, key) + ([old[0]] if old else [])
        except (OSError, sqlite3.Error) as exc:
            self.failed("put", exc)
            doomed = [file]
        self._unlink(doomed)

    def delete(self, kind: str, key: str) -> None:
        check_key(kind, key)
        self._remove(kind, "AND key = ?", (key,))

    def clear(self, kind: str | None = None) -> int:
        if kind is None:
            return self._remove(None, "", ())
        return self._remove(check_kind(kind), "", ())

    def stats(self) -> dict:
        try:
            with self._lock:
                db = self._db()
                rows = db.execute("SELECT kind, COUNT(*), COALESCE(SUM(size), 0) FROM entries "
                                  "GROUP BY kind").fetchall()
                counters = db.execute("SELECT kind, name, value FROM counters WHERE name IN "
                                      "('#evictions', '#corrupt')").fetchall()
        except sqlite3.Error as exc:
            self.failed("stats", exc)
            rows, counters = [], []
        kinds: dict[str, dict[str, int]] = {}
        for kind, entries, size in rows:
            kinds[kind] = {"entries": entries, "bytes": size, "evictions": 0, "corrupt": 0}
        for kind, name, value in counters:
            per = kinds.setdefault(kind, {"entries": 0, "bytes": 0, "evictions": 0,
                                          "corrupt": 0})
            per[name.removeprefix("#")] = int(value)
        return {"entries": sum(k["entries"] for k in kinds.values()),
                "bytes": sum(k["bytes"] for k in kinds.values()), "max_bytes": self.max_bytes,
                "evictions": sum(k["evictions"] for k in kinds.values()),
                "corrupt": sum(k["corrupt"] for k in kinds.values()), "errors": self._errors,
                "forged": self._sealer.forged,
                "path": str(self.root), "kinds": dict(sorted(kinds.items()))}

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # --- beyond the contract ----------------------------------------------------------

    def verify(self) -> dict:
        """Check every entry's size and sha256, remove bad ones and orphaned files."""
        with self._lock:
            rows = self._db().execute("SELECT kind, key, file, size, sha256 FROM entries"
                                      ).fetchall()
        checked = removed = 0
        for kind, key, file, size, digest in rows:
            checked += 1
            data = self._read(file)
            if data is None or len(data) != size or hashlib.sha256(data).hexdigest() != digest:
                self._remove_bad(kind, key, file)
                removed += 1
        return {"checked": checked, "ok": checked - removed, "removed": removed,
                "orphans": self._remove_orphans()}

    def add_counters(self, deltas: dict[tuple[str, str], float]) -> None:
        """Add to the cumulative counters kept in the index (they outlive the process)."""
        if any(name.startswith("#") for _, name in deltas):
            raise ValueError("counter names starting with # belong to the disk tier")
        if not deltas:
            return
        try:
            with self._lock, self._transaction() as db:
                db.executemany(
                    "INSERT INTO counters VALUES (?, ?, ?) ON CONFLICT (kind, name) DO UPDATE "
                    "SET value = value + excluded.value",
                    [(kind, name, value) for (kind, name), value in deltas.items()])
        except sqlite3.Error as exc:
            self.failed("counters", exc)

    def counters(self) -> dict[tuple[str, str], float]:
        """The counters added with ``add_counters``: ``{(kind, name): value}``.

        The tier's own counters (evictions, corrupt) are stored as ``#name`` and left out.
        """
        try:
            with self._lock:
                rows = self._db().execute("SELECT kind, name, value FROM counters WHERE name "
                                          "NOT LIKE '#%'").fetchall()
        except sqlite3.Error as exc:
            self.failed("counters", exc)
            return {}
        return {(kind, name): value for kind, name, value in rows}

    # --- helpers ----------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        """This process's connection (reopened after a fork: SQLite handles don't survive one)."""
        if self._conn is None or self._pid != os.getpid():
            (self.root / "tmp").mkdir(parents=True, exist_ok=True)
            self._conn = self._open(self.root / "index.sqlite")
            self._pid = os.getpid()
        return self._conn

    def _open(self, path: Path) -> sqlite3.Connection:
        try:
            return _connect(path)
        except sqlite3.DatabaseError as exc:  # not a database: set it aside, start empty
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            log.warning("disk cache index %s is unreadable (%s); moved to %s", path, exc, aside)
            path.replace(aside)
            return _connect(path)

    @contextmanager
    def _transaction(self):
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _evict(self, db: sqlite3.Connection, kind: str, key: str) -> list[str]:
        """Delete least recently used rows (not the one just written) until under the cap."""
        total = db.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()[0]
        if total <= self.max_bytes:
            return []
        victims = []
        for row in db.execute("SELECT kind, key, file, size FROM entries WHERE NOT (kind = ? "
                              "AND key = ?) ORDER BY accessed", (kind, key)):
            victims.append(row)
            total -= row[3]
            if total <= self.max_bytes:
                break
        db.executemany("DELETE FROM entries WHERE kind = ? AND key = ?",
                       [(v[0], v[1]) for v in victims])
        self._count(db, [(v[0], "#evictions") for v in victims])
        return [v[2] for v in victims]

    def _remove(self, kind: str | None, where: str, args: tuple) -> int:
        sql_kind = "kind = ?" if kind is not None else "1"
        params = ((kind,) if kind is not None else ()) + args
        try:
            with self._lock, self._transaction() as db:
                files = [r[0] for r in db.execute(
                    f"SELECT file FROM entries WHERE {sql_kind} {where}", params)]
                db.execute(f"DELETE FROM entries WHERE {sql_kind} {where}", params)
        except sqlite3.Error as exc:
            self.failed("delete", exc)
            return 0
        self._unlink(files)
        return len(files)

    def _remove_bad(self, kind: str, key: str, file: str) -> None:
        """Drop a corrupt or truncated entry, unless another process replaced it meanwhile."""
        with self._lock, self._transaction() as db:
            gone = db.execute("DELETE FROM entries WHERE kind = ? AND key = ? AND file = ?",
                              (kind, key, file)).rowcount
            if gone:
                self._count(db, [(kind, "#corrupt")])
        if gone:
            log.warning("disk cache: removed a corrupt entry %s/%s", kind, key)
            self._unlink([file])

    def _remove_orphans(self) -> int:
        """Files no index row points at (a crash between rename and commit), once old enough."""
        with self._lock:
            known = {r[0] for r in self._db().execute("SELECT file FROM entries")}
        cutoff = time.time() - _ORPHAN_GRACE_S
        removed = 0
        for folder in (self.root / "data", self.root / "tmp"):
            for path in folder.rglob("*") if folder.exists() else ():
                rel = path.relative_to(self.root).as_posix()
                try:
                    if path.is_file() and rel not in known and path.stat().st_mtime < cutoff:
                        path.unlink()
                        removed += 1
                except FileNotFoundError:
                    pass
        return removed

    @staticmethod
    def _count(db: sqlite3.Connection, names: list[tuple[str, str]]) -> None:
        db.executemany("INSERT INTO counters VALUES (?, ?, 1) ON CONFLICT (kind, name) DO "
                       "UPDATE SET value = value + 1", names)

    def _read(self, file: str) -> bytes | None:
        try:
            return (self.root / file).read_bytes()
        except FileNotFoundError:
            return None

    def _write(self, file: str, data: bytes) -> None:
        final = self.root / file
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.root / "tmp" / f"{final.name}.{os.getpid()}.tmp"
        try:
            tmp.write_bytes(data)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

    def _unlink(self, files: list[str]) -> None:
        for file in files:
            (self.root / file).unlink(missing_ok=True)


def _connect(path: Path) -> sqlite3.Connection:
    """WAL lets readers in other processes go on while one writes; 30 s of lock patience."""
    db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.executescript(_TABLES)
    return db
