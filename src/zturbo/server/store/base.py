"""The state store's interface: what every backend keeps (``Store``) and what a shared one
adds so another ingress can follow a job it did not run (``SharedStore``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from zturbo.errors import ZTurboError

TERMINAL = ("done", "error", "cancelled")


class StoreUnavailable(ZTurboError):
    """The state store cannot be read or written now (Redis does not answer, the history
    database's disk is full or failing): the client should retry (503 with Retry-After)."""


class Store(ABC):
    """Jobs and images of a service, newest first; safe to use from any thread."""

    shared = False  # True: events, cancels and leases live in the store, not in one process

    @abstractmethod
    def close(self) -> None: ...

    # -- jobs ------------------------------------------------------------------------------
    @abstractmethod
    def add_job(self, job_id: str, request: dict[str, Any], created: float) -> None: ...

    @abstractmethod
    def set_job(self, job_id: str, status: str, *, started: float | None = None,
                finished: float | None = None, error: str | None = None) -> None: ...

    @abstractmethod
    def job(self, job_id: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def probe(self) -> None:
        """A small real write: StoreUnavailable while the store cannot take writes."""

    @abstractmethod
    def interrupt_unfinished(self, reason: str = "the server stopped before it finished"
                             ) -> int:
        """Mark the jobs this store still has queued or running ``error``; how many."""

    # -- images ----------------------------------------------------------------------------
    @abstractmethod
    def add_image(self, row: dict[str, Any]) -> None: ...

    @abstractmethod
    def put_png(self, image_id: str, data: bytes) -> None: ...

    @abstractmethod
    def png(self, image_id: str) -> bytes | None: ...

    @abstractmethod
    def image_file(self, image_id: str) -> Path | None:
        """The image's file on this machine, when the store keeps images as files."""

    @abstractmethod
    def file_of(self, row: dict[str, Any]) -> Path | None:
        """The file of an image row on this machine; None when there is none."""

    @abstractmethod
    def image(self, image_id: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def images(self, *, query: str = "", limit: int = 24, offset: int = 0
               ) -> tuple[list[dict[str, Any]], int]:
        """A page of image rows, newest first, whose prompt contains ``query`` (any case),
        and how many match."""

    @abstractmethod
    def full_run(self, request: dict[str, Any], fingerprint: str, before: float
                 ) -> dict[str, Any] | None:
        """The newest image made before ``before`` from exactly ``request`` on the same model
        that ran in full (no teleport hit): the honest "full run" a replay is compared with.
        ``seconds`` is that job's total time over its images."""

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


class SharedStore(Store):
    """A store several ingresses share: it also carries each job's live part."""

    shared = True

    @abstractmethod
    def add_event(self, job_id: str, event: dict[str, Any]) -> None: ...

    @abstractmethod
    def events(self, job_id: str, after: str = "0-0", wait_s: float = 0.0
               ) -> list[tuple[str, dict[str, Any]]]:
        """Events after stream id ``after`` as (id, event), waiting up to ``wait_s``."""

    @abstractmethod
    def request_cancel(self, job_id: str, reason: str) -> bool: ...

    @abstractmethod
    def cancel_reasons(self, job_ids: list[str]) -> dict[str, str]: ...

    @abstractmethod
    def heartbeat(self) -> None:
        """Renew this ingress's lease."""

    @abstractmethod
    def expire_owners(self) -> int:
        """End the unfinished jobs of ingresses whose lease ran out; how many."""
