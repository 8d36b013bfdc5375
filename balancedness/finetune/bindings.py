"""One binding per method: the application's half of a method (its row, ``balancedness/methods.py``, is the other).

A :class:`Binding` says how ``run_finetune`` trains a method: its Trainer class (the HF ``Trainer``, the torch
backend's ``SAMTrainer``, ``BARTrainer``, ``FlatLoRATrainer`` or ``BiLoRATrainer``, or a user's own), the
keyword arguments the class takes beside the Trainer's own, computed from the method's hyper-parameter values
(``{name: value}`` for every ``Hyper`` of its row), and the hyper-parameter, if any, that multiplies the
micro-batches of a step (m-SAM: ``m``, one m-sharpness chunk per micro-batch). ``run.py`` reads nothing else about a
method.

A method from outside the package is a Python file that registers a row and a binding
(``balancedness finetune --plugin FILE.py``, :func:`load_plugin`; docs/architecture.md):

    from balancedness.finetune.bindings import register_binding
    from balancedness.methods import RHO, Method, register_method
    from balancedness.optim.trainer import SAMTrainer

    register_method(Method("sam-half", "LoRA-SAM/2", "SAM/2", "#8c564b", (RHO,), help="SAM at radius ρ/2"))
    register_binding("sam-half", SAMTrainer, lambda hp: {"rho": hp["rho"] / 2})
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from balancedness.methods import METHODS, method, unregister_method

__all__ = [
    "Binding",
    "BINDINGS",
    "register_binding",
    "unregister_binding",
    "binding",
    "trainer_class",
    "load_plugin",
    "loaded_plugins",
]

TrainerKwargs = Callable[[Mapping[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Binding:
    """``trainer``: a Trainer class, or a function returning one (so that transformers is imported only when a
    run trains); ``kwargs(hyper values) -> {keyword: value}`` for the class; ``micro_batches``: the name of the
    hyper-parameter whose value multiplies the micro-batches per step (None: 1)."""

    trainer: type | Callable[[], type]
    kwargs: TrainerKwargs
    micro_batches: str | None = None


#: ``{method name: Binding}``; every row of ``methods.METHODS`` that ``finetune`` runs has one.
BINDINGS: dict[str, Binding] = {}
_PLUGINS: dict[str, tuple[str, ...]] = {}  # resolved path -> the methods it registered


def register_binding(
    name: str,
    trainer: type | Callable[[], type],
    kwargs: TrainerKwargs | None = None,
    *,
    micro_batches: str | None = None,
    replace: bool = False,
) -> Binding:
    """Bind the registered method ``name`` (``methods.register_method`` first) to ``trainer`` and ``kwargs``
    (default: none). ValueError for an unknown method, a taken name (unless ``replace``), or a
    ``micro_batches`` that is not an int hyper-parameter of the method's row."""
    row = method(name)
    if name in BINDINGS and not replace:
        raise ValueError(f"method {name!r} already has a binding; pass replace=True to replace it")
    if not callable(trainer):
        raise TypeError(f"binding of {name!r}: trainer must be a Trainer class or a function returning one")
    if micro_batches is not None:
        hyper = row.hyper_named(micro_batches)
        if hyper is None or hyper.type is not int:
            raise ValueError(
                f"binding of {name!r}: micro_batches {micro_batches!r} is not an int hyper-parameter "
                f"of its row ({', '.join(h.name for h in row.hyper) or 'none'})"
            )
    BINDINGS[name] = Binding(trainer, kwargs or (lambda hp: {}), micro_batches)
    return BINDINGS[name]


def unregister_binding(name: str) -> Binding:
    """Remove the binding of ``name`` and return it."""
    binding(name)
    return BINDINGS.pop(name)


def binding(name: str) -> Binding:
    """The binding of method ``name``; ValueError when the method is unknown or has no binding."""
    method(name)
    if name not in BINDINGS:
        raise ValueError(
            f"method {name!r} has a row but no binding: register_binding({name!r}, TrainerClass, ...) "
            "(balancedness/finetune/bindings.py)"
        )
    return BINDINGS[name]


