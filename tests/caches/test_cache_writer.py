"""The background cache writer: entries are built and stored off the request's path, a full
queue skips storing instead of waiting, a lookup waits for its own pending entry only, and
closing writes what is queued."""

from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np
import pytest

import zturbo
from zturbo.caches import DiskTier, MemoryTier, TieredCache
from zturbo.caches.writer import BackgroundWriter
from zturbo.config import load_settings

from conftest import pixels

MIB = 1 << 20
FIELDS = {"seed": 4, "width": 64, "height": 64, "steps": 3}


def gate(writer: BackgroundWriter) -> threading.Event:
    """Hold the writer's thread on a job until the returned event is set."""
    release, started = threading.Event(), threading.Event()

    def hold():
        started.set()
        release.wait(30)

    assert writer.submit("teleport", "0" * 64, hold)
    assert started.wait(10)
    return release


def test_a_full_queue_skips_and_never_waits():
    writer = BackgroundWriter(depth=1)
    release = gate(writer)
    ran = []
    assert writer.submit("teleport", "1" * 64, lambda: ran.append(1))  # fills the queue
    started = time.perf_counter()
    assert not writer.submit("teleport", "2" * 64, lambda: ran.append(2))
    assert time.perf_counter() - started < 0.5 and writer.skipped == 1
    release.set()
    writer.drain()
    assert ran == [1]
    writer.close()


def test_a_lookup_waits_for_its_own_pending_entry_only(tmp_path):
    cache = TieredCache([MemoryTier(MIB), DiskTier(tmp_path, MIB)], write_queue=4)
    release = gate(cache.writer)
    assert cache.put_later("teleport", "a" * 64, lambda: b"entry bytes")
    started = time.perf_counter()
    assert cache.get("teleport", "b" * 64) is None  # another key: no wait behind the gate
    assert time.perf_counter() - started < 0.5
    threading.Timer(0.3, release.set).start()
    assert cache.get("teleport", "a" * 64) == (b"entry bytes", "memory")  # waited for it
    cache.close()


def test_close_writes_what_is_queued(tmp_path):
    cache = TieredCache([DiskTier(tmp_path, MIB)], write_queue=4)
    release = gate(cache.writer)
    for i in range(3):
        assert cache.put_later("teleport", f"{i}" * 64, lambda i=i: f"data {i}".encode())
    threading.Timer(0.2, release.set).start()
    cache.close()
    again = TieredCache([DiskTier(tmp_path, MIB)])  # as a new process would
    assert [again.get("teleport", f"{i}" * 64) for i in range(3)] == \
        [(f"data {i}".encode(), "disk") for i in range(3)]


def load(**flags):  # the product's background writer (the suite stores inline)
    settings, _ = load_settings(flags={"teleport_repeat": "image", "cache_write_queue": 8,
                                       **flags})
    return zturbo.load("demo", settings=settings)


def test_a_request_never_waits_on_a_full_writer():
    engine = load(cache_write_queue=1)
    release = gate(engine.caches.writer)
    assert engine.caches.writer.submit("teleport", "3" * 64, lambda: None)  # now full
    done = []
    worker = threading.Thread(target=lambda: done.append(engine.generate("a kite", **FIELDS)))
    worker.start()
    worker.join(60)
    assert done, "generate waited for the cache writer"
    assert done[0].teleport[0].stored == ()  # nothing could be queued: nothing claimed
    release.set()
    again = engine.generate("a kite", **FIELDS)
    assert again.teleport[0].served == "full"  # skipped entries are misses, not waits
    assert np.array_equal(pixels(again.images[0]), pixels(done[0].images[0]))
    engine.close()


def test_the_image_entry_is_the_image_as_returned_not_as_changed_later():
    engine = load()
    plain = pixels(engine.generate("a bell", teleport=False, **FIELDS).images[0])
    release = gate(engine.caches.writer)  # the entry is encoded after the caller's change
    first = engine.generate("a bell", **FIELDS)
    first.images[0].paste((0, 0, 0), (0, 0, 64, 64))  # the caller draws on its image
    release.set()
    second = engine.generate("a bell", **FIELDS)
    assert second.teleport[0].served == "image"
    assert np.array_equal(pixels(second.images[0]), plain)
    engine.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread priorities: Linux")
def test_the_writer_thread_yields_the_cpu_to_requests():
    writer = BackgroundWriter(depth=2)
    seen = []
    assert writer.submit("teleport", "2" * 64, lambda: seen.append(
        os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
    writer.drain()
    writer.close()
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert seen == [min(19, mine + 10)] and mine < 19  # the request's thread keeps its own
