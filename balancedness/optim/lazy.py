"""Trainer classes made on first use, so that the modules defining their mixins need torch alone.

``FlatLoRATrainer`` and ``BiLoRATrainer`` are a method's mixin on top of ``trainer.LoRATrainer`` (which imports
transformers). Their modules answer a lookup of the class through :func:`trainer_on_first_use` from their
``__getattr__``: the class is built once, stored in the module, and every later lookup finds it there.
"""

from __future__ import annotations

import sys
from typing import Any


def trainer_on_first_use(module: str, name: str, wanted: str, mixin: type) -> Any:
    """The module attribute ``name`` of ``module``: when ``name == wanted``, the class ``wanted`` = ``(mixin,
    LoRATrainer)`` (documented by the mixin's docstring), built and stored in ``module``; else AttributeError."""
    if name != wanted:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    from balancedness.optim.trainer import LoRATrainer

    cls = type(wanted, (mixin, LoRATrainer), {"__module__": module, "__doc__": mixin.__doc__})
    cls.__qualname__ = wanted
    setattr(sys.modules[module], wanted, cls)
    return cls
