"""Balancedness, the gradient gap and the norms they are made of (spec §1.2), for batches of factor pairs (numpy).

B = ½(‖x‖² − ‖y‖²), and for layers B = Σ_l B_l with B_l = ½(‖X_l‖²_F − ‖Y_l‖²_F). The
figures plot 2|B| = |‖x‖² − ‖y‖²|, as the paper does. The torch versions for LoRA models are
``balancedness.optim.lora_balancedness`` and ``lora_grad_gap``.

Shapes: X (n, L, d1, r), Y (n, L, d2, r), a batch of n points with L layers of rank-r factors.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

#: An array of float64 values: the points, gradients and measurements of the simulators and the checks.
FloatArray = npt.NDArray[np.float64]
#: An array of integers (seeds, record steps, indices).
IntArray = npt.NDArray[np.int_]
#: A boolean mask.
BoolArray = npt.NDArray[np.bool_]


def sq_norms(Z: FloatArray) -> FloatArray:
    """‖Z_i‖² summed over all axes but the first, shape (n,)."""
    flat = Z.reshape(Z.shape[0], -1)
    out: FloatArray = np.einsum("ij,ij->i", flat, flat)  # einsum's stub returns Any
    return out


def layer_sq_norms(Z: FloatArray) -> FloatArray:
    """‖Z_l‖²_F per point and layer for Z of shape (n, L, d, r): shape (n, L)."""
    out: FloatArray = np.einsum("nlij,nlij->nl", Z, Z)
    return out


def global_norm(gX: FloatArray, gY: FloatArray) -> FloatArray:
    """‖g‖ = sqrt(Σ_l ‖g_{X_l}‖² + ‖g_{Y_l}‖²) per point, shape (n,): u_t⁻¹ of eqs. (4) and (22)."""
    return np.sqrt(sq_norms(gX) + sq_norms(gY))


def balancedness_layers(X: FloatArray, Y: FloatArray) -> FloatArray:
    """B_l = ½(‖X_l‖² − ‖Y_l‖²) for X (n, L, d1, r), Y (n, L, d2, r): shape (n, L)."""
    return 0.5 * (layer_sq_norms(X) - layer_sq_norms(Y))


def balancedness(X: FloatArray, Y: FloatArray) -> FloatArray:
    """B = Σ_l B_l, shape (n,)."""
    out: FloatArray = balancedness_layers(X, Y).sum(axis=1)
    return out


def grad_gap(gX: FloatArray, gY: FloatArray) -> FloatArray:
    """Σ_l ‖g_{X_l}‖² − ‖g_{Y_l}‖², shape (n,): the numerator of Thm 2 (5)."""
    return sq_norms(gX) - sq_norms(gY)
