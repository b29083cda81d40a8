"""Settings (one per process), layered from CLI flags, the environment and ``config.toml``.

Precedence, highest first: CLI flags > environment (``ZTURBO_*``) > ``config.toml`` profile
table > ``config.toml`` ``[default]`` table > built-in defaults.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    Field,
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

from zturbo.config.groups import Group, fields_where
from zturbo.config.sizes import (
    DEFAULT_MODEL,
    MAX_STEPS,
    TEXT_TOKEN_LIMIT,
    DypeMethod,
    LongPromptMode,
    ascii_int,
)
from zturbo.engine.costmodel import parse_bytes
from zturbo.errors import ZTurboError
from zturbo.paths import state_dir

API_KEY = re.compile(r"[\x21-\x7e]{1,512}")  # a Bearer token: visible ASCII, no spaces
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # a [models.NAME] table's name
MODELS = "models"  # the top-level config table of named models; no profile may take the name

# Each field's Group (zturbo.config.groups): its --help panel; "ENGINE": it decides which
# engine a process loads; "DEFAULT": it is the default of the Request field of its name.
WEIGHTS, WEIGHTS_ENGINE = Group("Model and weights"), Group("Model and weights", engine=True)
WEIGHTS_MEASURED = Group("Model and weights", engine=True, measured=True)  # auto: free memory
WEIGHTS_DEFAULT = Group("Model and weights", request=True)
IMAGE, IMAGE_DEFAULT = Group("Image"), Group("Image", request=True)
PROMPT, PROMPT_DEFAULT = Group("Prompt"), Group("Prompt", request=True)
KNOB_DEFAULT = Group("Research knobs", request=True)
CACHE, CACHE_ENGINE = Group("Cache"), Group("Cache", engine=True)
CACHE_DEFAULT = Group("Cache", request=True)
SPEED, SPEED_ENGINE = Group("Speed"), Group("Speed", engine=True)
LIMITS, OUTPUT, SERVER = Group("Limits"), Group("Output"), Group("Server")


def config_path() -> Path:
    """``$ZTURBO_CONFIG`` or ``<state dir>/config.toml``."""
    path = os.environ.get("ZTURBO_CONFIG")
    return Path(path).expanduser() if path else state_dir() / "config.toml"


class Settings(BaseSettings):
    """What lives for the whole process. Every field is a config key and a ``ZTURBO_`` variable."""

    model_config = SettingsConfigDict(env_prefix="ZTURBO_", extra="forbid", populate_by_name=True)

    # model
    model: Annotated[str, WEIGHTS_ENGINE] = Field(
        DEFAULT_MODEL, description="Hub id, local diffusers folder or demo name")
    revision: Annotated[str | None, WEIGHTS_ENGINE] = Field(
        None, description="Hub revision (branch, tag or commit)")
    device: Annotated[str, WEIGHTS_ENGINE] = Field(
        "auto", description="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    dtype: Annotated[Literal["auto", "float32", "bfloat16", "float16"], WEIGHTS_ENGINE] = Field(
        "auto", description="auto: bfloat16 on cuda, float32 elsewhere"
    )
    models: Annotated[dict[str, dict[str, Any]], WEIGHTS] = Field(
        default_factory=dict, description="named models a server holds, from the config "
        "file's [models.NAME] tables (source plus engine settings and request defaults; "
        "docs/server.md); model names the default one")
    # request defaults
    width: Annotated[int, IMAGE_DEFAULT] = Field(1024, description="default image width")
    height: Annotated[int, IMAGE_DEFAULT] = Field(1024, description="default image height")
    steps: Annotated[int, IMAGE_DEFAULT] = Field(8, description="default DiT passes (Turbo: 8)")
    guidance: Annotated[float, IMAGE_DEFAULT] = Field(
        0.0, description="default guidance scale (Turbo: 0)")
    shift: Annotated[float, IMAGE_DEFAULT] = Field(3.0, description="default flow-matching shift")
    cfg_normalization: Annotated[bool, IMAGE_DEFAULT] = Field(
        False, description="default CFG renormalisation (guidance > 0: the guided prediction "
        "is kept within the conditional one's norm)")
    cfg_truncation: Annotated[float, IMAGE_DEFAULT] = Field(
        1.0, description="default CFG truncation (guidance > 0: steps whose normalised time "
        "1 - sigma is above it run without guidance; 1: never)")
    max_sequence_length: Annotated[int, PROMPT_DEFAULT] = Field(
        512, ge=1, le=TEXT_TOKEN_LIMIT,
        description=f"default text token limit (the DiT takes at most {TEXT_TOKEN_LIMIT})",
    )
    # prompt side (docs/knobs.md)
    template: Annotated[str | None, PROMPT_DEFAULT] = Field(
        None, description="default prompt template name (none: off)")
    templates_dir: Annotated[str | None, PROMPT] = Field(
        None, description="user prompt templates, *.toml (default <state>/templates)"
    )
    hidden_layer: Annotated[int, PROMPT_DEFAULT] = Field(
        -2, description="Qwen3 hidden state fed to the DiT (-2: penultimate)")
    long_prompt: Annotated[LongPromptMode, PROMPT_DEFAULT] = Field(
        "truncate", description="prompts over max_sequence_length: truncate, interpolate, pool, "
        "attention_pool"
    )
    # transformer research knobs (docs/knobs.md)
    dype: Annotated[DypeMethod, KNOB_DEFAULT] = Field(
        "off", description="DyPE for 2K-4K: off, vision_yarn, yarn, ntk")
    dype_scale: Annotated[float, KNOB_DEFAULT] = Field(
        2.0, description="DyPE lambda_s: extrapolation strength")
    dype_exponent: Annotated[float, KNOB_DEFAULT] = Field(
        2.0, description="DyPE lambda_t: how fast it fades over steps")
    slg_scale: Annotated[float, KNOB_DEFAULT] = Field(
        0.0, description="skip-layer guidance scale (0: off)")
    slg_layers: Annotated[list[int], NoDecode, KNOB_DEFAULT] = Field(
        default_factory=lambda: [7, 8, 9], description="DiT layers skipped by SLG, e.g. 7,8,9"
    )
    slg_start: Annotated[float, KNOB_DEFAULT] = Field(
        0.01, description="SLG starts at this fraction of the steps")
    slg_stop: Annotated[float, KNOB_DEFAULT] = Field(
        0.2, description="SLG stops at this fraction of the steps")
    # prompt enhancer (docs/knobs.md)
    enhance_max_tokens: Annotated[int, PROMPT] = Field(
        512, ge=1, le=4096, description="most new tokens the prompt enhancer writes")
    enhance_timeout_s: Annotated[float, PROMPT] = Field(
        120.0, gt=0.0, le=3600.0, description="time limit of one prompt enhancement")
    # limits
    max_pixels: Annotated[int, LIMITS] = Field(
        4096 * 4096, description="largest width*height accepted")
    max_prompt_chars: Annotated[int, LIMITS] = Field(
        20_000, description="longest prompt accepted, in characters")
    max_images: Annotated[int, LIMITS] = Field(16, description="most images in one request")
    # outputs
    output_dir: Annotated[str | None, OUTPUT] = Field(
        None, description="where images go (default <state>/outputs)")
    # caches and teleport (docs/caching.md, docs/teleport.md)
    teleport: Annotated[bool, CACHE_DEFAULT] = Field(
        True, description="store and resume trajectories (exact replay)")
    teleport_start_step: Annotated[int, CACHE_ENGINE] = Field(
        7,
        validation_alias=AliasChoices(
            "ZTURBO_TELEPORT_START_STEP", "LATENT_TELEPORT_START_STEP"  # the name operators know
        ),
        description="a hit resumes at this step (0-based): 7 of 8 reruns the last step",
    )
    teleport_store_steps: Annotated[list[int], NoDecode, CACHE_ENGINE] = Field(
        default_factory=list, description="extra steps to store, e.g. 2,4,6"
    )
    teleport_repeat: Annotated[Literal["image", "latent", "off"], CACHE] = Field(
        "image", description="exact repeats: image (store the encoded image and the final "
        "latent: a repeat is a lookup), latent (final latent only: a repeat decodes), off")
    cache_write_queue: Annotated[int, CACHE] = Field(
        8, ge=0, le=1024, description="cache entries built and stored in the background at "
        "once (resume latents, image entries); a full queue skips storing, never waits; 0: "
        "store before the result returns")
    memory_cache_mb: Annotated[float, CACHE] = Field(
        512.0, description="memory tier cap in MiB (0: off)")
    disk_cache_mb: Annotated[float, CACHE] = Field(
        4096.0, description="disk tier cap in MiB (0: off)")
    redis_url: Annotated[str | None, CACHE] = Field(
        None, description="Redis tier, e.g. redis://127.0.0.1:6379/0")
    redis_ttl_s: Annotated[int, CACHE] = Field(
        7 * 24 * 3600, description="Redis entry lifetime in seconds")
    redis_timeout_s: Annotated[float, CACHE] = Field(
        0.5, description="Redis socket timeout in seconds")
    cache_secret: Annotated[str | None, CACHE] = Field(
        None, description="key of the HMAC sealing disk and Redis cache entries; the same on "
        "every replica (unset: generated into <state>/cache.secret, mode 0600)")
    # acceleration (docs/performance.md). Engine-level: they enter the model
    # fingerprint through engine.extras["transformer"], so every cache keys on them.
    step_cache: Annotated[Literal["off", "dbcache", "taylorseer"], SPEED_ENGINE] = Field(
        "off", description="cache-dit step caching: off, dbcache, or dbcache + taylorseer"
    )
    step_cache_preset: Annotated[Literal["slow", "medium", "fast", "ultra"] | None, SPEED_ENGINE] = Field(
        None, description="static step mask from cache-dit's policies for the step count"
    )
    step_cache_mask: Annotated[str | None, SPEED_ENGINE] = Field(
        None, description="explicit step mask, one digit per step: 1 compute, 0 cache (11101001)"
    )
    step_cache_policy: Annotated[Literal["static", "dynamic"], SPEED_ENGINE] = Field(
        "static", description="masked steps: static always reuse, dynamic ask the threshold"
    )
    cache_dit_fn: Annotated[int, SPEED_ENGINE] = Field(
        1, ge=0, description="DBCache: first blocks always computed (Fn)")
    cache_dit_bn: Annotated[int, SPEED_ENGINE] = Field(
        0, ge=0, description="DBCache: last blocks always computed (Bn)")
    cache_dit_warmup: Annotated[int, SPEED_ENGINE] = Field(
        2, ge=0, description="DBCache: steps computed before caching")
    cache_dit_rdt: Annotated[float, SPEED_ENGINE] = Field(
        0.08, ge=0.0, description="DBCache: residual-diff threshold (higher caches more)"
    )
    cache_dit_max_cached: Annotated[int, SPEED_ENGINE] = Field(
        -1, ge=-1, description="most cached steps (-1: no limit)")
    cache_dit_mc: Annotated[int, SPEED_ENGINE] = Field(
        -1, ge=-1, description="most consecutive cached steps (-1: no limit)"
    )
    cache_dit_taylorseer: Annotated[bool, SPEED_ENGINE] = Field(
        False, description="dbcache plus the TaylorSeer calibrator")
    cache_dit_ts_order: Annotated[int, SPEED_ENGINE] = Field(
        1, ge=1, le=4, description="TaylorSeer order")
    attention: Annotated[Literal["auto", "native", "flash", "_flash_3", "sage", "xformers"], SPEED_ENGINE] = Field(
        "auto", description="attention kernel; auto: the best exact one installed for the device"
    )
    compile: Annotated[bool, SPEED_ENGINE] = Field(
        False, description="torch.compile the repeated transformer blocks")
    compile_mode: Annotated[Literal[
        "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"
    ], SPEED_ENGINE] = Field("default", description="torch.compile mode for --compile")
    # server
    host: Annotated[str, SERVER] = Field("127.0.0.1", description="address the server binds")
    port: Annotated[int, SERVER] = Field(8000, description="port the server binds")
    api_key: Annotated[str | None, SERVER] = Field(
        None, description="Bearer key required by the server when set: 1-512 printable ASCII "
        "characters, no spaces")
    public_url: Annotated[str | None, SERVER] = Field(
        None, description="base of the server's links (response_format url), e.g. "
        "https://img.example.com; unset: the request's Host"
    )
    cors_origins: Annotated[list[str], NoDecode, SERVER] = Field(
        default_factory=list, description="origins CORS allows, e.g. https://a.example (none: off)"
    )
    queue_depth: Annotated[int, SERVER] = Field(
        16, ge=1, description="most jobs waiting in the server queue (more: 429)")
    request_timeout_s: Annotated[float, SERVER] = Field(
        600.0, gt=0, description="a server job's limit, queue wait included")
    shutdown_grace_s: Annotated[float, SERVER] = Field(
        10.0, ge=0, description="on shutdown, how long a running job may finish")
    max_upload_mb: Annotated[float, LIMITS] = Field(
        20.0, gt=0, description="largest upload (image edits, PNG drop) in MiB")
    max_steps: Annotated[int, LIMITS] = Field(
        MAX_STEPS, ge=1, le=MAX_STEPS, description="most DiT passes a request may ask")
    preview_every: Annotated[int, SERVER] = Field(
        2, ge=0, description="server: a latent preview every N steps (0: none)")
    max_event_streams: Annotated[int, SERVER] = Field(
        256, ge=1, description="server: most job event streams (SSE) open at once (more: 429)")
    pool_memory: Annotated[str | None, SERVER] = Field(
        None, description="server with [models.*]: memory its loaded models may hold, in "
        "bytes (24G) or a fraction of the device's (0.8); past it the least recently used "
        "idle model is evicted (unset: no limit)")
    server: Annotated[str, SPEED] = Field(
        "auto", pattern=r"^(auto|off|https?://\S+)$",
        description="zturbo generate: auto (a running zturbo serve with the same model), "
                    "off, or a server URL")
    state_backend: Annotated[Literal["local", "redis"], SERVER] = Field(
        "local", description="server jobs, events, images, history: local (SQLite + files) or "
        "redis (shared by every ingress; needs state_redis_url or redis_url)")
    state_redis_url: Annotated[str | None, SERVER] = Field(
        None, description="state_backend redis: the Redis for jobs, events, images and history "
        "(maxmemory-policy noeviction, checked at start-up); unset: redis_url")
    state_lease_s: Annotated[float, SERVER] = Field(
        15.0, gt=0, description="redis state: an ingress silent this long is dead; its jobs end")
    # image side and weights (docs/knobs.md)
    strength: Annotated[float, IMAGE] = Field(
        0.6, description="default img2img/inpaint strength (share of steps run)")
    loras: Annotated[list[str], NoDecode, WEIGHTS_ENGINE] = Field(
        default_factory=list,
        validation_alias=AliasChoices("ZTURBO_FUSED_LORAS", "ZTURBO_LORAS", "fused_loras"),
        description="LoRA files whose weights are fused into the transformer at load, "
        "PATH[:SCALE], comma-separated (also fused_loras / ZTURBO_FUSED_LORAS; loras is the "
        "old name); per-request adapters come from lora_dirs instead"
    )
    lora_dirs: Annotated[list[str], NoDecode, WEIGHTS] = Field(
        default_factory=list, description="folders LoRA adapters are picked from by name, per "
        "request (the request's loras, zturbo generate --adapter)"
    )
    lora_partial: Annotated[bool, WEIGHTS_ENGINE] = Field(
        False, description="apply a LoRA whose keys do not all fit, skipping (and reporting) "
        "the rest; off: such a file is refused with the keys listed"
    )
    transformer_file: Annotated[str | None, WEIGHTS_ENGINE] = Field(
        None, description="single-file transformer (.gguf or .safetensors) over the base model's"
    )
    controlnet: Annotated[str | None, WEIGHTS_ENGINE] = Field(
        None, description="ControlNet-Union loaded beside the model: a diffusers folder or "
        "the single .safetensors file of the release (requests then take a control image)"
    )
    text_encoder_quant: Annotated[Literal["none", "int8", "auto", "8bit", "4bit"],
                                  WEIGHTS_MEASURED] = Field(
        "none", description="text-encoder quantisation: int8 (torchao weight-only, CPU and "
        "CUDA), auto (int8 where the memory planner finds it faster within the budget), "
        "8bit or 4bit (bitsandbytes, CUDA only, a model folder)"
    )
    memory_plan: Annotated[Literal["auto", "resident", "encoder-swap", "dit-swap", "group"],
                           WEIGHTS_MEASURED] = Field(
        "auto", description="where the weights live: resident (all on the device), "
        "encoder-swap (the text encoder streams in to encode), dit-swap (the DiT streams in "
        "block by block at every pass), group (both stream); auto: the fastest whose "
        "predicted peak fits vram_budget")
    vram_budget: Annotated[str | None, WEIGHTS_ENGINE] = Field(
        None, description="device memory the memory plan may use, e.g. 8G (default: the "
        "device's free memory at load; on the CPU, auto is resident)")
    offload: Annotated[Literal["none", "model", "sequential"], WEIGHTS_ENGINE] = Field(
        "none", description="CPU offload: model (whole components) or sequential (layers)"
    )
    text_encoder_device: Annotated[str | None, WEIGHTS_ENGINE] = Field(
        None, description="text encoder device (default: device)")
    vae_device: Annotated[str | None, WEIGHTS_ENGINE] = Field(
        None, description="VAE device (default: device)")
    vae_tiling_pixels: Annotated[int, WEIGHTS] = Field(
        2048 * 2048, description="tile the VAE automatically above this many pixels (0: never)"
    )
    vae_tile_size: Annotated[int, WEIGHTS_DEFAULT] = Field(
        512, description="VAE tile size in pixels")
    vae_tile_overlap: Annotated[float, WEIGHTS_DEFAULT] = Field(
        0.25, description="VAE tile overlap, a fraction of a tile")

    @field_validator("teleport_store_steps", "slg_layers", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [ascii_int(v, "a list item") for v in value.replace(" ", "").split(",") if v]
        return value

    @field_validator("vram_budget", "pool_memory")
    @classmethod
    def _memory_size(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not (info.field_name == "pool_memory" and _fraction(value)):
            try:
                parse_bytes(value)
            except ZTurboError as exc:
                raise ValueError(str(exc)) from None
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

    @field_validator("api_key")
    @classmethod
    def _api_key(cls, value: str | None) -> str | None:
        if not value:
            return None  # empty: no key
        if not API_KEY.fullmatch(value):
            raise ValueError("api_key must be 1-512 printable ASCII characters without spaces "
                             "(it travels in an HTTP header)")  # never echo a secret
        return value

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

    @field_validator("models", mode="before")
    @classmethod
    def _model_tables(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        for name, table in value.items():
            if not MODEL_NAME.fullmatch(str(name)):
                raise ValueError(f"model name {name!r}: 1-64 letters, digits, '.', '_' or '-'")
            if not isinstance(table, dict):
                raise ValueError(f"[models.{name}] must be a table with a source")
            unknown = sorted(set(table) - set(model_keys()))
            if unknown:
                raise ValueError(f"unknown key(s) in [models.{name}]: "
                                 f"{', '.join(_did_you_mean(k, model_keys()) for k in unknown)}")
            if not isinstance(table.get("source"), str) or not table["source"]:
                raise ValueError(f"[models.{name}] needs source = a Hub id, folder or demo name")
        return value

    @model_validator(mode="after")
    def _models_valid(self) -> Settings:
        if _NESTED.get():
            return self  # a model's own settings: its tables are not its own
        for name in self.models:
            self.model_settings(name)  # each model's settings are checked now, not on load
        return self

    def default_model(self) -> str:
        """The name of the model a request without one gets: ``model`` when it names a
        table (or no table exists: the single model); the first table when ``model`` was
        left at its default; else ``model`` itself, a source served beside the tables."""
        if not self.models or self.model in self.models:
            return self.model
        if "model" not in self.model_fields_set:
            return next(iter(self.models))
        return self.model

    def model_names(self) -> list[str]:
        """Every model this process may serve, the default first."""
        default = self.default_model()
        return [default, *(name for name in self.models if name != default)]

    def model_settings(self, name: str) -> Settings:
        """The settings of model ``name``: these ones with its table's keys over them
        (``source`` as ``model``), validated like any other. The default model's when
        ``name`` is not a table (it then is the ``model`` setting itself)."""
        table = self.models.get(name)
        if table is None:
            return self
        # only what was set here is given: the rest stays unset, so a model's own defaults
        # (config.model_defaults) may still fill it
        values = self.model_dump(include=self.model_fields_set - {MODELS})
        values.update({k: v for k, v in table.items() if k != "source"}, model=table["source"])
        layer, nested = _CONFIG_LAYER.set({}), _NESTED.set(True)  # these values only
        try:
            child = Settings(**values)
        except ValidationError as exc:
            raise ValueError(f"[models.{name}] {first_error(exc)}") from None
        finally:
            _CONFIG_LAYER.reset(layer)
            _NESTED.reset(nested)
        return child.model_copy(update={MODELS: {}})

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


# Settings whose values are never printed (``zturbo config`` shows *** instead).
SECRET_SETTINGS = ("api_key", "cache_secret")

# The config-file layer of the settings being built (set by load_settings, read by the source).
_CONFIG_LAYER: ContextVar[dict[str, Any]] = ContextVar("_CONFIG_LAYER", default={})
# True while one named model's settings are built (Settings.model_settings)
_NESTED: ContextVar[bool] = ContextVar("_NESTED", default=False)


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
    fields = set(Settings.model_fields) - {MODELS}
    for table, values in data.items():
        if not isinstance(values, dict):
            raise ZTurboError(f"{path}: top-level key {table!r} must be a table like [default]")
        if table == MODELS:
            continue  # [models.NAME] tables: checked by the models setting
        if MODELS in values:
            raise ZTurboError(f"{path}: [{table}] cannot hold models: name each model in "
                              f"its own [models.NAME] table")
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ZTurboError(f"{path}: unknown key(s) in [{table}]: "
                              f"{', '.join(map(_did_you_mean, unknown))}")
    return data


def _did_you_mean(key: str, known: Any = None) -> str:
    """``stpes (did you mean steps?)``: an unknown key with the closest setting's name."""
    close = difflib.get_close_matches(key, list(known or Settings.model_fields), n=1,
                                      cutoff=0.6)
    return f"{key} (did you mean {close[0]}?)" if close else key


