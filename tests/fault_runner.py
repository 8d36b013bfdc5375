"""Run ``balancedness finetune`` with one injected fault: the helper behind tests/test_faults.py.

    python tests/fault_runner.py FAULT STEP -- finetune options...

FAULT is one of
* ``sigint``: one SIGINT in the middle of optimizer step STEP (after its backward, before its update);
* ``double-sigint``: two SIGINTs in the middle of step STEP (the second aborts the step at once);
* ``sigint-in-save``: a SIGINT in the middle of step STEP, a second while the checkpoint is being written;
* ``sigkill-in-save``: SIGKILL while checkpoint-STEP is being written (``--save-every`` must reach STEP);
* ``sigkill-in-eval``: SIGKILL when the final evaluation starts (after the last training step);
* ``sigkill-before-marker``: SIGKILL as the ``COMPLETE`` marker of checkpoint-STEP is about to be written
  (every other file of it written, the Trainer's own checkpoint rotation, had it any, done);
* ``pause``: at step STEP, write this process's id to the file ``$FAULT_MARKER`` and wait to be killed;
* ``none``: no fault.

The signals are real (``os.kill`` on this process); the hooks only choose the moment.
"""

from __future__ import annotations

import os
import signal
import sys


def main(argv: list[str] | None = None) -> None:
    """Run ``FAULT STEP -- finetune options`` (``argv``, by default the command line's) in this process."""
    argv = sys.argv[1:] if argv is None else argv
    fault, step = argv[0], int(argv[1])
    args = argv[argv.index("--") + 1 :]
    import torch

    from balancedness.optim.callbacks import BalancednessCallback

    original_hook = BalancednessCallback.on_pre_optimizer_step
    original_save = torch.save

    def hook(self, args_, trainer_state, control, **kw):
        if trainer_state.global_step + 1 == step and fault == "pause":
            with open(os.environ["FAULT_MARKER"], "w") as fh:
                fh.write(str(os.getpid()))
            while True:
                signal.pause()
        if trainer_state.global_step + 1 == step and fault in ("sigint", "double-sigint", "sigint-in-save"):
            os.kill(os.getpid(), signal.SIGINT)
            if fault == "double-sigint":
                os.kill(os.getpid(), signal.SIGINT)
        return original_hook(self, args_, trainer_state, control, **kw)

    def save(obj, f, *a, **kw):
        name = os.fspath(f) if isinstance(f, (str, os.PathLike)) else ""
        if name.endswith("optimizer.pt") and f"checkpoint-{step}" in name:
            if fault == "sigint-in-save":
                os.kill(os.getpid(), signal.SIGINT)
            if fault == "sigkill-in-save":
                with open(name, "wb") as fh:  # a torn file, as a kill during the write leaves it
                    fh.write(b"\x80\x02torn")
                os.kill(os.getpid(), signal.SIGKILL)
        return original_save(obj, f, *a, **kw)

    BalancednessCallback.on_pre_optimizer_step = hook
    torch.save = save
    if fault == "sigkill-before-marker":
        import balancedness.finetune.checkpoints as checkpoints

        original_write_text = checkpoints.write_text

        def write_text(path, text):
            if os.fspath(path).endswith(os.path.join(f"checkpoint-{step}", checkpoints.COMPLETE)):
                os.kill(os.getpid(), signal.SIGKILL)
            return original_write_text(path, text)

        checkpoints.write_text = write_text
    if fault == "sigkill-in-eval":
        import balancedness.finetune.tasks as tasks

        def evaluate(*a, **kw):
            os.kill(os.getpid(), signal.SIGKILL)

        tasks.evaluate = evaluate
    from balancedness.cli import app

    app(["finetune", *args], prog_name="balancedness")


if __name__ == "__main__":
    main()
