"""The bounded cache-vs-no-cache oracle (tests/support/oracle.py has the long run).

Six seeded sequences (two per acceleration setup: plain, DBCache and TaylorSeer with a
static step mask, each with two of the three teleport_repeat modes) of 30 requests each
run on one engine per sequence with every cache tier on (memory, disk and the real Redis
of the ``server`` fixture); a tenth of them (drawn) go again to another model on the same
tiers (a LoRA fused at load: another fingerprint, as an engine pool holds), whose answer
must equal its own cache-off engine's: no key crosses models. Every response must equal,
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
    assert figures.other_model >= 8, summary(figures)  # the other model was asked


@pytest.mark.subprocess
def test_processes_with_other_numerics_never_share_entries(tmp_path, server):
    """Two rounds of fresh processes, one with DNNL_MAX_CPU_ISA=AVX2, on one disk tier and
    one Redis: no first-round hit from the other's entries, every image equal to the
    process's own cache-off engine's, and the second round served from the shared tiers."""
    from oracle import run_numerics

    log = io.StringIO()
    figures = run_numerics(tmp_path / "numerics", server.url, seed=3, requests=4,
                           variants=["base", "dnnl-avx2"], rounds=2, out=log)
    print(summary(figures))
    assert not figures.mismatches, log.getvalue() + "\n" + summary(figures)
    assert figures.processes == 4 and figures.crossed == 0
    assert figures.compared >= 12, summary(figures)
    assert figures.tiers.get("disk", 0) + figures.tiers.get("redis", 0) >= 2, summary(figures)


def test_two_engines_under_two_threads_give_the_cache_off_pixels(tmp_path, server):
    from oracle import run_threads

    log = io.StringIO()
    figures = run_threads(tmp_path / "threads", server.url, seed=5, requests=5, out=log)
    print(summary(figures))
    assert not figures.mismatches, log.getvalue() + "\n" + summary(figures)
    assert figures.requests == 10 and figures.compared >= 6, summary(figures)


def test_one_lora_in_every_layout_shares_entries_and_pixels(tmp_path, server):
    """The demo LoRA in every trainer layout, one request each on one cache-on engine: each
    image equals the cache-off engine's for that layout's file, and the layouts after the
    first are served from the first one's entries (one LoRA, one set of keys)."""
    from oracle import LAYOUT_LORAS, Figures, Oracle, judge, run

    oracle = Oracle(tmp_path / "oracle", server.url)
    try:
        engine = oracle._cached_engine("plain", "image")
        figures = Figures()
        served = {}
        for name in LAYOUT_LORAS:
            spec = {"fields": {"prompt": "a red robot", "seed": 4, "width": 32, "height": 32,
                               "steps": 2, "loras": [f"{name}:1.0"]},
                    "image": None, "mask": None, "fault": None}
            got = run(engine, spec)
            assert judge(figures, spec, got, lambda: oracle.reference("plain", spec)) is None
            served[name] = got.teleport[0].served
        engine.close()
    finally:
        oracle.close()
    assert figures.compared == len(LAYOUT_LORAS)
    first, *rest = LAYOUT_LORAS
    assert served[first] == "full", served
    assert all(served[name] != "full" for name in rest), served


def test_bfloat16_and_a_fused_lora_with_native_attention_never_change_a_pixel(tmp_path, server):
    """A sequence on a bfloat16 engine and one on an engine with a LoRA fused at load and
    native attention (cache-off references with the same setup)."""
    log = io.StringIO()
    figures = run_oracle(tmp_path / "oracle", server.url, [10, 11], 15, out=log,
                         setups=["bfloat16", "native-fused"])
    print(summary(figures))
    assert not figures.mismatches, log.getvalue() + "\n" + summary(figures)
    # on these seeds: 26 compared, 8 teleport hits, 15 embedding hits
    assert figures.compared >= 18 and figures.hits["teleport"] >= 4, summary(figures)


def test_controlled_requests_never_change_a_pixel(tmp_path, server):
    """A sequence on the plain setup (its engines load the demo ControlNet) whose seed draws
    controlled txt2img and inpaint, with LoRAs and VAE tiling, and an unreadable control
    file: every image equals the cache-off engine's, the bad file is refused by both."""
    log = io.StringIO()
    figures = run_oracle(tmp_path / "oracle", server.url, [376], 10, out=log, setups=["plain"])
    print(summary(figures))
    assert not figures.mismatches, log.getvalue() + "\n" + summary(figures)
    drawn = figures.drawn
    for kind in ("control:txt2img", "control:inpaint", "control:with loras",
                 "control:with tiling", "control:broken file"):
        assert drawn.get(kind, 0) >= 1, (kind, summary(figures))
    assert any("cannot read image" in reason for reason in figures.rejections), summary(figures)
    assert figures.compared >= 6, summary(figures)
