"""What a client may pick from: GET /api/loras (names in the configured ``lora_dirs``, each
with its report: layout, ranks, targets, keys not applied) and
GET /api/templates (the prompt templates with their bodies, for a preview).

Names only: no folder or file path of the server is ever sent; a request names a LoRA and
``make_request`` resolves it inside ``lora_dirs``.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from zturbo.engine import prompt_templates
from zturbo.engine.lora import describe_loras
from zturbo.server.state import state

router = APIRouter(tags=["page"])


@router.get("/api/loras")
def loras(request: Request):
    """The LoRA names a request may give in ``loras: [{"name", "scale"}]`` (sorted);
    ``configured`` is false when the server has no ``lora_dirs``. A plain ``def``: listing
    folders runs in the thread pool."""
    return lora_names(state(request).settings)


def lora_names(settings) -> dict:
    """``{configured, loras: [{name, report} | {name, error}]}``: the LoRAs in the settings'
    ``lora_dirs``, each with its report (``engine.lora_report``) or why it cannot be used."""
    dirs = settings.lora_dirs
    return {"configured": bool(dirs), "loras": describe_loras(dirs)}


@router.get("/api/templates")
def templates(request: Request):
    """Prompt templates by name: description, body (``{prompt}`` marks where the prompt
    goes) and whether it ships with zturbo (``builtin``) or is the user's (``user``)."""
    found = prompt_templates.available(state(request).settings).values()
    return {"templates": [{"name": t.name, "description": t.description, "body": t.body,
                           "source": "builtin" if t.source == "builtin" else "user"}
                          for t in found]}
