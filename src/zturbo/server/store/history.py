"""The local state store: SQLite under the state dir, one row per job and one per image.

SQLite is the embedded default: no service to run, survives a restart, and one file an
operator can copy. Two connections shared by the worker thread and the request threads, one
that writes and one that reads, each guarded by a lock (SQLite serialises writers anyway; the
locks keep the Python objects safe). In WAL mode a reader never waits for a writer, so a
write waiting out a busy database (an operator's ``sqlite3`` session, a backup: up to
``BUSY_TIMEOUT_S``) does not hold up the reads. Rows hold JSON text, never pickles.

A write that fails (disk full, I/O error, a lock held past the busy timeout) raises
``StoreUnavailable`` (503 with Retry-After); the job worker keeps the rows it could not
write and retries them (jobs.py).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from zturbo.paths import contained_file
from zturbo.server.store.base import TERMINAL, Store, StoreUnavailable

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    request TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    error TEXT
);
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    created REAL NOT NULL,
    prompt TEXT NOT NULL,
    seed INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    request TEXT NOT NULL,
    model TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    timings TEXT NOT NULL,
    teleport TEXT NOT NULL,
    path TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS images_created ON images (created DESC);
CREATE INDEX IF NOT EXISTS images_seed ON images (seed, fingerprint);
"""
# How long a write waits for another connection's lock before it fails (the worker then keeps
# the row and retries it): an operator's sqlite3 session or a backup may hold one for seconds.
BUSY_TIMEOUT_S = 30.0
PROBE_BYTES = 8192  # the probe's row: larger than most requests, so it needs new pages too
_WRITE_FAILED = ("the history database cannot be written ({exc}): the disk of the server's "
                 "state dir may be full or failing; retry later")
# how many images the row's job made (its timings are the whole job's)
JOB_IMAGES = "(SELECT COUNT(*) FROM images j WHERE j.job_id = images.job_id) AS job_images"


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, check_same_thread=False,
                         isolation_level=None)
    db.row_factory = sqlite3.Row
    return db


