"""The ``balancedness`` command line (typer). Exit codes: 0 ok, 1 a check failed, 2 bad usage.

Every command is a plain typed function in ``balancedness/commands/``; this module only registers them.
"""

from __future__ import annotations

import typer

from balancedness.commands import figures, finetune, sims
from balancedness.commands.common import Command

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="SAM's implicit regularization of balancedness: simulators, theory checks, figures, LoRA.",
)

app.command(cls=Command)(sims.check)
app.command(cls=Command)(sims.simulate)
app.command(cls=Command)(figures.figures)
app.command(cls=Command)(finetune.finetune)
app.command(cls=Command)(finetune.sweep)


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
