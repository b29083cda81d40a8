"""Settings (one per process) and Request (one per image), validated once for every front end.

Precedence, highest first: CLI flags > environment (``ZTURBO_*``) > ``config.toml`` profile
table > ``config.toml`` ``[default]`` table > built-in defaults.
"""

from __future__ import annotations

import difflib
import os
import secrets
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from .errors import ZTurboError
from .lora import LoraPick, pick_loras
from .paths import state_dir
from .prompt_templates import MAX_TEMPLATE_CHARS, find

DEFAULT_MODEL = "Tongyi-MAI/Z-Image-Turbo"
MAX_STEPS = 100
SEED_LIMIT = 2**63  # torch.Generator.manual_seed takes any int64
# Z-Image's DiT text-position limit: axes_lens[0] = 1536 RoPE positions; captions sit at
# positions 1..P (P = tokens padded to a multiple of 32) and the image at P + 1, so P + 1
# <= 1535 and P <= 1504 (steps.text_token_limit derives it from a loaded model's config).
TEXT_TOKEN_LIMIT = 1504
LONG_PROMPT_MODES = ("truncate", "interpolate", "pool", "attention_pool")
DYPE_METHODS = ("off", "vision_yarn", "yarn", "ntk")
LongPromptMode = Literal["truncate", "interpolate", "pool", "attention_pool"]
DypeMethod = Literal["off", "vision_yarn", "yarn", "ntk"]

# Official resolution buckets (Tongyi-MAI's Z-Image demo), keyed by bucket then aspect.
ASPECTS = ("1:1", "9:7", "7:9", "4:3", "3:4", "3:2", "2:3", "16:9", "9:16", "21:9", "9:21")
_BUCKET_SIZES = {
    1024: "1024x1024 1152x896 896x1152 1152x864 864x1152 1248x832 832x1248 1280x720 720x1280 "
    "1344x576 576x1344",
    1280: "1280x1280 1440x1120 1120x1440 1472x1104 1104x1472 1536x1024 1024x1536 1536x864 864x1536 "
    "1680x720 720x1680",
    1536: "1536x1536 1728x1344 1344x1728 1728x1296 1296x1728 1872x1248 1248x1872 2048x1152 "
    "1152x2048 2016x864 864x2016",
}
BUCKETS: dict[int, dict[str, tuple[int, int]]] = {
    bucket: {
        aspect: tuple(int(v) for v in size.split("x"))  # type: ignore[misc]
        for aspect, size in zip(ASPECTS, sizes.split(), strict=True)
    }
    for bucket, sizes in _BUCKET_SIZES.items()
}


def bucket_size(aspect: str, bucket: int = 1024) -> tuple[int, int]:
    """(width, height) of an official bucket, e.g. ``bucket_size("16:9") == (1280, 720)``."""
    if bucket not in BUCKETS:
        raise ZTurboError(f"unknown bucket {bucket}: choose one of {', '.join(map(str, BUCKETS))}")
    if aspect not in BUCKETS[bucket]:
        raise ZTurboError(f"unknown aspect {aspect!r}: choose one of {', '.join(ASPECTS)}")
    return BUCKETS[bucket][aspect]


