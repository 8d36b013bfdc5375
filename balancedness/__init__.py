"""balancedness: SAM's implicit regularization of balancedness on scale-invariant problems.

Reference implementation of Li, Zhang, He, "Implicit Regularization of Sharpness-Aware Minimization
for Scale-Invariant Problems" (NeurIPS 2024). Balancedness is B = ½(‖x‖² − ‖y‖²) throughout
(spec §1.2); plots show 2|B| as the paper does.
"""

__version__ = "0.1.0"
