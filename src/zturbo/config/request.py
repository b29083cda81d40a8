"""Request (one per image), validated once for every front end, and ``make_request``."""

from __future__ import annotations

import functools
import secrets
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from zturbo.config.fields import SHA256_HEX, Bool, Float, Int, Passes, check_text
from zturbo.config.groups import Flag, Group, fields_where, group_of
from zturbo.config.settings import Settings, first_error
from zturbo.config.sizes import (
    ENHANCE_INPUT_CHARS,
    MAX_STEPS,
    MAX_VARIETY,
    SEED_LIMIT,
    TEXT_TOKEN_LIMIT,
    DypeMethod,
    LongPromptMode,
    nearest_multiples,
)
from zturbo.engine.control_maps import CONTROL_TABLE
from zturbo.engine.lora import LoraPick, LoraPicks, pick_loras
from zturbo.engine.prompt_templates import MAX_TEMPLATE_CHARS, find
from zturbo.errors import ZTurboError

# Each field's --help panel (zturbo.config.groups)
PROMPT, IMAGE, KNOB = Group("Prompt"), Group("Image"), Group("Research knobs")
WEIGHTS, CACHE = Group("Model and weights"), Group("Cache")
CONTROL = Group("Control")
# Control maps: built from the control image by a preprocessor, or passed through as given
PREPROCESSED_CONTROL = ("canny", "softedge", "lineart", "grayscale", "tile")
PASS_THROUGH_CONTROL = ("depth", "pose", "normal", "map")
ControlType = Literal["canny", "softedge", "lineart", "grayscale", "tile", "depth", "pose",
                      "normal", "map"]
CONTROL_SCALE = 0.75  # diffusers' ZImageControlNetPipeline default
MAX_CONTROL_SCALE = 2.0


