"""The prompt enhancer on the demo model (whose text is gibberish by construction): greedy
and deterministic, bounded in tokens and time, cancelable, cached under its own kind (and
never from a failed run), keyed into the image by the text actually encoded."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import zturbo
from zturbo import ZTurboError
from zturbo.caches import enhanced as enhanced_cache
from zturbo.caches.keys import enhanced_key
from zturbo.config import make_request
from zturbo.engine import enhance as enhancer
from zturbo.engine.steps import Cancelled

from conftest import pixels

SIZE = {"width": 64, "height": 64, "steps": 2}


@pytest.fixture
def fresh(zturbo_home):
    engine = zturbo.load("demo")  # its own cache tiers in this test's state dir
    engine.settings = engine.settings.model_copy(update={"enhance_max_tokens": 12})
    return engine


def kind_stats(engine):
    return engine.caches.stats()["kinds"].get("enhanced", {"hits": 0, "misses": 0})


def test_greedy_is_deterministic_and_bounded(engine):
    a = enhancer.enhance(engine, "a cat", 10, 60)
    b = enhancer.enhance(engine, "a cat", 10, 60)
    assert a.text == b.text and a.text.strip() and a.tokens == 10 and a.stopped == "max_tokens"


def test_it_stops_at_the_end_of_turn_token(engine):
    te, tok = engine.pipe.text_encoder, engine.pipe.tokenizer
    head = enhancer.lm_head(te, demo_model=True)
    ids = enhancer.chat_ids(tok, "a cat")
    free, _ = enhancer.greedy(te, head, ids, set(), 8, time.monotonic() + 60)
    j = next(i for i in range(1, 8) if free[i] not in free[:i])  # a token new at step j
    stopped, why = enhancer.greedy(te, head, ids, {free[j]}, 8, time.monotonic() + 60)
    assert stopped == free[:j + 1] and why == "end_of_turn"
    assert tok.convert_tokens_to_ids(enhancer.END_OF_TURN) in enhancer.stop_ids(tok)


def test_the_head_is_the_input_embeddings_without_a_copy(engine):
    te = engine.pipe.text_encoder
    head = enhancer.lm_head(te, demo_model=True)
    assert head.data_ptr() == te.embed_tokens.weight.data_ptr()
    tied = SimpleNamespace(config=SimpleNamespace(tie_word_embeddings=True),
                           embed_tokens=te.embed_tokens, layers=te.layers)
    assert enhancer.lm_head(tied) is te.embed_tokens.weight


def test_an_encoder_that_cannot_generate_is_a_clear_error(engine):
    te = engine.pipe.text_encoder
    untied = SimpleNamespace(config=SimpleNamespace(tie_word_embeddings=False),
                             embed_tokens=te.embed_tokens, layers=te.layers)
    with pytest.raises(ZTurboError, match="not tied"):
        enhancer.lm_head(untied)
    quantised = SimpleNamespace(config=SimpleNamespace(tie_word_embeddings=True),
                                embed_tokens=SimpleNamespace(weight=torch.zeros(4, 4,
                                                                                dtype=torch.int8)),
                                layers=[])
    with pytest.raises(ZTurboError, match="quantised"):
        enhancer.lm_head(quantised)
    with pytest.raises(ZTurboError, match="cannot generate"):
        enhancer.lm_head(SimpleNamespace(config=None))


def test_cached_and_keyed(fresh):
    events = []
    first = fresh.enhance("a cat", on_event=lambda n, d: events.append((n, d)))
    assert kind_stats(fresh)["misses"] == 1
    assert fresh.enhance("a cat") == first and kind_stats(fresh)["hits"] == 1
    enhanced = [d for n, d in events if n == "enhanced"]
    assert enhanced == [{"prompt": first, "original_prompt": "a cat", "tokens": 12,
                         "cached": False}]
    assert [d["tokens"] for n, d in events if n == "enhance_token"] == list(range(1, 13))
    fresh.enhance("a dog")
    assert kind_stats(fresh)["misses"] == 2  # another input is a miss
    params = enhanced_cache.enhance_params("a cat", 12)
    key = enhanced_key(fresh, params)
    other_encoder = SimpleNamespace(text_fingerprint="another")
    assert enhanced_key(other_encoder, params) != key
    assert enhanced_key(fresh, {**params, "system": params["system"] + 1}) != key
    assert enhanced_key(fresh, enhanced_cache.enhance_params("a cat", 13)) != key


def test_time_limit_and_cancel_cache_nothing(fresh):
    fresh.settings = fresh.settings.model_copy(update={"enhance_timeout_s": 1e-9})
    with pytest.raises(ZTurboError, match="timed out"):
        fresh.enhance("a cat")
    fresh.settings = fresh.settings.model_copy(update={"enhance_timeout_s": 60.0})

    def cancel(name, data):
        if name == "enhance_token" and data["tokens"] == 3:
            raise Cancelled("cancelled by the client")

    with pytest.raises(Cancelled):
        fresh.enhance("a cat", on_event=cancel)
    assert fresh.caches.stats()["kinds"]["enhanced"]["hits"] == 0
    fresh.enhance("a cat")
    assert kind_stats(fresh) == {**kind_stats(fresh), "hits": 0, "misses": 3}


def test_bad_input_is_refused_before_any_work(engine):
    with pytest.raises(ZTurboError, match="prompt is empty"):
        make_request(engine.settings, prompt="  ", enhance=True)
    with pytest.raises(ZTurboError, match="enhancer takes at most 2000"):
        make_request(engine.settings, prompt="x" * 2001, enhance=True)
    make_request(engine.settings, prompt="x" * 2001)  # only enhancement has that limit
    with pytest.raises(ZTurboError, match="enhance"):
        make_request(engine.settings, prompt="x", enhance=True, embeddings_sha256="a" * 64)


def test_an_enhanced_request_shares_the_plain_requests_entries(fresh):
    enhanced = fresh.generate("a cat", seed=3, enhance=True, **SIZE)
    ran = enhanced.request
    assert ran.original_prompt == "a cat" and not ran.enhance and ran.prompt != "a cat"
    assert "enhance" in enhanced.timings
    plain = fresh.generate(ran.prompt, seed=3, **SIZE)
    assert plain.teleport[0].hit is True
    assert np.array_equal(pixels(plain.images[0]), pixels(enhanced.images[0]))
    # the Request that ran replays as it is: no enhancement again
    replay = fresh.generate(**ran.model_dump())
    assert "enhance" not in replay.timings and replay.request == ran
    assert kind_stats(fresh)["misses"] + kind_stats(fresh)["hits"] == 1


def test_the_cost_model_reads_every_weight_once_per_token():
    from zturbo.engine import costmodel

    text = costmodel.ZIMAGE_TURBO.text
    one = costmodel.decode_token(text, 0)
    assert one.bytes == 2 * text.params and one.flops == 2.0 * text.params
    longer = costmodel.decode_token(text, 1000)
    assert longer.bytes > one.bytes and longer.flops > one.flops
    h100 = costmodel.GPUS["h100"]
    assert costmodel.floor_seconds(one, h100) == pytest.approx(2 * text.params / 3.35e12)
