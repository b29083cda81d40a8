"""The bounded cache-vs-no-cache oracle (issue 14; tests/support/oracle.py has the long run).

Six seeded sequences (two per acceleration setup: plain, DBCache and TaylorSeer with a
static step mask, each with two of the three teleport_repeat modes) of 30 requests each
run on one engine per sequence with every cache tier on (memory, disk and the real Redis
of the ``server`` fixture). Every response must equal,
pixel for pixel, a cache-off engine's; a failure prints the one-line reproduction. The
hit counts prove the run exercised the caches rather than testing nothing.
"""

from __future__ import annotations

import io

import pytest

from oracle import run_oracle, summary

pytestmark = pytest.mark.slow

SEEDS = [0, 2, 3, 4, 7, 8]  # each setup with two of the teleport_repeat modes
REQUESTS = 30


def test_caches_never_change_a_pixel(tmp_path, server):
    log = io.StringIO()
    figures = run_oracle(tmp_path / "oracle", server.url, SEEDS, REQUESTS, out=log)
    print(summary(figures))
    assert not figures.mismatches, log.getvalue() + "\n" + summary(figures)
    assert figures.sequences == len(SEEDS)
    assert figures.requests == len(SEEDS) * REQUESTS
    # On these seeds the run (deterministic) compared 135 responses (37 of the 180 requests
    # with seed variety, 14 enhanced) with 71 teleport hits (25 resumed, 25 final latents,
    # 21 stored images), 119 embedding, 12 VAE-latent and 4 enhanced-prompt hits, 20 runs
    # that failed as asked and 26 corruptions and restarts; the floors keep a margin.
    assert figures.compared >= 100, summary(figures)
    assert figures.failed_as_expected >= 10, summary(figures)  # cancels, faults, bad LoRAs ran
    for kind, floor in (("teleport:resume", 10), ("teleport:final_latent", 10),
                        ("teleport:image", 10), ("embedding", 80), ("vae_latent", 8)):
        assert figures.hits.get(kind, 0) >= floor, (kind, summary(figures))
    assert sum(figures.events.values()) >= 15, summary(figures)  # corruptions, restarts
