"""Mixed-precision plumbing shared by SAM and its helpers (fp16 + ``torch.amp.GradScaler``).

Two facts make SAM and BAR scaler-friendly without ever calling ``scaler.unscale_`` themselves (which may
run only once per optimizer step, and belongs to the descent pass):

* SAM's perturbation e = ρ g/‖g‖ (and ASAM's ρ w² g/‖|w| g‖) is homogeneous of degree 0 in g, so the
  scaled gradient S·g gives the same e as the unscaled one; nBAR's decision ‖g_A‖ ≥ ‖g_B‖ is likewise
  invariant to S (spec §4.5.6).
* An overflowed pass shows up as a non-finite gradient norm. Then nothing is written into the weights, and
  the gradients are filled with NaN so that ``scaler.step`` sees the overflow, skips the base step and
  ``scaler.update()`` lowers the scale — exactly as for a plain overflowed step.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["backward", "poison_grads_"]


def backward(loss: torch.Tensor, scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
    """``loss.backward()``, through ``scaler.scale`` when a scaler is given. Returns the detached loss."""
    (scaler.scale(loss) if scaler is not None else loss).backward()
    return loss.detach()


@torch.no_grad()
def poison_grads_(params: Iterable[torch.nn.Parameter]) -> None:
    """Set every gradient to NaN (creating missing ones), so that a GradScaler skips the coming step and
    lowers its scale."""
    for p in params:
        if p.grad is None:
            p.grad = torch.full_like(p, float("nan"))
        else:
            p.grad.fill_(float("nan"))
