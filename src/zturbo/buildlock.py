"""One process-wide lock around everything that builds modules through diffusers,
transformers or peft.

Building a module there is not thread-safe across engines: loading with
``low_cpu_mem_usage`` (a LoRA, a pipeline, a single file) swaps ``nn.Module.
register_parameter`` process-wide for the time of the load, so a module built by another
thread in that window gets its parameters on the meta device, and two overlapping swaps can
leave the swapped function in place for good. Model loads, LoRA loads and deletes,
single-file and GGUF loads, demo builds and step-cache wrapping therefore hold
``BUILD_LOCK``. It is re-entrant (a model load loads its LoRAs inside it). Lock order: an
engine's own lock first, then this one; never an engine's lock while holding this.
"""

from __future__ import annotations

import threading

BUILD_LOCK = threading.RLock()
