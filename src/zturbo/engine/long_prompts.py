"""Prompts longer than the token limit: encode all of it, then bring the sequence to the limit.

``truncate`` (diffusers' behaviour, the default) drops the tail. The other modes keep every
token's contribution: the whole prompt goes through the text encoder (in fixed windows when
it is longer than the encoder's positions) and the ``[tokens, hidden]`` sequence of hidden
states is reduced along the token axis to exactly ``max_sequence_length`` rows:

- ``interpolate``: linear resampling of the sequence (keeps the order and the ends);
- ``pool``: adaptive average pooling into equal bins;
- ``attention_pool``: the same bins, each a softmax-weighted mean whose query is the bin's
  mean, so tokens that agree with their neighbourhood weigh more than outliers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MODES = ("truncate", "interpolate", "pool", "attention_pool")
MAX_WINDOW = 8192  # tokens per encoder pass; fixed, so the same prompt always encodes alike


@torch.no_grad()
def encode_all(text_encoder, ids: list[int], layer: int, device, window: int | None = None):
    """Hidden states ``[len(ids), hidden]`` of layer ``layer`` over the whole token sequence.

    A sequence longer than ``window`` (default: the encoder's positions, at most
    ``MAX_WINDOW``) is encoded in consecutive windows, each on its own.
    """
    window = window or min(MAX_WINDOW, int(text_encoder.config.max_position_embeddings))
    parts = []
    for start in range(0, len(ids), window):
        chunk = torch.tensor([ids[start:start + window]], device=device)
        out = text_encoder(input_ids=chunk, attention_mask=torch.ones_like(chunk, dtype=torch.bool),
                           output_hidden_states=True)
        parts.append(out.hidden_states[layer][0])
    return torch.cat(parts)


def reduce(hidden: torch.Tensor, length: int, mode: str) -> torch.Tensor:
    """``[tokens, hidden]`` -> ``[length, hidden]`` by ``mode`` (computed in float32)."""
    if hidden.shape[0] <= length or mode == "truncate":
        return hidden[:length]
    x = hidden.float()
    if mode == "interpolate":
        out = F.interpolate(x.T[None], size=length, mode="linear", align_corners=True)[0].T
    elif mode == "pool":
        out = F.adaptive_avg_pool1d(x.T[None], length)[0].T
    elif mode == "attention_pool":
        out = _attention_pool(x, length)
    else:
        raise ValueError(f"unknown long-prompt mode {mode!r}: choose one of {', '.join(MODES)}")
    return out.to(hidden.dtype).contiguous()


def _attention_pool(x: torch.Tensor, length: int) -> torch.Tensor:
    """Softmax-weighted mean per adaptive bin (the bins ``adaptive_avg_pool1d`` uses)."""
    tokens, width = x.shape
    rows = []
    for i in range(length):
        lo, hi = (i * tokens) // length, math.ceil((i + 1) * tokens / length)
        part = x[lo:hi]
        weights = torch.softmax(part @ part.mean(0) / math.sqrt(width), dim=0)
        rows.append(weights @ part)
    return torch.stack(rows)