def nearest_multiples(value: int, multiple: int = 16) -> tuple[int, int]:
    """The valid sizes either side of ``value`` (the lower one is at least ``multiple``)."""
    lower = max(multiple, value // multiple * multiple)
    return lower, lower + multiple


def config_path() -> Path:
    """``$ZTURBO_CONFIG`` or ``<state dir>/config.toml``."""
    path = os.environ.get("ZTURBO_CONFIG")
    return Path(path).expanduser() if path else state_dir() / "config.toml"


class Settings(BaseSettings):
    """What lives for the whole process. Every field is a config key and a ``ZTURBO_`` variable."""

    model_config = SettingsConfigDict(env_prefix="ZTURBO_", extra="forbid", populate_by_name=True)

    # model
    model: str = Field(DEFAULT_MODEL, description="Hub id, local diffusers folder or demo name")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit)")
    device: str = Field("auto", description="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bfloat16 on cuda, float32 elsewhere"
    )
    # request defaults
    width: int = Field(1024, description="default image width")
    height: int = Field(1024, description="default image height")
    steps: int = Field(8, description="default DiT passes (Turbo: 8)")
    guidance: float = Field(0.0, description="default guidance scale (Turbo: 0)")
    shift: float = Field(3.0, description="default flow-matching shift")
    max_sequence_length: int = Field(
        512, ge=1, le=TEXT_TOKEN_LIMIT,
        description=f"default text token limit (the DiT takes at most {TEXT_TOKEN_LIMIT})",
    )
    # prompt side (docs/knobs.md)
    template: str | None = Field(None, description="default prompt template name (none: off)")
    templates_dir: str | None = Field(
        None, description="user prompt templates, *.toml (default <state>/templates)"
    )
    hidden_layer: int = Field(-2, description="Qwen3 hidden state fed to the DiT (-2: penultimate)")
    long_prompt: LongPromptMode = Field(
        "truncate", description="prompts over max_sequence_length: truncate, interpolate, pool, "
        "attention_pool"
    )
    # transformer research knobs (docs/knobs.md)
    dype: DypeMethod = Field("off", description="DyPE for 2K-4K: off, vision_yarn, yarn, ntk")
    dype_scale: float = Field(2.0, description="DyPE lambda_s: extrapolation strength")
    dype_exponent: float = Field(2.0, description="DyPE lambda_t: how fast it fades over steps")
    slg_scale: float = Field(0.0, description="skip-layer guidance scale (0: off)")
    slg_layers: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [7, 8, 9], description="DiT layers skipped by SLG, e.g. 7,8,9"
    )
    slg_start: float = Field(0.01, description="SLG starts at this fraction of the steps")
    slg_stop: float = Field(0.2, description="SLG stops at this fraction of the steps")
    # limits
    max_pixels: int = Field(4096 * 4096, description="largest width*height accepted")
    max_prompt_chars: int = Field(20_000, description="longest prompt accepted, in characters")
    max_images: int = Field(16, description="most images in one request")
    # outputs
    output_dir: str | None = Field(None, description="where images go (default <state>/outputs)")
    # caches (teleport issue)
    teleport: bool = Field(True, description="store and resume trajectories (exact replay)")
    teleport_start_step: int = Field(
        7,
        validation_alias=AliasChoices(
            "ZTURBO_TELEPORT_START_STEP", "LATENT_TELEPORT_START_STEP"  # the name operators know
        ),
        description="a hit resumes at this step (0-based): 7 of 8 reruns the last step",
    )
    teleport_store_steps: Annotated[list[int], NoDecode] = Field(
        default_factory=list, description="extra steps to store, e.g. 2,4,6"
    )
    teleport_repeat: Literal["image", "latent", "off"] = Field(
        "image", description="exact repeats: image (store the encoded image and the final "
        "latent: a repeat is a lookup), latent (final latent only: a repeat decodes), off")
    memory_cache_mb: float = Field(512.0, description="memory tier cap in MiB (0: off)")
    disk_cache_mb: float = Field(4096.0, description="disk tier cap in MiB (0: off)")
    redis_url: str | None = Field(None, description="Redis tier, e.g. redis://127.0.0.1:6379/0")
    redis_ttl_s: int = Field(7 * 24 * 3600, description="Redis entry lifetime in seconds")
    redis_timeout_s: float = Field(0.5, description="Redis socket timeout in seconds")
    # acceleration (issue 6; see docs/performance.md). Engine-level: they enter the model
    # fingerprint through engine.extras["transformer"], so every cache keys on them.
    step_cache: Literal["off", "dbcache", "taylorseer"] = Field(
        "off", description="cache-dit step caching: off, dbcache, or dbcache + taylorseer"
    )
    step_cache_preset: Literal["slow", "medium", "fast", "ultra"] | None = Field(
        None, description="static step mask from cache-dit's policies for the step count"
    )
    step_cache_mask: str | None = Field(
        None, description="explicit step mask, one digit per step: 1 compute, 0 cache (11101001)"
    )
    step_cache_policy: Literal["static", "dynamic"] = Field(
        "static", description="masked steps: static always reuse, dynamic ask the threshold"
    )
    cache_dit_fn: int = Field(1, ge=0, description="DBCache: first blocks always computed (Fn)")
    cache_dit_bn: int = Field(0, ge=0, description="DBCache: last blocks always computed (Bn)")
    cache_dit_warmup: int = Field(2, ge=0, description="DBCache: steps computed before caching")
    cache_dit_rdt: float = Field(
        0.08, ge=0.0, description="DBCache: residual-diff threshold (higher caches more)"
    )
    cache_dit_max_cached: int = Field(-1, ge=-1, description="most cached steps (-1: no limit)")
    cache_dit_mc: int = Field(
        -1, ge=-1, description="most consecutive cached steps (-1: no limit)"
    )
    cache_dit_taylorseer: bool = Field(False, description="dbcache plus the TaylorSeer calibrator")
    cache_dit_ts_order: int = Field(1, ge=1, le=4, description="TaylorSeer order")
    attention: Literal["auto", "native", "flash", "_flash_3", "sage", "xformers"] = Field(
        "auto", description="attention kernel; auto: the best exact one installed for the device"
    )
    compile: bool = Field(False, description="torch.compile the repeated transformer blocks")
    compile_mode: Literal[
        "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"
    ] = Field("default", description="torch.compile mode for --compile")
    # server (HTTP issue)
    host: str = Field("127.0.0.1", description="address the server binds")
    port: int = Field(8000, description="port the server binds")
    api_key: str | None = Field(None, description="Bearer key required by the server when set")
    public_url: str | None = Field(
        None, description="base of the server's links (response_format url), e.g. "
        "https://img.example.com; unset: the request's Host"
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="origins CORS allows, e.g. https://a.example (none: off)"
    )
    queue_depth: int = Field(16, ge=1, description="most jobs waiting in the server queue (more: 429)")
    request_timeout_s: float = Field(600.0, gt=0, description="a server job's limit, queue wait included")
    shutdown_grace_s: float = Field(10.0, ge=0, description="on shutdown, how long a running job may finish")
    max_upload_mb: float = Field(20.0, gt=0, description="largest upload (image edits, PNG drop) in MiB")
    max_steps: int = Field(MAX_STEPS, ge=1, le=MAX_STEPS, description="most DiT passes a request may ask")
    preview_every: int = Field(2, ge=0, description="server: a latent preview every N steps (0: none)")
    server: str = Field(
        "auto", pattern=r"^(auto|off|https?://\S+)$",
        description="zturbo generate: auto (a running zturbo serve with the same model), "
                    "off, or a server URL")
    state_backend: Literal["local", "redis"] = Field(
        "local", description="server jobs, events, images, history: local (SQLite + files) or "
        "redis (shared by every ingress; needs redis_url)")
    state_lease_s: float = Field(
        15.0, gt=0, description="redis state: an ingress silent this long is dead; its jobs end")
    # image side and weights (issue 5, docs/knobs.md)
    strength: float = Field(0.6, description="default img2img/inpaint strength (share of steps run)")
    loras: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="LoRA files fused at load, PATH[:SCALE], comma-separated"
    )
    lora_dirs: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="folders the server may pick LoRAs from by name"
    )
    transformer_file: str | None = Field(
        None, description="single-file transformer (.gguf or .safetensors) over the base model's"
    )
    text_encoder_quant: Literal["none", "8bit", "4bit"] = Field(
        "none", description="bitsandbytes text-encoder quantisation (CUDA only)"
    )
    offload: Literal["none", "model", "sequential"] = Field(
        "none", description="CPU offload: model (whole components) or sequential (layers)"
    )
    text_encoder_device: str | None = Field(None, description="text encoder device (default: device)")
    vae_device: str | None = Field(None, description="VAE device (default: device)")
    vae_tiling_pixels: int = Field(
        2048 * 2048, description="tile the VAE automatically above this many pixels (0: never)"
    )
    vae_tile_size: int = Field(512, description="VAE tile size in pixels")
    vae_tile_overlap: float = Field(0.25, description="VAE tile overlap, a fraction of a tile")

    @field_validator("teleport_store_steps", "slg_layers", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [int(v) for v in value.replace(" ", "").split(",") if v]
        return value

    @field_validator("cors_origins", "loras", "lora_dirs", mode="before")
    @classmethod
    def _comma_strings(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError(f"public_url {value!r} must start with http:// or https://")
        return value.rstrip("/") if value else None

    @field_validator("step_cache_mask")
    @classmethod
    def _step_mask(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        value = value.replace(",", "").replace(" ", "")
        if not set(value) <= {"0", "1"} or len(value) > MAX_STEPS:
            raise ValueError(f"step_cache_mask {value!r}: use 0/1 digits, one per step")
        if not value.startswith("1"):
            raise ValueError("step_cache_mask must compute the first step (start with 1)")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _ConfigFileSource(settings_cls))

    @property
    def templates(self) -> Path:
        """The user templates dir (``templates_dir`` or ``<state>/templates``)."""
        return Path(self.templates_dir).expanduser() if self.templates_dir else state_dir() / "templates"

    @property
    def home(self) -> Path:
        return state_dir()

    @property
    def outputs(self) -> Path:
        return Path(self.output_dir).expanduser() if self.output_dir else state_dir() / "outputs"


# The config-file layer of the settings being built (set by load_settings, read by the source).
_CONFIG_LAYER: ContextVar[dict[str, Any]] = ContextVar("_CONFIG_LAYER", default={})


class _ConfigFileSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return _CONFIG_LAYER.get().get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_CONFIG_LAYER.get())


def read_config(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """The tables of a config file: ``{"default": {...}, "<profile>": {...}}`` ({} if absent)."""
    path = path or config_path()
    if not path.exists():
        if os.environ.get("ZTURBO_CONFIG") and path == config_path():
            raise ZTurboError(f"ZTURBO_CONFIG names {path}, which does not exist")
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ZTurboError(f"cannot read config {path}: {exc}") from None
    fields = set(Settings.model_fields)
    for table, values in data.items():
        if not isinstance(values, dict):
            raise ZTurboError(f"{path}: top-level key {table!r} must be a table like [default]")
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ZTurboError(f"{path}: unknown key(s) in [{table}]: "
                              f"{', '.join(map(_did_you_mean, unknown))}")
    return data


def _did_you_mean(key: str) -> str:
    """``stpes (did you mean steps?)``: an unknown key with the closest setting's name."""
    close = difflib.get_close_matches(key, list(Settings.model_fields), n=1, cutoff=0.6)
    return f"{key} (did you mean {close[0]}?)" if close else key


def load_settings(
    profile: str | None = None, flags: dict[str, Any] | None = None, path: Path | None = None
) -> tuple[Settings, dict[str, str]]:
    """Settings from every layer, and where each value came from (for ``zturbo config show``)."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    path = path or config_path()
    tables = read_config(path)
    profile = profile or os.environ.get("ZTURBO_PROFILE")
    if profile and profile != "default" and profile not in tables:
        known = ", ".join(t for t in tables if t != "default") or "none"
        raise ZTurboError(f"unknown profile {profile!r} (profiles in {path}: {known})")
    layer = {**tables.get("default", {}), **(tables.get(profile, {}) if profile else {})}
    token = _CONFIG_LAYER.set(layer)
    try:
        settings = Settings(**flags)
        env = EnvSettingsSource(Settings)()
    except ValidationError as exc:
        raise ZTurboError(f"invalid setting: {first_error(exc)}") from None
    finally:
        _CONFIG_LAYER.reset(token)
    sources = {}
    for name in Settings.model_fields:
        if name in flags:
            sources[name] = "flag"
        elif _env_names(name) & {k.lower() for k in env}:
            sources[name] = "env"
        elif profile and name in tables.get(profile, {}):
            sources[name] = f"{path.name} [{profile}]"
        elif name in tables.get("default", {}):
            sources[name] = f"{path.name} [default]"
        else:
            sources[name] = "default"
    return settings, sources


def _env_names(field: str) -> set[str]:
    alias = Settings.model_fields[field].validation_alias
    choices = alias.choices if isinstance(alias, AliasChoices) else []
    return {field, *(str(c).lower() for c in choices)}


def first_error(exc: ValidationError) -> str:
    """One line from a pydantic error: ``width: width 1000 is not a multiple of 16 ...``."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ()))
    msg = err.get("msg", str(exc)).removeprefix("Value error, ")
    return f"{where}: {msg}" if where and not msg.startswith(where) else msg


SHA256_HEX = r"^[0-9a-f]{64}$"


# Strict scalars for Request fields: no ``true`` -> 1, no ``"8"`` -> 8, no 8.0 -> 8 (an int
# is still a valid float). NaN and infinities are refused model-wide (allow_inf_nan).
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
Bool = Annotated[bool, Strict()]
MAX_TEXT_CHARS = 200  # short free-text fields (names); prompts have max_prompt_chars


def check_text(value: str, what: str) -> str:
    """Refuse text that cannot be written as UTF-8 (a lone surrogate such as ``"\\ud800"``)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} holds an invalid character at position {exc.start} "
                         "(a lone surrogate): send valid UTF-8 text") from None
    return value


class Pass(BaseModel):
    """One pass of a multi-pass generation: a fraction of the final size, its steps, strength."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    scale: Float = Field(gt=0.0, le=1.0)
    steps: Int = Field(ge=1, le=MAX_STEPS)
    strength: Float = Field(gt=0.0, le=1.0)


def parse_passes(text: str) -> tuple[Pass, ...]:
    """``"0.5:8:1.0,1.0:4:0.45"`` -> passes of (scale, steps, strength)."""
    try:
        return tuple(Pass.model_validate(item) for item in _pass_items(text))
    except ValueError as exc:  # ValidationError is a ValueError
        msg = first_error(exc) if isinstance(exc, ValidationError) else str(exc)
        raise ZTurboError(msg) from None


def _pass_item(item: Any) -> Any:
    """``"0.5:8:1.0"`` -> ``{"scale", "steps", "strength"}``; other items pass unchanged."""
    if not isinstance(item, str):
        return item
    parts = item.strip().split(":")
    if len(parts) != 3:
        raise ValueError(f"pass {item!r} is not SCALE:STEPS:STRENGTH (e.g. 0.5:8:1.0)")
    try:
        return {"scale": float(parts[0]), "steps": int(parts[1]), "strength": float(parts[2])}
    except ValueError:
        raise ValueError(f"pass {item!r}: SCALE and STRENGTH are numbers, STEPS an integer"
                         ) from None


def _pass_items(value: Any) -> Any:
    """Passes in any accepted form: ``"S:N:T,S:N:T"``, or a list of such strings or objects."""
    if isinstance(value, str):
        value = [p for p in value.split(",") if p.strip()]
    if isinstance(value, list | tuple):
        return tuple(_pass_item(item) for item in value)
    return value  # pydantic reports the wrong type


def _lora_item(item: Any) -> Any:
    """``"NAME[:SCALE]"`` -> ``{"name", "scale"}``; other items pass unchanged."""
    if not isinstance(item, str):
        return item
    head, sep, tail = item.rpartition(":")
    if not (sep and head):
        return {"name": item}
    try:
        return {"name": head, "scale": float(tail)}
    except ValueError:
        raise ValueError(f"LoRA {item!r} is not NAME or NAME:SCALE (a number)") from None


def _lora_items(value: Any) -> Any:
    """LoRA picks in any accepted form: a list of ``"NAME[:SCALE]"`` strings or objects."""
    if isinstance(value, str):
        raise ValueError('loras is a list, e.g. ["anime:0.8"] or [{"name": "anime"}]')
    if isinstance(value, list | tuple):
        return tuple(_lora_item(item) for item in value)
    return value


# The field types every front end shares (the HTTP bodies derive theirs from Request's).
Passes = Annotated[tuple[Pass, ...], BeforeValidator(_pass_items)]
LoraPicks = Annotated[tuple[LoraPick, ...], BeforeValidator(_lora_items)]


class Request(BaseModel):
    """One generation. Every front end builds exactly this, once, with ``make_request``."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    prompt: str
    negative_prompt: str = ""
    seed: Int | None = Field(None, ge=0, lt=SEED_LIMIT)
    width: Int = 1024
    height: Int = 1024
    steps: Int = Field(8, ge=1, le=MAX_STEPS)
    guidance: Float = Field(0.0, ge=0.0, le=30.0)
    shift: Float = Field(3.0, gt=0.0, le=50.0)
    max_sequence_length: Int = Field(512, ge=1, le=TEXT_TOKEN_LIMIT)
    num_images: Int = Field(1, ge=1)
    teleport: Bool = True
    # img2img / inpaint: content hashes of the pixels passed alongside (image_sha256)
    image: str | None = Field(None, pattern=SHA256_HEX)
    strength: Float | None = Field(None, gt=0.0, le=1.0)
    mask: str | None = Field(None, pattern=SHA256_HEX)
    passes: Passes = Field((), max_length=8)
    # per-request LoRAs, by name from lora_dirs (engine-level ones: Settings.loras)
    loras: LoraPicks = Field((), max_length=8)
    vae_tiling: Bool = False
    vae_tile_size: Int = Field(512, ge=64, le=4096)
    vae_tile_overlap: Float = Field(0.25, ge=0.0, le=0.5)
    # Prompt side. The template body (not only its name) is kept so replay is exact and the
    # embedding key sees an edited template; ``embeddings_sha256`` names precomputed prompt
    # embeddings (``zturbo encode``) by content.
    template: str | None = Field(None, max_length=100)
    template_body: str | None = Field(None, max_length=MAX_TEMPLATE_CHARS)
    hidden_layer: Int = Field(-2, ge=-100, le=100)
    long_prompt: LongPromptMode = "truncate"
    embeddings_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    # Transformer research knobs: DyPE (position extrapolation) and skip-layer guidance.
    dype: DypeMethod = "off"
    dype_scale: Float = Field(2.0, ge=0.0, le=16.0)
    dype_exponent: Float = Field(2.0, ge=0.0, le=16.0)
    dype_base: Int = Field(1024, ge=256, le=4096, multiple_of=16)
    slg_scale: Float = Field(0.0, ge=0.0, le=20.0)
    slg_layers: tuple[Int, ...] = Field((7, 8, 9), max_length=64)
    slg_start: Float = Field(0.01, ge=0.0, le=1.0)
    slg_stop: Float = Field(0.2, ge=0.0, le=1.0)

    @model_validator(mode="before")
    @classmethod
    def _knobs_off_are_canonical(cls, data: Any) -> Any:
        """A knob that is off carries its default parameters, so it can't split the cache keys."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("dype", "off") == "off":
            for name in ("dype_scale", "dype_exponent", "dype_base"):
                data.pop(name, None)
        if not data.get("slg_scale"):
            for name in ("slg_layers", "slg_start", "slg_stop"):
                data.pop(name, None)
        return data

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
        return check_text(value, info.field_name)

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
        if self.passes and self.passes[-1].scale != 1.0:
            raise ValueError("the last pass must have scale 1.0 (the final size)")
        if self.vae_tile_size % 16:
            raise ValueError(f"vae_tile_size {self.vae_tile_size} is not a multiple of 16")
        return self

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


# Settings that are per-request defaults of the prompt-side and transformer knobs.
KNOB_SETTINGS = ("template", "hidden_layer", "long_prompt", "dype", "dype_scale",
                 "dype_exponent", "slg_scale", "slg_layers", "slg_start", "slg_stop")


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

    A missing seed becomes a random one here, so it can always be reported.
    """
    values = {k: v for k, v in fields.items() if v is not None}
    if values.get("template_body") and not values.get("template"):
        values["template"] = "custom"  # a body given directly (Python API, HTTP)
    for name in ("width", "height", "steps", "guidance", "shift", "max_sequence_length",
                 *KNOB_SETTINGS):
        values.setdefault(name, getattr(settings, name))
    # The outcome is always written down ("none" or name + body) so that re-validating a
    # dumped Request (replay, --from) cannot pick up a different default template.
    if values.get("template") in (None, "", "none"):
        values["template"] = "none"
        values.pop("template_body", None)
    elif not values.get("template_body"):
        values["template_body"] = find(values["template"], settings).body
    values.setdefault("teleport", settings.teleport)
    if values.get("image") is not None:
        values.setdefault("strength", settings.strength)
    if values.get("loras"):
        values["loras"] = pick_loras(_lora_picks(values["loras"]), settings.lora_dirs)
    values.setdefault("vae_tile_size", settings.vae_tile_size)
    values.setdefault("vae_tile_overlap", settings.vae_tile_overlap)
    if "vae_tiling" not in values:
        try:
            pixels = int(values["width"]) * int(values["height"])
        except (TypeError, ValueError):
            pixels = 0  # the validator reports the bad size
        values["vae_tiling"] = 0 < settings.vae_tiling_pixels < pixels
    if values.get("seed") is None:
        values["seed"] = secrets.randbelow(2**32)
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
