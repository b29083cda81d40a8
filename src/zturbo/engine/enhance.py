"""The prompt enhancer: the loaded Qwen3 text encoder writes the expanded prompt itself.

Z-Image's text encoder is Qwen3-4B loaded as a bare ``Qwen3Model`` (no LM head). Qwen3-4B
ties its output head to its input embeddings (``tie_word_embeddings``), so the logits are
``final_hidden @ embed_tokens.weight.T``: a causal-LM view over the very modules the
engine already holds, with no extra weights and no extra memory. Decoding is greedy (the
arg-max token each step: deterministic), with a KV cache, bounded in new tokens and in
time, cancelable through ``on_token``, and stops at the end-of-turn token.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from zturbo.engine.demo import is_demo
from zturbo.engine.placement import component_device
from zturbo.engine.steps import Cancelled
from zturbo.errors import ZTurboError

if TYPE_CHECKING:
    from zturbo.engine.protocol import Engine

# Bump the version with any change to the system prompt: it is in the cache key.
SYSTEM_VERSION = 1
SYSTEM_PROMPT = """\
You rewrite short image prompts into one detailed prompt for a text-to-image model.
Write a single paragraph, in the same language as the user's prompt, that describes:
- the subject: who or what, appearance, pose, expression, materials, colours;
- the composition: framing, viewpoint, lens, where things sit in the frame, background;
- the lighting: source, direction, time of day, mood;
- the style: photograph, illustration, painting, 3D render..., and its medium and finish.
Any text that should appear in the image goes in double quotes, exactly as the user wrote it.
Keep every detail the user gave and do not contradict it; add only what makes the picture
concrete. Do not explain, do not add a title or a list, do not ask questions: reply with
the prompt only."""
END_OF_TURN = "<|im_end|>"
# Token callback: called after each generated token with the count so far; raise
# ``Cancelled`` to stop (nothing is returned or cached then).
TokenCallback = Callable[[int], None]
MAX_RUN = 3  # the most times in a row greedy decoding may write one token
# transformers 5 names the KV-cache argument ``cache`` (``past_key_values`` is deprecated)
CACHE_ARG = "cache"
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)


@dataclass(frozen=True)
class Enhanced:
    text: str
    tokens: int  # new tokens generated (the end-of-turn token included when reached)
    seconds: float
    stopped: str  # "end_of_turn" | "max_tokens"


def lm_head(text_encoder, demo_model: bool = False) -> torch.Tensor:
    """The output head's weight [vocab, hidden]: the input embeddings when the encoder's
    head is tied to them; a clear error when it cannot generate. The demo models' random
    encoders have no head of any kind; they are read as tied, like Qwen3-4B, so the
    machinery runs on them (their text is gibberish by construction)."""
    config = getattr(text_encoder, "config", None)
    embeddings = getattr(text_encoder, "embed_tokens", None)
    if config is None or embeddings is None or not hasattr(text_encoder, "layers"):
        raise ZTurboError("this text encoder cannot generate text (not a Qwen3 decoder): "
                          "the prompt enhancer needs Qwen3's own layers")
    weight = getattr(embeddings, "weight", None)
    if weight is None or not torch.is_floating_point(weight):
        raise ZTurboError("this text encoder is quantised: its embeddings cannot serve as the "
                          "output head, so the prompt enhancer cannot run on it (load the "
                          "text encoder unquantised)")
    if not getattr(config, "tie_word_embeddings", False) and not demo_model:
        raise ZTurboError("this text encoder's output head is not tied to its embeddings and "
                          "its checkpoint holds no LM head: the prompt enhancer cannot run")
    return weight


def chat_ids(tokenizer, text: str) -> list[int]:
    """The chat-templated conversation: our system prompt, the user's prompt, the
    assistant's turn opened (thinking off: the answer is the prompt itself)."""
    rendered = tokenizer.apply_chat_template(
        [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}],
        tokenize=False, add_generation_prompt=True, enable_thinking=False,
    )
    return list(tokenizer(rendered).input_ids)


