"""Write docs/cli.md and docs/configuration.md from the code (run by `make docs`)."""

from pathlib import Path

from zturbo.cli import app
from zturbo.cli.docs import render, render_settings

docs = Path(__file__).resolve().parent.parent / "docs"
(docs / "cli.md").write_text(render(app))
(docs / "configuration.md").write_text(render_settings())
print(f"wrote {docs / 'cli.md'} and {docs / 'configuration.md'}")
