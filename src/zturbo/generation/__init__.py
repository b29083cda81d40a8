"""One generation: the engine type and loading, the orchestrator ``generate(engine,
request)`` over the caches, the per-request engine state, img2img, multi-pass, VAE tiling,
embeddings files, and the measurements the profiler and warm-up use."""
