"""``--help`` of every command: a flag shows no value placeholder, an option that takes a value shows its own.

The commands are read from the typer app itself, so a command added to ``balancedness/cli.py`` is covered
without touching this file. What a placeholder would be is asked of typer (``TyperOption.display_type_rich``,
the method ``balancedness.commands.common`` overrides for flags), so the test follows typer's wording.
"""

from __future__ import annotations

import pytest
import typer.core
import typer.main
from typer.core import _click as click  # typer 0.29 ships its own click (its Context, not the click package's)
from typer.testing import CliRunner

from balancedness.cli import app

runner = CliRunner()
GROUP = typer.main.get_command(app)
COMMANDS = sorted(GROUP.commands)  # type: ignore[attr-defined]


def _rows(name: str) -> dict[str, str]:
    """The rows of ``balancedness NAME --help``'s option panels, by the option's first long name."""
    result = runner.invoke(app, [name, "--help"], env={"COLUMNS": "250", "TERMINAL_WIDTH": "250"})
    assert result.exit_code == 0, result.output
    rows = {}
    for line in result.output.splitlines():
        cells = line.strip("│ ").split()
        if cells and cells[0].startswith("--"):
            rows[cells[0].split(",")[0]] = line
    return rows


def _placeholder(param: typer.core.TyperOption, ctx: click.Context) -> str | None:
    """What typer itself would print as ``param``'s value placeholder (before our fix for flags)."""
    return typer.core.TyperOption.display_type_rich(param, ctx)


def test_the_app_has_the_commands_we_know():
    assert {"check", "simulate", "figures", "finetune", "sweep"} <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_help_shows_flags_as_flags(name):
    command = GROUP.commands[name]  # type: ignore[attr-defined]
    ctx = click.Context(command, info_name=name)
    rows = _rows(name)
    options = [p for p in command.get_params(ctx) if isinstance(p, typer.core.TyperOption) and not p.hidden]
    assert any(p.is_flag for p in options), "every command has at least --help"
    for param in options:
        row = rows[param.opts[0]]  # every option has a row
        placeholder = _placeholder(param, ctx)
        assert placeholder, param.opts
        after_name = row.split(param.opts[0], 1)[1]
        if param.is_flag or param.count:
            assert placeholder not in after_name, f"{name} {param.opts[0]} is a flag but shows {placeholder}"
        else:
            assert placeholder in after_name, f"{name} {param.opts[0]} takes a value but does not show {placeholder}"
