"""What every command shares: the consoles, usage errors (exit 2), and option parsing helpers."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import NoReturn

import typer
import typer.core
from rich.console import Console
from rich.markup import escape

from balancedness.validation import InvalidValue

__all__ = [
    "Command",
    "console",
    "err_console",
    "fail_usage",
    "split_values",
    "ensure_writable_folder",
    "ensure_writable_file",
]

console = Console()
err_console = Console(stderr=True)


class _FlagOption(typer.core.TyperOption):
    """An option whose rich help shows a value placeholder only if it takes a value.

    typer 0.29's rich help asks every option for its type (``--quick <bool>``, ``--help <bool>``); its plain
    help already leaves flags and counters bare, and so does this.
    """

    def display_type_rich(self, ctx: typer.core._click.Context) -> str | None:
        return None if self.is_flag or self.count else super().display_type_rich(ctx)


class Command(typer.core.TyperCommand):
    """The class of every ``balancedness`` command (``app.command(cls=Command)``): flags read as flags in
    ``--help``, the help option included (it is made per call, so the options are retyped where click lists them).
    """

    def get_params(self, ctx: typer.core._click.Context) -> list[typer.core._click.Parameter]:
        params = super().get_params(ctx)
        for param in params:
            if type(param) is typer.core.TyperOption:
                param.__class__ = _FlagOption  # same fields, one method changed
        return params


def fail_usage(error: str | Exception) -> NoReturn:
    """Print a clear error and exit with code 2 (bad usage), before any work starts.

    An :class:`~balancedness.validation.InvalidValue` from the library names a Python parameter; here it is
    re-worded with the command-line flag (``rho`` → ``--rho``).
    """
    message = error.as_flag() if isinstance(error, InvalidValue) else str(error)
    err_console.print(f"[bold red]Error:[/] {escape(message)}")  # messages may hold [brackets]
    raise typer.Exit(code=2)


def split_values(values: list[str] | None) -> tuple[str, ...]:
    """Repeatable and comma-separated options, flattened: ``-t a,b -t c`` → ``(a, b, c)``."""
    return tuple(v.strip() for item in values or [] for v in item.split(",") if v.strip())


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def ensure_writable_folder(path: Path, flag: str) -> None:
    """ValueError unless ``path`` is (or can be created as) a folder this process can write in."""
    path = Path(path).expanduser()
    existing = _nearest_existing(path.absolute())
    if not existing.is_dir():
        what = "is a file" if existing == path.absolute() else f"cannot be created: {str(existing)!r} is a file"
        raise ValueError(f"{flag} {str(path)!r} {what}; expected a folder")
    try:  # try it: os.access says yes to root, even under /proc or on a read-only mount
        os.rmdir(tempfile.mkdtemp(prefix=".write-probe-", dir=existing))
    except OSError as exc:
        raise ValueError(
            f"{flag} {str(path)!r} is not writable: nothing can be created in {str(existing)!r} ({exc.strerror})"
        ) from None


def ensure_writable_file(path: Path, flag: str) -> None:
    """ValueError unless ``path`` can be written as a file (its folder exists or can be created, writable)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ValueError(f"{flag} {str(path)!r} is a folder; expected a file name")
    if path.exists():
        try:
            open(path, "ab").close()  # opened for appending, nothing written: the file is unchanged
        except OSError as exc:
            raise ValueError(f"{flag} {str(path)!r} is not writable ({exc.strerror})") from None
    ensure_writable_folder(path.parent, f"the folder of {flag}")
