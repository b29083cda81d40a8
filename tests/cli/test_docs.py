from pathlib import Path

from zturbo.cli import app
from zturbo.cli.docs import render

ROOT = Path(__file__).resolve().parents[2]


def test_cli_docs_are_current():
    assert (ROOT / "docs" / "cli.md").read_text() == render(app), "run `make docs`"


def test_configuration_docs_are_current():
    from zturbo.cli.docs import render_settings
    from zturbo.config import Settings

    text = (ROOT / "docs" / "configuration.md").read_text()
    assert text == render_settings(), "run `make docs`"
    assert all(f"`{name}`" in text for name in Settings.model_fields)


def test_readme_quickstart_and_ci_use_the_same_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
