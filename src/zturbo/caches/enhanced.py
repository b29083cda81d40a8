"""Enhanced prompts, memoised: the enhancer's text for an input, under its own cache kind.

Keyed by the text encoder's fingerprint, the system prompt's version, the decoding bounds
and the input text (``keys.enhanced_key``). Only a finished enhancement is stored: a
failed, timed-out or cancelled one raises before anything is kept.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from zturbo.caches.base import ENHANCED
from zturbo.caches.encoders import drop, fetch, keep, record_saved
from zturbo.caches.keys import enhanced_key
from zturbo.engine.enhance import SYSTEM_VERSION, Enhanced, TokenCallback, enhance
from zturbo.engine.protocol import Engine

KIND = ENHANCED


def enhance_params(text: str, max_new_tokens: int) -> dict:
    """What decides an enhanced prompt besides the encoder: the input, the system prompt's
    version, the token bound (the time bound only fails a run, it never changes its text)."""
    return {"input": text, "system": SYSTEM_VERSION, "max_new_tokens": max_new_tokens}


def _text_tensor(text: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy())


def cached_enhance(engine: Engine, text: str, max_new_tokens: int, timeout_s: float,
                   on_token: TokenCallback | None = None) -> tuple[Enhanced, str | None]:
    """``enhance.enhance`` through the cache -> (Enhanced, the tier it came from or None)."""
    key = enhanced_key(engine, enhance_params(text, max_new_tokens))
    hit = fetch(engine, KIND, key)
    if hit is not None:
        tensors, meta, tier = hit
        try:
            stored = tensors["text"].numpy().tobytes().decode("utf-8")
        except (KeyError, UnicodeDecodeError):
            stored = ""
        if stored:
            record_saved(engine, KIND, float(meta.get("cost_s", 0.0)))
            return Enhanced(stored, int(meta.get("tokens", 0)), 0.0,
                            meta.get("stopped", "end_of_turn")), tier
        drop(engine, KIND, key)
    started = time.perf_counter()
    result = enhance(engine, text, max_new_tokens, timeout_s, on_token)
    keep(engine, KIND, key, {"text": _text_tensor(result.text)},
         {"tokens": str(result.tokens), "stopped": result.stopped,
          "cost_s": f"{time.perf_counter() - started:.6f}"})
    return result, None
