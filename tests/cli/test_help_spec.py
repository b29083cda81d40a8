"""``--help`` and ``--version`` answered before typer loads: the help spec is current, the
help drawn from it says what typer's help says, and everything else still goes to typer."""

from __future__ import annotations

import sys
from collections import Counter
from importlib.metadata import version

import pytest

from zturbo.cli import about, entry, helpspec, helpview
from zturbo.cli.root import command
from zturbo.config import Request
from zturbo.config.groups import flag_of

WIDE = 1000  # nothing wraps: the two drawings compare word for word


@pytest.fixture(scope="module")
def tree():
    return command()


@pytest.fixture(scope="module")
def spec():
    commands = helpview.load()
    assert commands is not None, "help_spec.json is missing: run `python scripts/gen_cli_docs.py`"
    return commands


def words(text: str) -> Counter:
    """The words of a help text, without the boxes' lines and corners."""
    return Counter(w for w in text.split() if w.strip("─│╭╮╰╯"))


def typer_help(tree, path: str, capsys, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", str(WIDE))
    capsys.readouterr()
    assert tree.main([*path.split(), "--help"], prog_name="zturbo", standalone_mode=False) == 0
    return capsys.readouterr().out


def test_help_spec_is_current(tree):
    with open(helpview.SPEC, encoding="utf-8") as file:
        committed = file.read()
    assert committed == helpspec.render(tree), "run `python scripts/gen_cli_docs.py`"


def test_every_command_has_the_words_of_typers_help(tree, spec, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", str(WIDE))
    for path in spec:
        fast, status = helpview.answer([*path.split(), "--help"], spec)
        assert status == 0
        assert words(fast) == words(typer_help(tree, path, capsys, monkeypatch)), path


def test_generate_help_lists_every_request_option(spec, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    text, _ = helpview.answer(["generate", "--help"], spec)
    flat = " ".join(text.replace("│", " ").split())
    named = [name for name in Request.model_fields if flag_of(Request, name)]
    assert len(named) > 30
    for name in named:
        flag = flag_of(Request, name)
        for decl in flag.decls(name):
            for option in decl.split("/"):
                assert f" {option} " in f" {flat} ".replace(",", " "), (name, option)
        assert " ".join(flag.help.split()[:4]) in flat, name
    assert max(len(line) for line in text.splitlines()) <= 80


def test_help_wraps_to_the_terminal_and_keeps_long_names_readable(spec, monkeypatch):
    shown = {}
    for columns in (60, 120):
        monkeypatch.setenv("COLUMNS", str(columns))
        shown[columns], _ = helpview.answer(["serve", "--help"], spec)
        boxed = [line for line in shown[columns].splitlines() if line.startswith("│")]
        assert boxed and all(len(line) == columns for line in boxed if line.endswith("│"))
    # at 60 the names and types leave too little room beside them: the help goes below
    assert "│ --replicas  <int range> [x>=1]" in shown[60]
    assert "│ --replicas  <int range> [x>=1]" not in shown[120]


def test_help_on_a_stream_without_box_characters_draws_them_in_ascii(spec):
    text, _ = helpview.answer(["cache", "--help"], spec)
    ascii_text = helpview.printable(text, "ascii")
    assert "+- Options -" in ascii_text and "| --help " in ascii_text
    assert ascii_text == text.translate(helpview.ASCII_BOXES)  # nothing else changed
    assert helpview.printable(text, "utf-8") is text


def test_version_is_the_typer_answer_with_the_package_version(tree, capsys):
    text, status = entry.fast_answer(["--version"])
    assert status == 0 and text.splitlines()[0] == f"zturbo {version('zturbo')}"
    assert tree.main(["--version"], prog_name="zturbo", standalone_mode=False) == 0
    assert capsys.readouterr().out == text


def test_versions_read_from_dist_info_agree_with_importlib_metadata():
    for package in (*about.PACKAGES, "pytest", "typing-extensions", "Pydantic.Settings"):
        assert about.dist_info_version(package) == version(package), package
    assert about.installed("no-such-package-anywhere") == "not installed"


def test_a_group_alone_is_its_help_with_status_2(spec, tree, capsys):
    text, status = helpview.answer(["cache"], spec)
    assert status == 2 and "Usage: zturbo cache [OPTIONS] COMMAND [ARGS]..." in text
    assert helpview.answer([], spec)[1] == 2  # bare `zturbo`
    assert helpview.answer(["generate"], spec) is None  # a command alone runs it


def test_a_missing_or_foreign_spec_leaves_help_to_typer(tmp_path):
    assert helpview.load(str(tmp_path / "absent.json")) is None
    (tmp_path / "other.json").write_text('{"format": 0, "commands": {}}')
    assert helpview.load(str(tmp_path / "other.json")) is None


@pytest.mark.parametrize("argv", [["generate", "--bogus", "--help"], ["bogus", "--help"],
                                  ["-h"], ["generate", "a cat", "--help"],
                                  ["--help", "generate"], ["--version", "generate"]])
def test_anything_but_a_plain_help_or_version_goes_to_typer(argv):
    assert entry.fast_answer(argv) is None


@pytest.mark.parametrize(("argv", "message"), [
    (["bogus"], "zturbo: error: No such command 'bogus'."),
    (["generate", "--bogus", "--help"], "zturbo: error: No such option: --bogus"),
    (["-h"], "zturbo: error: No such option: -h")])
def test_bad_usage_is_still_typers_one_line_error(argv, message, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["zturbo", *argv])
    with pytest.raises(SystemExit) as stop:
        entry.main()
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith(message)
