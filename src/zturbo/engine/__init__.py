"""The pure stages of a generation (embed, noise, denoise, decode) and the levers on them:
step caching and attention, DyPE, skip-layer guidance, LoRAs, quantisation, placement,
long prompts, prompt templates, the cost model, the demo models."""