def trainer_class(name: str) -> type:
    """The Trainer class of method ``name`` (a factory is called now)."""
    trainer = binding(name).trainer
    return trainer if isinstance(trainer, type) else trainer()


def _hf_trainer() -> type:
    from transformers import Trainer

    return Trainer


def _sam_trainer() -> type:
    from balancedness.optim.trainer import SAMTrainer

    return SAMTrainer


def _bar_trainer() -> type:
    from balancedness.optim.trainer import BARTrainer

    return BARTrainer


def _flat_lora_trainer() -> type:
    from balancedness.optim.flatlora import FlatLoRATrainer

    return FlatLoRATrainer


def _bilora_trainer() -> type:
    from balancedness.optim.bilora import BiLoRATrainer

    return BiLoRATrainer


def _bar(variant: str) -> TrainerKwargs:
    return lambda hp: dict(bar_mu=hp["mu"], bar_variant=variant, bar_schedule=hp["schedule"])


register_binding("lora", _hf_trainer)
register_binding("sam", _sam_trainer, lambda hp: dict(rho=hp["rho"], msharpness=False))
register_binding("msam", _sam_trainer, lambda hp: dict(rho=hp["rho"], msharpness=True), micro_batches="m")
register_binding("nbar", _bar_trainer, _bar("nbar"))
register_binding("obar", _bar_trainer, _bar("obar"))
register_binding("asam", _sam_trainer, lambda hp: dict(rho=hp["rho"], adaptive=True))
register_binding(
    "flat-lora", _flat_lora_trainer, lambda hp: dict(flat_sigma=hp["sigma"], flat_noise_schedule=hp["noise_schedule"])
)
register_binding(
    "bi-lora", _bilora_trainer, lambda hp: dict(bilora_rho=hp["rho"], bilora_kappa=hp["kappa"], bilora_rank=hp["rank2"])
)


# ------------------------------------------------------------------------------------------------ plugins
def load_plugin(path: str | Path) -> tuple[str, ...]:
    """Import the user's file ``path``, which registers methods (a row and a binding each); the names it
    registered. Loading the same file again does nothing. ValueError, with everything the file registered
    taken back, for a missing file, an import that fails, a file that registers no method, or a row
    without a binding."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"plugin {str(path)!r} is not a file; expected a Python file that registers a method")
    key = str(file.resolve())
    if key in _PLUGINS:
        return _PLUGINS[key]
    rows, bound = set(METHODS), set(BINDINGS)
    try:
        _import_file(file, key)
        added = tuple(n for n in METHODS if n not in rows)
        unbound = [n for n in added if n not in BINDINGS]
        if unbound:
            raise ValueError(
                f"plugin {str(path)!r} registers the method(s) {', '.join(unbound)} without a binding: "
                "call register_binding(name, TrainerClass, kwargs) for each"
            )
        if not added:
            raise ValueError(
                f"plugin {str(path)!r} registers no method: call register_method(Method(...)) and "
                "register_binding(...) in it (docs/architecture.md)"
            )
    except BaseException:
        for name in [n for n in BINDINGS if n not in bound]:
            BINDINGS.pop(name)
        for name in [n for n in METHODS if n not in rows]:
            unregister_method(name)
        raise
    _PLUGINS[key] = added
    return added


def _import_file(file: Path, key: str) -> None:
    """Execute ``file`` as a module of its own; ValueError naming the file and the error it raised."""
    module_name = "balancedness_plugin_" + hashlib.sha256(key.encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise ValueError(f"plugin {str(file)!r} cannot be imported as Python (expected a .py file)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise ValueError(f"plugin {str(file)!r} failed to import: {type(exc).__name__}: {exc}") from None


def loaded_plugins() -> tuple[str, ...]:
    """The plugin files loaded in this process (resolved paths, in load order), for worker processes to load."""
    return tuple(_PLUGINS)