def stop_ids(tokenizer) -> set[int]:
    """End-of-turn and end-of-text ids, when the vocabulary has them."""
    ids = set()
    for token in (END_OF_TURN, tokenizer.eos_token):
        tid = tokenizer.convert_tokens_to_ids(token) if token else None
        if isinstance(tid, int) and tid >= 0 and tid != tokenizer.unk_token_id:
            ids.add(tid)
    return ids


def clean(text: str) -> str:
    """The prompt from a reply: thinking blocks and surrounding space and quotes removed."""
    text = _THINK.sub("", text).replace(END_OF_TURN, "").strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1].strip()
    return text


def guarded(logits: torch.Tensor, written: list[int]) -> torch.Tensor:
    """Logits with the token that has just been written ``MAX_RUN`` times in a row ruled out,
    so greedy decoding cannot loop on one token (a small random model does: its tied head
    mostly predicts its input). A pure function of what was written: still deterministic."""
    if len(written) < MAX_RUN or len(set(written[-MAX_RUN:])) != 1:
        return logits
    logits = logits.clone()
    logits[written[-1]] = float("-inf")
    return logits


@torch.no_grad()
def greedy(text_encoder, head: torch.Tensor, ids: list[int], stops: set[int],
           max_new_tokens: int, deadline: float,
           on_token: TokenCallback | None = None) -> tuple[list[int], str]:
    """Greedy decoding with a KV cache: (new token ids, why it stopped). Past ``deadline``
    (``time.monotonic``) it raises a ZTurboError."""
    from transformers import DynamicCache  # lazy: keeps CLI start fast

    device = head.device
    cache = DynamicCache(config=text_encoder.config)
    step_ids = torch.tensor([ids], device=device)
    out: list[int] = []
    while len(out) < max_new_tokens:
        hidden = text_encoder(input_ids=step_ids, **{CACHE_ARG: cache}, use_cache=True
                              ).last_hidden_state[:, -1]
        logits = (hidden.to(head.dtype) @ head.T)[0].float()
        token = int(torch.argmax(guarded(logits, out)))
        out.append(token)
        if on_token is not None:
            on_token(len(out))
        if token in stops:
            return out, "end_of_turn"
        if time.monotonic() > deadline:
            raise ZTurboError(f"prompt enhancement timed out after {len(out)} tokens "
                              f"(setting enhance_timeout_s)")
        step_ids = torch.tensor([[token]], device=device)
    return out, "max_tokens"


def enhance(engine: Engine, text: str, max_new_tokens: int, timeout_s: float,
            on_token: TokenCallback | None = None) -> Enhanced:
    """The expanded prompt of ``text`` from the engine's own text encoder."""
    pipe = engine.pipe
    if pipe.text_encoder is None:
        raise ZTurboError("this engine was loaded without a text encoder: the prompt enhancer "
                          "needs it")
    head = lm_head(pipe.text_encoder, demo_model=is_demo(getattr(engine, "spec", "")))
    started = time.monotonic()
    ids = chat_ids(pipe.tokenizer, text)
    limit = int(getattr(pipe.text_encoder.config, "max_position_embeddings", 0) or 0)
    if limit and len(ids) + max_new_tokens > limit:
        raise ZTurboError(f"the prompt to enhance is {len(ids)} tokens with the system prompt; "
                          f"with {max_new_tokens} new tokens that is above the encoder's "
                          f"{limit} positions")
    if head.device != component_device(engine, "text_encoder"):
        head = head.to(component_device(engine, "text_encoder"))
    tokens, stopped = greedy(pipe.text_encoder, head, ids, stop_ids(pipe.tokenizer),
                             max_new_tokens, started + timeout_s, on_token)
    reply = clean(pipe.tokenizer.decode(tokens, skip_special_tokens=True))
    if not reply:
        raise ZTurboError("the prompt enhancer wrote no text for this prompt")
    return Enhanced(reply, len(tokens), time.monotonic() - started, stopped)


__all__ = ["Cancelled", "Enhanced", "SYSTEM_PROMPT", "SYSTEM_VERSION", "enhance", "lm_head"]
