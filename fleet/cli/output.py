"""Rendering: Rich tables for people, plain JSON for scripts, one-line messages on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import typer
from rich.console import Console
from rich.table import Table


def command_group(help_text: str) -> typer.Typer:
    """A Typer for one noun. Plain Click help and errors: the reason stays on one line."""
    return typer.Typer(help=help_text, no_args_is_help=True, rich_markup_mode=None,
                       pretty_exceptions_show_locals=False)


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC with a ``Z`` suffix, to the second (None stays None)."""
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def emit_json(value: Any) -> None:
    """Plain JSON on stdout, no markup: indented on a terminal, one compact line otherwise."""
    indent = 2 if sys.stdout.isatty() else None
    typer.echo(json.dumps(value, indent=indent))


PIPE_WIDTH = 250
"""Table width when stdout is not a terminal, so that piped rows are not folded."""


def stdout() -> Console:
    # Built per call: the stream can be swapped (pipes, tests) between commands.
    width = None if sys.stdout.isatty() else PIPE_WIDTH
    return Console(file=sys.stdout, highlight=False, soft_wrap=False, width=width)


def stderr() -> Console:
    return Console(file=sys.stderr, highlight=False)


def say(message: str) -> None:
    """A line for people on stdout (no Rich markup interpretation)."""
    typer.echo(message)


def note(message: str) -> None:
    """A line for people on stderr, keeping stdout clean for data."""
    typer.echo(message, err=True)


def fields(data: dict[str, object], *, keys: Iterable[str] | None = None) -> None:
    """``key: value`` lines, aligned, for a single object."""
    names = list(keys) if keys is not None else list(data)
    pad = max(len(k) for k in names) + 2
    for key in names:
        value = data[key]
        say(f"{key + ':':<{pad}}{'-' if value is None else value}")


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[object]],
          *, wide: Iterable[str] = ()) -> None:
    """Print a table; columns named in *wide* are folded rather than cut short."""
    folded = set(wide)
    grid = Table(title=title, title_justify="left", header_style="bold")
    for name in columns:
        grid.add_column(name, overflow="fold" if name in folded else "ellipsis",
                        no_wrap=name not in folded)
    count = 0
    for row in rows:
        grid.add_row(*("-" if cell is None else str(cell) for cell in row))
        count += 1
    if count == 0:
        say(f"no {title.lower() if title else 'rows'}")
        return
    stdout().print(grid)
