"""The server's history: SQLite under the state dir, one row per job and one per image.

SQLite is the embedded default: no service to run, survives a restart, and one file an
operator can copy. One connection shared by the worker thread and the request threads,
guarded by a lock (SQLite serialises writers anyway; the lock keeps the Python object safe).
Rows hold JSON text, never pickles.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from zturbo.paths import contained_file

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
TERMINAL = ("done", "error", "cancelled")
# how many images the row's job made (its timings are the whole job's)
JOB_IMAGES = "(SELECT COUNT(*) FROM images j WHERE j.job_id = images.job_id) AS job_images"


class History:
    """Jobs and images of this server, newest first; safe to use from any thread.

    The local backend of the state store (``zturbo.server.store``): the PNGs are the files under
    ``outputs`` that the JobQueue writes; live job state stays in the JobQueue's memory."""

    shared = False  # events, cancel and leases live in this process's JobQueue

    def __init__(self, path: Path, outputs: Path | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.outputs = outputs
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: no corruption on a crash, only the last commits may be lost on
            # power loss; FULL costs an fsync (~5 ms here) per write, 4 writes per job.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _run(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def interrupt_unfinished(self, reason: str = "the server stopped before it finished") -> int:
        """Mark jobs a crashed server left queued or running as errors (none stay 'running')."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE jobs SET status='error', error=?, finished=? WHERE status NOT IN (?,?,?)",
                (reason, time.time(), *TERMINAL),
            )
            return cur.rowcount

    def add_job(self, job_id: str, request: dict[str, Any], created: float) -> None:
        self._run("INSERT INTO jobs (id, status, request, created) VALUES (?, 'queued', ?, ?)",
                  (job_id, json.dumps(request), created))

    def set_job(self, job_id: str, status: str, *, started: float | None = None,
                finished: float | None = None, error: str | None = None) -> None:
        # a job that ends done has no error, whatever an earlier state said
        self._run(
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
        self._run(f"INSERT INTO images ({cols}) VALUES ({marks})", tuple(values.values()))

    def put_png(self, image_id: str, data: bytes) -> None:
        """Nothing to do: the image is the file at its row's ``path`` (the JobQueue wrote it)."""

    def image_file(self, image_id: str) -> Path | None:
        """The file of an image id, only inside ``outputs`` (ids are looked up, never joined
        into a path); None for an unknown id or a file gone."""
        row = self.image(image_id)
        if row is None or self.outputs is None:
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

    def replay(self, row: dict[str, Any], job_images: int) -> dict[str, Any]:
        """What the page's teleport badge needs for an image row: its own time (the job's
        total over its images) and, for a teleport hit, the full run it replayed."""
        total = row["timings"].get("total")
        hit = bool((row.get("teleport") or {}).get("hit"))
        return {
            "seconds": None if total is None else round(total / max(job_images, 1), 6),
            "full_run": self.full_run(row["request"], row["fingerprint"], row["created"])
            if hit else None,
        }

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
