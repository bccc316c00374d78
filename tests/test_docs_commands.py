"""Docs that run: every `vigil ...` command written in the README and docs/ names commands and options the CLI
has. Inline code spans and lines of fenced code blocks are read; each subcommand (``a|b`` alternatives each) must
exist and each ``--option`` must belong to the command it follows, so a renamed option cannot leave the docs
behind."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from vigil.cli import cli

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md")), REPO / "dashboards" / "README.md"]
OPTION = re.compile(r"^--[a-z][a-z0-9-]*")


def _snippets() -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for path in DOCS:
        fenced = False
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.lstrip().startswith("```"):
                fenced = not fenced
                continue
            if fenced and line.strip().startswith("vigil "):
                out.append((path.name, line.strip().split("#")[0]))
            if not fenced:
                out += [(path.name, m) for m in re.findall(r"`(vigil [^`]+)`", line)]
    return out


SNIPPETS = _snippets()


def _options(cmd: click.Command) -> set[str]:
    """The command's options, with click's own ``--help`` (every command has it; it is not in ``params``)."""
    return {o for p in cmd.params if isinstance(p, click.Option) for o in (*p.opts, *p.secondary_opts)} | set(
        cmd.get_help_option_names(click.Context(cmd))
    )


def check(snippet: str) -> list[str]:
    """Problems with one snippet (empty: it names real commands and options)."""
    cmd: click.Command = cli
    problems: list[str] = []
    takes_value = False  # the previous word was an option that takes a value (`--log-format json`)
    for word in snippet.replace("\\|", "|").replace("[", " ").replace("]", " ").split()[1:]:
        m = OPTION.match(word)
        if m:
            if m.group(0) not in _options(cmd):
                problems.append(f"{m.group(0)} is not an option of `{cmd.name}`")
            opt = next((p for p in cmd.params if isinstance(p, click.Option) and m.group(0) in p.opts), None)
            takes_value = opt is not None and not opt.is_flag and not opt.count and "=" not in word
            continue
        if takes_value:
            takes_value = False
            continue
        if isinstance(cmd, click.Group) and re.fullmatch(r"[a-z][a-z0-9-]*(\|[a-z][a-z0-9-]*)*", word):
            names = word.split("|")
            missing = [n for n in names if n not in cmd.commands]
            if missing:
                problems.append(f"`{cmd.name}` has no command {missing}")
                break
            if len(names) > 1:  # alternatives: each exists; their options are not checked further
                break
            cmd = cmd.commands[names[0]]
    return problems


def test_docs_mention_commands() -> None:
    assert len(SNIPPETS) > 30
    assert {"README.md", "ingest.md"} <= {name for name, _ in SNIPPETS}


@pytest.mark.parametrize(("doc", "snippet"), SNIPPETS, ids=[f"{d}:{s[:60]}" for d, s in SNIPPETS])
def test_documented_command_exists(doc: str, snippet: str) -> None:
    assert check(snippet) == [], f"{doc}: {snippet}"


def test_the_check_catches_drift() -> None:
    assert check("vigil demand tail --ward W --nope") == ["--nope is not an option of `tail`"]
    assert check("vigil demand forecast") == ["`demand` has no command ['forecast']"]
    assert check("vigil demand run|tail|calibrate --alerts-only") == []
