"""Prompt templates: small TOML files (name, description, body with ``{prompt}``).

Shipped ones live in the package (``zturbo/templates/*.toml``); a user's live in the
templates dir (setting ``templates_dir``, default ``<state>/templates``) and override a
shipped one of the same name. A Request keeps the resolved body, so an image replays with
the template it was made with even after the file changes, and the embedding key sees it.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zturbo.errors import ZTurboError

if TYPE_CHECKING:  # config imports this module (make_request resolves templates)
    from zturbo.config import Settings

MAX_TEMPLATE_CHARS = 4000
MAX_TEMPLATE_FILE_BYTES = 16_384
MAX_USER_TEMPLATES = 1000


def apply_template(body: str, prompt: str) -> str:
    """``body`` with ``{prompt}`` replaced (plain replace: other braces stay as written)."""
    return body.replace("{prompt}", prompt)


@dataclass(frozen=True)
class Template:
    name: str
    description: str
    body: str
    source: str  # "builtin" or the file's path

    def apply(self, prompt: str) -> str:
        return apply_template(self.body, prompt)


def parse(text: str, source: str) -> Template:
    """A Template from TOML text, or a ZTurboError naming ``source`` and what is wrong."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ZTurboError(f"template {source}: not valid TOML: {exc}") from None
    fields: dict[str, Any] = {k: data.get(k) for k in ("name", "description", "body")}
    missing = [k for k, v in fields.items() if not isinstance(v, str) or not v.strip()]
    if missing:
        raise ZTurboError(f"template {source}: needs string key(s) {', '.join(missing)}")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ZTurboError(f"template {source}: unknown key(s) {', '.join(unknown)}")
    if "{prompt}" not in fields["body"]:
        raise ZTurboError(f"template {source}: the body must contain {{prompt}}")
    if len(fields["body"]) > MAX_TEMPLATE_CHARS:
        raise ZTurboError(f"template {source}: the body is over {MAX_TEMPLATE_CHARS} characters")
    name = fields["name"].strip()
    if not name.replace("-", "").replace("_", "").isalnum() or len(name) > 100:
        raise ZTurboError(f"template {source}: name {name!r} must be letters, digits, - or _")
    return Template(name, fields["description"].strip(), fields["body"].strip(), source)


def builtin() -> dict[str, Template]:
    """The templates shipped in the package."""
    found = {}
    for entry in sorted(files("zturbo").joinpath("templates").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            template = parse(entry.read_text(), "builtin")
            found[template.name] = template
    return found


def user(folder: Path) -> dict[str, Template]:
    """The templates in a user's folder (absent folder: none)."""
    if not folder.is_dir():
        return {}
    paths = sorted(folder.glob("*.toml"))[:MAX_USER_TEMPLATES]
    found = {}
    for path in paths:
        if path.stat().st_size > MAX_TEMPLATE_FILE_BYTES:
            raise ZTurboError(f"template {path}: larger than {MAX_TEMPLATE_FILE_BYTES} bytes")
        template = parse(path.read_text(), str(path))
        found[template.name] = template
    return found


def available(settings: Settings) -> dict[str, Template]:
    """Every template by name; a user's template overrides a shipped one of the same name."""
    return {**builtin(), **user(settings.templates)}


def find(name: str, settings: Settings) -> Template:
    """The template called ``name``, or an error listing the closest names."""
    templates = available(settings)
    if name in templates:
        return templates[name]
    close = difflib.get_close_matches(name, list(templates), n=4, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else "see `zturbo templates list`"
    raise ZTurboError(f"unknown template {name!r}: {hint}")
