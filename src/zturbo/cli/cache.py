"""``zturbo cache stats | clear | verify``: look at and tidy the cache tiers.

Each command builds the tiers from the settings like a generation would. The memory tier
belongs to one process, so here it is always empty; the counters come from the disk
index, where every process adds its own.

(No ``from __future__ import annotations`` here: typer must see ``profile_option``
itself, not its name.)
"""

import json
from collections.abc import Callable
from typing import Annotated, Any

import typer

from zturbo.caches.base import KINDS, check_kind
from zturbo.cli.options import Profile, friendly_errors
from zturbo.config import load_settings
from zturbo.errors import ZTurboError


def cache_app(friendly_errors: Callable, profile_option: Any) -> typer.Typer:
    """The ``cache`` sub-app; commands report ZTurboError through ``friendly_errors``."""
    app = typer.Typer(help="Inspect, clear and verify the caches (memory, disk, Redis).",
                      no_args_is_help=True)

    @app.command("stats")
    @friendly_errors
    def stats(
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
        profile: profile_option = None,
    ) -> None:
        """Hits, misses and time saved per kind; entries, bytes and evictions per tier."""
        data = _with_cache(profile, lambda cache: cache.stats())
        typer.echo(json.dumps(data, indent=2) if as_json else render_stats(data))

    @app.command("clear")
    @friendly_errors
    def clear(
        kind: Annotated[str | None, typer.Option("--kind", help=f"Only this kind: {', '.join(KINDS)}.")] = None,
        tier: Annotated[str | None, typer.Option("--tier", help="Only this tier: memory, disk or redis.")] = None,
        profile: profile_option = None,
    ) -> None:
        """Remove cached entries (all of them unless --kind / --tier narrow it)."""
        if kind is not None:
            check_kind(kind)  # an unknown kind is an error, not "removed 0"
        removed = _with_cache(profile, lambda cache: cache.clear(kind=kind, tier=tier))
        typer.echo(f"removed {removed} entries"
                   f"{f' of kind {kind}' if kind else ''}{f' from {tier}' if tier else ''}")

    @app.command("verify")
    @friendly_errors
    def verify(profile: profile_option = None) -> None:
        """Check every disk entry's size and checksum; remove bad entries and orphaned files.
        Exit status 1 when any were found, 0 when all was well."""
        results = _with_cache(profile, lambda cache: cache.verify())
        if not results:
            raise ZTurboError("no disk cache tier is configured (disk_cache_mb = 0): "
                              "nothing to verify")
        for name, r in results.items():
            typer.echo(f"{name}: checked {r['checked']}, ok {r['ok']}, removed {r['removed']} "
                       f"bad, removed {r['orphans']} orphaned files")
        if any(r["removed"] or r["orphans"] for r in results.values()):
            raise typer.Exit(1)  # damage was found (and removed): scripts and cron see it

    return app


def _with_cache(profile: str | None, action: Callable) -> Any:
    """Run ``action`` on the configured tiers, then close them (flushing counters)."""
    from zturbo.caches.tiers import (
        build_cache,  # lazy: torch (entries are safetensors); keeps CLI start fast
    )

    settings, _ = load_settings(profile)
    cache = build_cache(settings)
    try:
        return action(cache)
    finally:
        cache.close()


def render_stats(data: dict) -> str:
    """``TieredCache.stats()`` as two plain-text tables: kinds, then tiers."""
    lines = [f"{'kind':12} {'hits':>8} {'misses':>8} {'hit rate':>9} {'saved':>10}   "
             f"by tier (hits/misses)   [counters: {data['scope']}]"]
    for kind, k in data["kinds"].items():
        looked = k["hits"] + k["misses"]
        rate = f"{100 * k['hits'] / looked:.1f}%" if looked else "-"
        tiers = "  ".join(f"{t} {v['hits']}/{v['misses']}" for t, v in k["tiers"].items())
        lines.append(f"{kind:12} {k['hits']:>8} {k['misses']:>8} {rate:>9} "
                     f"{k['saved_s']:>9.2f}s   {tiers}")
    if not data["kinds"]:
        lines.append("(no lookups recorded yet)")
    lines.append(f"\n{'tier':8} {'entries':>9} {'bytes':>14} {'cap':>14} {'evictions':>10} "
                 f"{'errors':>7}  where")
    for name, t in data["tiers"].items():
        where = t.get("path") or t.get("url") or "this process only"
        if name == "redis" and not t["up"]:
            where += " (unreachable)"
        lines.append(f"{name:8} {_n(t['entries']):>9} {_n(t['bytes']):>14} "
                     f"{_n(t.get('max_bytes')):>14} {_n(t['evictions']):>10} {t['errors']:>7}  "
                     f"{where}")
    if not data["tiers"]:
        lines.append("(every tier is off: memory_cache_mb = disk_cache_mb = 0, no redis_url)")
    return "\n".join(lines)


def _n(value: Any) -> str:
    return "-" if value is None else str(value)


app = cache_app(friendly_errors, Profile)
