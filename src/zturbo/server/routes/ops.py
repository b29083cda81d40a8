"""Operations and page support: health, readiness, Prometheus metrics, cache stats, options."""

from __future__ import annotations

from typing import get_args

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from zturbo.config import ASPECTS, BUCKETS, DypeMethod, LongPromptMode
from zturbo.config import Request as GenRequest
from zturbo.config.request import CONTROL_SCALE, MAX_CONTROL_SCALE
from zturbo.engine import prompt_templates
from zturbo.engine.control_maps import CONTROL_TABLE
from zturbo.server.errors import RETRY_LOADING_S
from zturbo.server.metrics import cache_stats
from zturbo.server.state import ServerState, state

router = APIRouter(tags=["operations"])


@router.get("/api/health")
async def health():
    """Alive (no API key needed; HEAD too, for probes that send it)."""
    return {"status": "ok"}


@router.head("/api/health", include_in_schema=False)
async def health_head():
    return Response(status_code=200)


@router.get("/api/ready", responses={503: {"description": "not ready: {ready: false, error}",
                                                "content": {"application/json": {}}}})
async def ready(request: Request):
    """200 once the model is loaded and the worker runs; 503 (with the reason) before, when
    the job worker has stopped, while the shared state store (Redis) does not answer, and
    while history writes fail (disk full, a database locked past its busy timeout)."""
    answer = readiness(state(request))
    if not answer["ready"]:  # every reason may pass: ask again later
        return JSONResponse(answer, status_code=503,
                            headers={"Retry-After": str(RETRY_LOADING_S)})
    return answer


def readiness(st: ServerState) -> dict:
    """``{ready: true, model, fingerprint}``, or ``{ready: false, error}``. With several
    models: ready once the worker runs (the default's load ended either way)."""
    if not st.started or st.jobs.pool is None or (st.fingerprint is None and not st.several):
        return {"ready": False, "error": st.load_error or "loading the model"}
    down = st.jobs.worker_down() or st.jobs.store_down() or st.jobs.history_down()
    if down:
        return {"ready": False, "error": down}
    engine = st.engine
    return {"ready": True, "model": engine.spec if engine is not None else st.settings.model,
            "fingerprint": st.fingerprint}


@router.get("/metrics", response_class=Response)
async def metrics(request: Request):
    """Prometheus text format."""
    return Response(generate_latest(state(request).metrics.registry),
                    media_type=CONTENT_TYPE_LATEST)


@router.get("/api/cache/stats")
async def caches(request: Request):
    """The engine caches' counters per kind and tier (``available: false`` without caches)."""
    st = state(request)
    stats = cache_stats(st.pool.any_engine() if st.started else None)  # one stack per server
    if stats is None:
        return {"available": False, "kinds": {}, "tiers": {}}
    return {"available": True, **stats}


@router.get("/api/options")
async def options(request: Request):
    """What the web page needs: defaults, limits, aspects and buckets, templates, and the
    models (each with its state and its own defaults; the default model first)."""
    st = state(request)
    return {**page_options(st.settings), "models": model_options(st.pool)}


def model_options(pool) -> list[dict]:
    """Each model's record (``pool.state``) with the request defaults it gives."""
    return [{**pool.state(name), "defaults": defaults_of(pool.settings_of(name))}
            for name in pool.names()]


def defaults_of(s) -> dict:
    """The request defaults the page shows (a model's own, with [models.*])."""
    return {"width": s.width, "height": s.height, "steps": s.steps,
            "guidance": s.guidance, "shift": s.shift, "hidden_layer": s.hidden_layer,
            "long_prompt": s.long_prompt, "dype": s.dype, "slg_scale": s.slg_scale,
            "slg_layers": list(s.slg_layers), "slg_start": s.slg_start,
            "slg_stop": s.slg_stop}


def page_options(s) -> dict:
    """Defaults, choices, limits, aspects and buckets, templates (GET /api/options)."""
    return {
        "defaults": defaults_of(s),
        "choices": {"long_prompt": list(get_args(LongPromptMode)),
                    "dype": list(get_args(DypeMethod))},
        "limits": {"max_pixels": s.max_pixels, "max_steps": s.max_steps,
                   "max_images": s.max_images, "max_prompt_chars": s.max_prompt_chars,
                   "max_upload_mb": s.max_upload_mb},
        "aspects": list(ASPECTS),
        "buckets": {str(b): {a: list(size) for a, size in sizes.items()}
                    for b, sizes in BUCKETS.items()},
        "templates": templates(s),
        # Request's own defaults: what a copied command may leave out
        "request_defaults": GenRequest(prompt="-").model_dump(mode="json", exclude={"prompt"}),
        "preview_every": s.preview_every,
        # ControlNet: the map types (what each needs and feeds) and the strength's range
        "control": {"types": [{"name": name, "doc": entry.doc, "feeds": entry.feeds}
                              for name, entry in CONTROL_TABLE.items()],
                    "scale": CONTROL_SCALE, "max_scale": MAX_CONTROL_SCALE},
    }


def templates(settings) -> list[dict[str, str]]:
    """Prompt templates by name and description."""
    return [{"name": t.name, "description": t.description}
            for t in prompt_templates.available(settings).values()]