class Request(BaseModel):
    """One generation. Every front end builds exactly this, once, with ``make_request``."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    prompt: str
    negative_prompt: Annotated[str, PROMPT, Flag(
        "Used only with guidance > 0.")] = ""
    seed: Annotated[Int | None, IMAGE, Flag(
        "Seed; repeat for one image per seed. Default: random, always printed.",
        type=list[int])] = Field(None, ge=0, lt=SEED_LIMIT)
    width: Annotated[Int, IMAGE, Flag(
        "Width in pixels, a multiple of 16.", short="-W")] = 1024
    height: Annotated[Int, IMAGE, Flag(
        "Height in pixels, a multiple of 16.", short="-H")] = 1024
    steps: Annotated[Int, IMAGE, Flag(
        "DiT passes, 1-100. Turbo: 8 (diffusers 0.42 counts passes; older guides say 9).",
        short="-s")] = Field(8, ge=1, le=MAX_STEPS)
    guidance: Annotated[Float, IMAGE, Flag(
        "Guidance scale; Turbo is distilled for 0. [default: 0]",
        short="-g")] = Field(0.0, ge=0.0, le=30.0)
    shift: Annotated[Float, IMAGE, Flag(
        "Flow-matching timestep shift.")] = Field(3.0, gt=0.0, le=50.0)
    # Guidance controls of the undistilled Z-Image (diffusers' cfg_normalization and
    # cfg_truncation); with guidance 0 they do nothing and stay at their defaults.
    cfg_normalization: Annotated[Bool, IMAGE, Flag(
        "With guidance > 0: scale the guided prediction back to the conditional one's norm "
        "when it is larger. [default: off]", switch=True)] = False
    cfg_truncation: Annotated[Float, IMAGE, Flag(
        "With guidance > 0: steps whose normalised time (1 - sigma) is above this run "
        "without guidance, one DiT pass each; 1 keeps guidance on every step. [default: 1]"
    )] = Field(1.0, ge=0.0, le=1.0)
    max_sequence_length: Annotated[Int, PROMPT, Flag(
        "Text token limit.")] = Field(512, ge=1, le=TEXT_TOKEN_LIMIT)
    num_images: Annotated[Int, IMAGE, Flag(
        "Images per seed (seeds seed, seed+1, ...).", short="-n")] = Field(1, ge=1)
    teleport: Annotated[Bool, CACHE, Flag(
        "Exact-replay cache: resume a seen trajectory.", switch=True)] = True
    # img2img / inpaint: content hashes of the pixels passed alongside (image_sha256)
    image: Annotated[str | None, IMAGE, Flag(
        "Source image for img2img; the output size defaults to its size (multiples of 16).",
        type=Path)] = Field(None, pattern=SHA256_HEX)
    strength: Annotated[Float | None, IMAGE, Flag(
        "img2img/inpaint strength, the share of steps run (0-1].")] = Field(None, gt=0.0, le=1.0)
    mask: Annotated[str | None, IMAGE, Flag(
        "Inpaint mask for --image: white is repainted, black kept.",
        type=Path)] = Field(None, pattern=SHA256_HEX)
    # ControlNet: the control image's content hash (its pixels travel alongside, like
    # ``image``), how it becomes a map (``engine.control_maps``) and how strongly it steers.
    # Every field in the CONTROL group belongs to it (``control_fields``): off (no control
    # image) they leave the cache keys and must keep their defaults.
    control_image: Annotated[str | None, CONTROL, Flag(
        "Control image for the engine's ControlNet (--controlnet); the output size "
        "defaults to its size.", type=Path)] = Field(None, pattern=SHA256_HEX)
    control_type: Annotated[ControlType, CONTROL, Flag(
        "How the control image becomes a map: canny, softedge, lineart, grayscale, tile, or a "
        "map made elsewhere: depth, pose, normal, map.", type=str)] = "map"
    control_scale: Annotated[Float, CONTROL, Flag(
        "ControlNet strength, 0-2. [default: 0.75]")] = Field(
        CONTROL_SCALE, ge=0.0, le=MAX_CONTROL_SCALE)
    # Control-map preprocessor parameters (``engine.control_maps``): each is read by one
    # control type only and is canonical (its default) for the others.
    canny_low: Annotated[Int, CONTROL, Flag(
        "Canny low threshold on the 0-255 gradient scale (--control-type canny). "
        "[default: 100]")] = Field(100, ge=0, le=1000)
    canny_high: Annotated[Int, CONTROL, Flag(
        "Canny high threshold, at least --canny-low (--control-type canny). "
        "[default: 200]")] = Field(200, ge=0, le=1000)
    tile_factor: Annotated[Int, CONTROL, Flag(
        "How many times the tile map shrinks the control image before blurring it back "
        "(--control-type tile). [default: 4]")] = Field(4, ge=1, le=32)
    passes: Annotated[Passes, IMAGE, Flag(
        "Multi-pass SCALE:STEPS:STRENGTH,... e.g. 0.5:8:1.0,1.0:4:0.45 (last scale 1.0).",
        type=str)] = Field((), max_length=8)
    # per-request LoRAs, by name from lora_dirs (engine-level ones: Settings.loras)
    loras: Annotated[LoraPicks, WEIGHTS] = Field((), max_length=8)
    vae_tiling: Annotated[Bool, WEIGHTS, Flag(
        "Tiled VAE. [default: on above vae_tiling_pixels]", switch=True)] = False
    vae_tile_size: Annotated[Int, WEIGHTS, Flag(
        "VAE tile size in pixels.")] = Field(512, ge=64, le=4096)
    vae_tile_overlap: Annotated[Float, WEIGHTS, Flag(
        "VAE tile overlap, 0-0.5 of a tile.")] = Field(0.25, ge=0.0, le=0.5)
    # Prompt side. The template body (not only its name) is kept so replay is exact and the
    # embedding key sees an edited template; ``embeddings_sha256`` names precomputed prompt
    # embeddings (``zturbo encode``) by content.
    template: Annotated[str | None, PROMPT, Flag(
        "Prompt template by name (`zturbo templates list`); none: off.")] = Field(None, max_length=100)
    template_body: Annotated[str | None, PROMPT] = Field(None, max_length=MAX_TEMPLATE_CHARS)
    hidden_layer: Annotated[Int, PROMPT, Flag(
        "Qwen3 hidden state fed to the DiT. [default: -2, the penultimate]")] = Field(-2, ge=-100, le=100)
    long_prompt: Annotated[LongPromptMode, PROMPT, Flag(
        "Over max-sequence-length: truncate, interpolate, pool, attention_pool.",
        type=str)] = "truncate"
    embeddings_sha256: Annotated[str | None, PROMPT] = Field(None, pattern=r"^[0-9a-f]{64}$")
    # Transformer research knobs: DyPE (position extrapolation) and skip-layer guidance.
    dype: Annotated[DypeMethod, KNOB, Flag(
        "DyPE position extrapolation for 2K-4K: off, vision_yarn, yarn, ntk.", type=str)] = "off"
    dype_scale: Annotated[Float, KNOB, Flag(
        "DyPE lambda_s (extrapolation strength).")] = Field(2.0, ge=0.0, le=16.0)
    dype_exponent: Annotated[Float, KNOB, Flag(
        "DyPE lambda_t (how fast it fades).")] = Field(2.0, ge=0.0, le=16.0)
    dype_base: Annotated[Int, KNOB, Flag(
        "DyPE training resolution in pixels. [default: 1024]")] = Field(1024, ge=256, le=4096, multiple_of=16)
    slg_scale: Annotated[Float, KNOB, Flag(
        "Skip-layer guidance scale; 0 is off. [default: 0]")] = Field(0.0, ge=0.0, le=20.0)
    slg_layers: Annotated[tuple[Int, ...], KNOB, Flag(
        "DiT layers SLG skips, comma-separated.", type=str)] = Field((7, 8, 9), max_length=64)
    slg_start: Annotated[Float, KNOB, Flag(
        "SLG starts at this fraction of the steps.")] = Field(0.01, ge=0.0, le=1.0)
    slg_stop: Annotated[Float, KNOB, Flag(
        "SLG stops at this fraction of the steps.")] = Field(0.2, ge=0.0, le=1.0)
    # Seed variety: seeded noise in the prompt embedding for the first share of the steps.
    variety: Annotated[Float, KNOB, Flag(
        "Seed variety: seeded noise in the prompt embedding for the first steps, 0-2 (0 is "
        "off). [default: 0]")] = Field(0.0, ge=0.0, le=MAX_VARIETY)
    variety_steps: Annotated[Float, KNOB, Flag(
        "Share of the steps seed variety lasts, (0-1]. [default: 0.3]")] = Field(
        0.3, gt=0.0, le=1.0)
    # Prompt enhancer: ``enhance`` asks for it; once done the prompt is the enhanced text
    # (what is encoded and keyed), ``enhance`` is false and ``original_prompt`` keeps the
    # user's words (so a replay never enhances again).
    enhance: Annotated[Bool, PROMPT, Flag(
        "Expand the prompt with the loaded Qwen3 text encoder first (greedy, cached); the "
        "image is keyed by the enhanced text.")] = False
    original_prompt: Annotated[str | None, PROMPT] = None

    @model_validator(mode="before")
    @classmethod
    def _knobs_off_are_canonical(cls, data: Any) -> Any:
        """A knob that is off carries its default parameters, so it can't split the cache keys.
        What was given for them must still be valid (no NaN slips in because a knob is off)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        off = []
        if data.get("dype", "off") == "off":
            off += ["dype_scale", "dype_exponent", "dype_base"]
        if not data.get("variety"):
            off += ["variety_steps"]
        if not data.get("slg_scale"):
            off += ["slg_layers", "slg_start", "slg_stop"]
        off += _control_params_off(data)
        if not data.get("guidance"):
            off += ["cfg_normalization", "cfg_truncation"]
        for name in off:
            if name in data:
                try:
                    field_adapter(name).validate_python(data.pop(name))
                except ValidationError as exc:
                    raise ValueError(f"{name}: {first_error(exc)}") from None
        return data

    @model_validator(mode="after")
    def _canny_order(self) -> Request:
        if self.canny_low > self.canny_high:
            raise ValueError(f"canny_low {self.canny_low} must not be above canny_high "
                             f"{self.canny_high}")
        return self

    @field_validator("slg_layers")
    @classmethod
    def _layers(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(v < 0 for v in value):
            raise ValueError("slg_layers are DiT layer indices, 0 or more")
        return tuple(sorted(set(value)))

    @field_validator("template_body")
    @classmethod
    def _template_body(cls, value: str | None) -> str | None:
        if value is not None and "{prompt}" not in value:
            raise ValueError("a template body must contain {prompt}")
        return check_text(value, "template_body") if value is not None else value

    @field_validator("template")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        return check_text(value, "template") if value is not None else value

    @field_validator("original_prompt")
    @classmethod
    def _original(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        limit = (info.context or {}).get("max_prompt_chars")
        if limit and len(value) > limit:
            raise ValueError(f"original_prompt has {len(value)} characters; the limit is {limit}")
        return check_text(value, "original_prompt")

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _prompt(cls, value: str, info: ValidationInfo) -> str:
        """Prompt and negative prompt: the same length limit, valid UTF-8."""
        if info.field_name == "prompt" and not value.strip():
            raise ValueError("prompt is empty")
        limit = (info.context or {}).get("max_prompt_chars")
        if limit and len(value) > limit:
            raise ValueError(f"{info.field_name} has {len(value)} characters; the limit is "
                             f"{limit} (setting max_prompt_chars)")
        return check_text(value, info.field_name or "prompt")

    @field_validator("width", "height")
    @classmethod
    def _size(cls, value: int, info: ValidationInfo) -> int:
        if value < 16:
            raise ValueError(f"{info.field_name} {value} is too small: the smallest is 16")
        if value % 16:
            lo, hi = nearest_multiples(value)
            raise ValueError(
                f"{info.field_name} {value} is not a multiple of 16: nearest valid sizes are "
                f"{lo} or {hi}"
            )
        return value

    @model_validator(mode="after")
    def _limits(self, info: ValidationInfo) -> Request:
        ctx = info.context or {}
        if ctx.get("max_pixels") and self.width * self.height > ctx["max_pixels"]:
            raise ValueError(
                f"{self.width}x{self.height} is {self.width * self.height} pixels; the limit "
                f"is {ctx['max_pixels']} (setting max_pixels)"
            )
        if ctx.get("max_steps") and self.dit_passes() > ctx["max_steps"]:
            what = (f"the passes run {self.dit_passes()} steps in all" if self.passes
                    else f"steps {self.steps}")
            raise ValueError(f"{what}, above the limit {ctx['max_steps']} (setting max_steps)")
        if ctx.get("max_images") and self.num_images > ctx["max_images"]:
            raise ValueError(f"num_images {self.num_images} is above the limit {ctx['max_images']}")
        if self.slg_scale and self.slg_start >= self.slg_stop:
            raise ValueError(f"slg_start {self.slg_start} must be below slg_stop {self.slg_stop}")
        if self.template not in (None, "none") and not self.template_body:
            raise ValueError(f"template {self.template!r} has no body (make_request resolves it)")
        if self.slg_scale and not self.slg_layers:
            raise ValueError("slg_layers is empty: name the DiT layers to skip, e.g. 7,8,9")
        if self.image is None and (self.strength is not None or self.mask is not None):
            raise ValueError("strength and mask need a source image (--image)")
        self._check_control()
        if self.passes and self.passes[-1].scale != 1.0:
            raise ValueError("the last pass must have scale 1.0 (the final size)")
        if self.enhance and len(self.prompt) > ENHANCE_INPUT_CHARS:
            raise ValueError(f"the prompt to enhance has {len(self.prompt)} characters; the "
                             f"enhancer takes at most {ENHANCE_INPUT_CHARS}")
        if self.enhance and self.embeddings_sha256 is not None:
            raise ValueError("enhance needs the text encoder: it cannot run on prompt "
                             "embeddings from a file")
        if self.vae_tile_size % 16:
            raise ValueError(f"vae_tile_size {self.vae_tile_size} is not a multiple of 16")
        return self

    def _check_control(self) -> None:
        """Control fields need a control image; controlled inpaint runs the whole schedule
        from noise (as diffusers' ZImageControlNetInpaintPipeline does)."""
        if self.control_image is None:
            changed = [name for name in control_fields()
                       if getattr(self, name) != Request.model_fields[name].default]
            if changed:
                raise ValueError(f"{', '.join(changed)} {'need' if len(changed) > 1 else 'needs'} "
                                 "a control image (--control-image)")
            return
        if self.image is not None and self.mask is None:
            raise ValueError("a control image with a source image needs a mask (controlled "
                             "inpainting); img2img with a control image is not supported")
        if self.image is not None and self.strength != 1.0:
            raise ValueError(f"controlled inpainting runs every step from noise: strength "
                             f"must be 1.0, not {self.strength}")
        if self.passes:
            raise ValueError("multi-pass does not combine with a control image")

    def dit_passes(self) -> int:
        """DiT passes one image asks for: ``steps``, or all its passes together (the
        refining ones from their strength on), so a limit holds for the total work."""
        if not self.passes:
            return self.steps
        total = 0
        for i, p in enumerate(self.passes):
            from_image = i > 0 or self.image is not None
            total += p.steps - (img2img_start_step(p.steps, p.strength) if from_image else 0)
        return total

    def for_seed(self, seed: int) -> Request:
        """The Request that reproduces one image of this (possibly multi-image) Request."""
        return self.model_copy(update={"seed": seed, "num_images": 1})

    def seeds(self) -> list[int]:
        """One seed per image: ``seed, seed+1, ...`` (the seed must be resolved)."""
        assert self.seed is not None, "resolve the seed first (make_request does)"
        return [(self.seed + i) % SEED_LIMIT for i in range(self.num_images)]


def _control_params_off(data: dict[str, Any]) -> list[str]:
    """With a control image, the preprocessor parameters of the other control types (they
    take their defaults, so they cannot split the keys; without a control image every
    control field must keep its default: ``Request._check_control``)."""
    if data.get("control_image") is None:
        return []
    kind = data.get("control_type", Request.model_fields["control_type"].default)
    return [name for key, entry in CONTROL_TABLE.items() if key != kind
            for name in entry.params]


@functools.cache
def field_adapter(name: str) -> TypeAdapter:
    """A validator of one Request field alone (its type, strictness and bounds)."""
    info = Request.model_fields[name]
    kind: Any = Annotated[info.annotation, *info.metadata]
    return TypeAdapter(kind, config=ConfigDict(allow_inf_nan=False))


@functools.cache
def control_fields() -> tuple[str, ...]:
    """The Request fields of ControlNet control: those in the ``Control`` group (the control
    image, its type, scale and preprocessor parameters)."""
    return tuple(name for name in Request.model_fields if group_of(Request, name) == CONTROL)


@functools.cache
def pixel_fields() -> tuple[str, ...]:
    """The Request fields that name pixels passed alongside, by their hash (a file on the
    command line): the img2img source, the inpaint mask, the control image."""
    return tuple(name for name, info in Request.model_fields.items()
                 if any(isinstance(m, Flag) and m.type is Path for m in info.metadata))


# Settings that are the defaults of the Request fields of the same name (Group request=True)
REQUEST_DEFAULTS = fields_where(Settings, request=True)


def img2img_start_step(steps: int, strength: float) -> int:
    """Steps an img2img run skips: diffusers' ``get_timesteps`` rule, kept identical
    (any strength > 0 leaves at least one step)."""
    init = min(steps * strength, steps)
    return int(max(steps - init, 0))


_LORA_PICKS: TypeAdapter[tuple[LoraPick, ...]] = TypeAdapter(LoraPicks)


def _lora_picks(value: Any) -> tuple[LoraPick, ...]:
    """LoRA picks checked for shape before their names are looked up in lora_dirs."""
    try:
        return _LORA_PICKS.validate_python(value)
    except ValidationError as exc:
        raise ZTurboError(f"loras: {first_error(exc)}") from None


def make_request(settings: Settings, **fields: Any) -> Request:
    """A validated Request: fields given (None = unset) over the settings' defaults.

    Three named steps: ``with_defaults`` (pure), ``resolve`` (reads the template body,
    hashes the picked LoRA files, draws a missing seed, so it can always be reported),
    ``validate``.
    """
    return validate(settings, resolve(settings, with_defaults(settings, fields)))


def with_defaults(settings: Settings, fields: dict[str, Any]) -> dict[str, Any]:
    """The fields given (None = unset) over the settings' request defaults."""
    values = {k: v for k, v in fields.items() if v is not None}
    if values.get("template_body") and not values.get("template"):
        values["template"] = "custom"  # a body given directly (Python API, HTTP)
    for name in REQUEST_DEFAULTS:
        values.setdefault(name, getattr(settings, name))
    # The outcome is always written down ("none" or name + body) so that re-validating a
    # dumped Request (replay, --from) cannot pick up a different default template.
    if values.get("template") in (None, "", "none"):
        values["template"] = "none"
        values.pop("template_body", None)
    if values.get("image") is not None:  # controlled inpaint runs from noise
        values.setdefault("strength", 1.0 if values.get("control_image") else settings.strength)
    if "vae_tiling" not in values:
        try:
            pixels = int(values["width"]) * int(values["height"])
        except (TypeError, ValueError):
            pixels = 0  # the validator reports the bad size
        values["vae_tiling"] = 0 < settings.vae_tiling_pixels < pixels
    return values


def resolve(settings: Settings, values: dict[str, Any]) -> dict[str, Any]:
    """What a request names, made concrete: the template's body (read from its file), each
    picked LoRA's sha256 (its file hashed), a seed (drawn when none is given)."""
    values = dict(values)
    if values.get("template") != "none" and not values.get("template_body"):
        values["template_body"] = find(values["template"], settings).body
    if values.get("loras"):
        values["loras"] = pick_loras(_lora_picks(values["loras"]), settings.lora_dirs,
                                     settings.lora_partial)
    if values.get("seed") is None:
        values["seed"] = secrets.randbelow(2**32)
    return values


def validate(settings: Settings, values: dict[str, Any]) -> Request:
    """The Request, checked against the settings' limits; one clear error line if not."""
    context = {
        "max_pixels": settings.max_pixels,
        "max_prompt_chars": settings.max_prompt_chars,
        "max_images": settings.max_images,
        "max_steps": settings.max_steps,
    }
    try:
        return Request.model_validate(values, context=context)
    except ValidationError as exc:
        raise ZTurboError(first_error(exc)) from None