def _fraction(text: str) -> bool:
    """``0.8``: a share of the device's memory (pool_memory), not a number of bytes."""
    try:
        return 0 < float(text) <= 1
    except ValueError:
        return False


def model_keys() -> tuple[str, ...]:
    """The keys a ``[models.NAME]`` table may hold: ``source``, the settings that decide
    the engine (dtype, device, fused LoRAs, transformer file...) and the request defaults
    (steps, guidance...)."""
    engine = [f for f in fields_where(Settings, engine=True) if f != "model"]
    return ("source", *engine, *fields_where(Settings, request=True), "strength")


def load_settings(
    profile: str | None = None, flags: dict[str, Any] | None = None, path: Path | None = None
) -> tuple[Settings, dict[str, str]]:
    """Settings from every layer, and where each value came from (for ``zturbo config show``)."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    path = path or config_path()
    tables = read_config(path)
    profile = profile or os.environ.get("ZTURBO_PROFILE")
    if profile == MODELS:
        raise ZTurboError(f"{MODELS!r} is no profile: it holds the [models.NAME] tables")
    if profile and profile != "default" and profile not in tables:
        known = ", ".join(t for t in tables if t not in ("default", MODELS)) or "none"
        raise ZTurboError(f"unknown profile {profile!r} (profiles in {path}: {known})")
    layer = {**tables.get("default", {}), **(tables.get(profile, {}) if profile else {})}
    if tables.get(MODELS):
        layer[MODELS] = tables[MODELS]
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
        elif name == MODELS and tables.get(MODELS):
            sources[name] = f"{path.name} [{MODELS}.*]"
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
