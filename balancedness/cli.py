"""The ``balancedness`` command line (typer). Exit codes: 0 ok, 1 a check failed, 2 bad usage.

Every command is a plain typed function in ``balancedness/commands/``; this module only registers them.
"""

from __future__ import annotations

import typer

from balancedness.commands import figures, finetune, sims

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="SAM's implicit regularization of balancedness: simulators, theory checks, figures, LoRA.")

app.command()(sims.check)
app.command()(sims.simulate)
app.command()(figures.figures)
app.command()(finetune.finetune)
app.command()(finetune.sweep)


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