class LocalStore(Store):
    """The local backend of the state store: jobs and images in SQLite; the PNGs are the
    files under ``outputs`` that the JobQueue writes; live job state (events, cancels) stays
    in this process's JobQueue."""

    def __init__(self, path: Path, outputs: Path | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.outputs = outputs
        self._lock = threading.Lock()  # the writing connection
        self._read_lock = threading.Lock()  # the reading connection
        self._db = _connect(path)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: no corruption on a crash, only the last commits may be lost on
            # power loss; FULL costs an fsync (~5 ms here) per write, 4 writes per job.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
        self._reader = _connect(path)

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._db.close()
            self._reader.close()

    def _run(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        """A read (never waits for a writer: WAL)."""
        try:
            with self._read_lock:
                return self._reader.execute(sql, args).fetchall()
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"the history database cannot be read ({exc}): retry "
                                   "later") from None

    def _write(self, sql: str, args: tuple = ()) -> int:
        """The one low-level write: the rows it changed, or StoreUnavailable naming the disk."""
        try:
            with self._lock:
                return self._db.execute(sql, args).rowcount
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(_WRITE_FAILED.format(exc=exc)) from None

    def probe(self) -> None:
        """A real write of a job row as large as a big request, undone in the same
        transaction: StoreUnavailable while the database cannot take the rows the server
        writes (disk full, I/O error, locked past the busy timeout)."""
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.execute("INSERT INTO jobs (id, status, request, created) VALUES "
                                     "('#probe', 'probe', ?, 0)", ("x" * PROBE_BYTES,))
                    self._db.execute("DELETE FROM jobs WHERE id = '#probe'")
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:  # SQLite ends it itself on some errors
                        self._db.execute("ROLLBACK")
                    raise
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(_WRITE_FAILED.format(exc=exc)) from None

    def interrupt_unfinished(self, reason: str = "the server stopped before it finished") -> int:
        """Mark jobs a crashed server left queued or running as errors (none stay 'running')."""
        return self._write(
            "UPDATE jobs SET status='error', error=?, finished=? WHERE status NOT IN (?,?,?)",
            (reason, time.time(), *TERMINAL),
        )

    def add_job(self, job_id: str, request: dict[str, Any], created: float) -> None:
        self._write("INSERT INTO jobs (id, status, request, created) VALUES (?, 'queued', ?, ?)",
                    (job_id, json.dumps(request), created))

    def set_job(self, job_id: str, status: str, *, started: float | None = None,
                finished: float | None = None, error: str | None = None) -> None:
        # a job that ends done has no error, whatever an earlier state said
        self._write(
            "UPDATE jobs SET status=?, started=COALESCE(?, started), "
            "finished=COALESCE(?, finished), "
            "error=CASE WHEN ?='done' THEN NULL ELSE COALESCE(?, error) END WHERE id=?",
            (status, started, finished, status, error, job_id),
        )

    def job(self, job_id: str) -> dict[str, Any] | None:
        rows = self._run("SELECT * FROM jobs WHERE id=?", (job_id,))
        if not rows:
            return None
        job = dict(rows[0])
        job["request"] = json.loads(job["request"])
        job["images"] = [r["id"] for r in self._run(
            "SELECT id FROM images WHERE job_id=? ORDER BY idx", (job_id,))]
        return job

    def add_image(self, row: dict[str, Any]) -> None:
        """One generated image; ``row`` has the columns of ``images`` (JSON fields as values)."""
        values = {**row, **{k: json.dumps(row[k]) for k in ("request", "timings", "teleport")}}
        cols = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        # OR IGNORE: a retried write whose first try did commit adds no second row
        self._write(f"INSERT OR IGNORE INTO images ({cols}) VALUES ({marks})",
                    tuple(values.values()))

    def put_png(self, image_id: str, data: bytes) -> None:
        """Nothing to do: the image is the file at its row's ``path`` (the JobQueue wrote it)."""

    def image_file(self, image_id: str) -> Path | None:
        """The file of an image id, only inside ``outputs`` (ids are looked up, never joined
        into a path); None for an unknown id or a file gone."""
        row = self.image(image_id)
        return self.file_of(row) if row is not None else None

    def file_of(self, row: dict[str, Any]) -> Path | None:
        """The file of an image row, only inside ``outputs``; None when it is gone."""
        if self.outputs is None:
            return None
        return contained_file(self.outputs, row["path"])

    def png(self, image_id: str) -> bytes | None:
        path = self.image_file(image_id)
        return path.read_bytes() if path is not None else None

    def image(self, image_id: str) -> dict[str, Any] | None:
        rows = self._run(f"SELECT *, {JOB_IMAGES} FROM images WHERE id=?", (image_id,))
        return _image(rows[0]) if rows else None

    def images(self, *, query: str = "", limit: int = 24, offset: int = 0
               ) -> tuple[list[dict[str, Any]], int]:
        """A page of images, newest first, whose prompt contains ``query`` (any case)."""
        pattern = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        where = "WHERE prompt LIKE ? ESCAPE '\\'"
        total = self._run(f"SELECT COUNT(*) FROM images {where}", (pattern,))[0][0]
        rows = self._run(
            f"SELECT *, {JOB_IMAGES} FROM images {where} ORDER BY created DESC, idx LIMIT ? OFFSET ?",
            (pattern, limit, offset),
        )
        return [_image(r) for r in rows], total

    def full_run(self, request: dict[str, Any], fingerprint: str, before: float
                 ) -> dict[str, Any] | None:
        """The newest image made before ``before`` from exactly ``request`` on the same model
        that ran in full (no teleport hit): the honest "full run" a replay is compared with.

        ``seconds`` is that job's total time over its images (one image: its own time).
        """
        rows = self._run(
            "SELECT id, job_id, created, timings, (SELECT COUNT(*) FROM images j "
            "WHERE j.job_id = i.job_id) AS n FROM images i WHERE seed=? AND fingerprint=? "
            "AND request=? AND created < ? AND COALESCE(json_extract(teleport, '$.hit'), 0) = 0 "
            "ORDER BY created DESC LIMIT 1",  # (seed, fingerprint) is indexed
            (request["seed"], fingerprint, json.dumps(request), before),
        )
        if not rows:
            return None
        total = json.loads(rows[0]["timings"]).get("total")
        if total is None:
            return None
        return {"image_id": rows[0]["id"], "job_id": rows[0]["job_id"],
                "created": rows[0]["created"], "seconds": round(total / max(rows[0]["n"], 1), 6)}


def _image(row: sqlite3.Row) -> dict[str, Any]:
    data = dict(row)
    for key in ("request", "timings", "teleport"):
        data[key] = json.loads(data[key])
    return data
