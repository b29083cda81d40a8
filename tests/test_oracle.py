"""The bounded cache-vs-no-cache oracle (issue 14; tests/oracle.py has the long run).

Six seeded sequences (two per acceleration setup: plain, DBCache and TaylorSeer with a
static step mask) of 30 requests each run on one engine per sequence with every cache tier
on (memory, disk and the real Redis of the ``server`` fixture). Every response must equal,
pixel for pixel, a cache-off engine's; a failure prints the one-line reproduction. The
hit counts prove the run exercised the caches rather than testing nothing.
"""

from __future__ import annotations

import io

from oracle import run_oracle, summary

SEEDS = [3, 4, 5, 6, 7, 8]
REQUESTS = 30


def test_caches_never_change_a_pixel(tmp_path, server):
    log = io.StringIO()
    figures = run_oracle(tmp_path / "oracle", server.url, SEEDS, REQUESTS, out=log)
    print(summary(figures))
    assert not figures.mismatches, log.getvalue() + "\n" + summary(figures)
    assert figures.sequences == len(SEEDS)
    assert figures.requests == len(SEEDS) * REQUESTS
    assert figures.compared >= 100, summary(figures)
    assert figures.failed_as_expected >= 5, summary(figures)  # cancels, faults, bad LoRAs ran
    assert figures.hits["teleport"] >= 15, summary(figures)
    assert figures.hits["embedding"] >= 50, summary(figures)
    assert figures.hits["vae_latent"] >= 10, summary(figures)
    assert sum(figures.events.values()) >= 5, summary(figures)  # corruptions, restarts
