"""Write docs/cli.md, docs/configuration.md and the help spec (src/zturbo/cli/help_spec.json,
which `zturbo --help` is drawn from) from the code (run by `make docs`)."""

from pathlib import Path

from zturbo.cli import app, helpspec, helpview
from zturbo.cli.docs import render, render_settings
from zturbo.cli.root import command

docs = Path(__file__).resolve().parent.parent / "docs"
(docs / "cli.md").write_text(render(app))
(docs / "configuration.md").write_text(render_settings())
Path(helpview.SPEC).write_text(helpspec.render(command()))
print(f"wrote {docs / 'cli.md'}, {docs / 'configuration.md'} and {helpview.SPEC}")
