"""Run provenance: the fingerprint of everything that determines a finetune's result, and what a run folder holds.

A run folder's ``run.json`` records the fingerprint of the run that owns it, written (atomically) before
training starts. The fingerprint is a JSON object of

* ``options``: every :class:`~balancedness.finetune.run.FinetuneConfig` field that changes the computation
  or an output file (method, seed, steps, lr, batch size, accumulation, precision, LoRA shape and targets,
  dropout, max length, eval subset and batch, zero-shot, log_every, weight decay, the base optimizer (only when
  not the default AdamW: older fingerprints stay valid), model name, task name and
  text/label columns, and the hyper-parameters of the run's own method: ρ for SAM, ρ and m for m-SAM, μ and
  schedule for BAR): ``FinetuneConfig.result_options()``. Not counted (each such field of ``FinetuneConfig`` says
  so in its metadata, ``{"counted": False}``): where outputs go (``out``), how the command behaves
  (``resume``, ``overwrite``, ``progress``, ``save_every``, ``keep_checkpoints``) and where the data lives
  (``data_root``, ``train_file``, ``eval_file``, ``task_file``; their *content* is counted);
* ``data``: SHA-256 of the training, evaluation and dev examples actually read (after the K-shot draw and the
  eval subset), and the label names: the same files moved elsewhere match, an edited file does not; for a
  task file also its name, prompt and label words (with the examples, all of the file that shapes a run);
* ``model``: SHA-256 of the resolved model folder's config and weight files, and of its tokenizer files
  (:data:`TOKENIZER_FILES`: the same weights with another vocabulary compute something else);
* ``packages``: versions of balancedness, torch, transformers and peft (a new version may compute other bits);
* ``world_size``: the number of torchrun workers (2 workers sum gradients in another order than 1).

:func:`differences` names what differs between two fingerprints, for the refusal message.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from balancedness.io import read_json_object

__all__ = [
    "RUN_FILE",
    "TOKENIZER_FILES",
    "VOCABULARY_FILES",
    "fingerprint",
    "fingerprint_id",
    "differences",
    "read_run_file",
    "model_digest",
    "tokenizer_digest",
    "examples_digest",
]

RUN_FILE = "run.json"
FORMAT = 1
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
#: The files a transformers tokenizer is saved as and read from (those holding the vocabulary first).
VOCABULARY_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)
TOKENIZER_FILES = (
    *VOCABULARY_FILES,
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)


def examples_digest(examples: Iterable[Any]) -> str:
    """SHA-256 of examples (``texts``, ``label``, ``references``), in order."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([list(ex.texts), ex.label, ex.references], ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def model_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 over a model folder's ``config.json`` and weight files (names and bytes, sorted by name).

    A hub id that is not a folder (resolved by transformers from its cache) is identified by its name. The
    digest is computed once per process for the same files (same names, sizes and modification times): a
    sweep fingerprints every cell with the same model.
    """
    return _folder_digest(path, lambda p: p.name == "config.json" or p.suffix in _WEIGHT_SUFFIXES)


def tokenizer_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 over a model folder's tokenizer files (:data:`TOKENIZER_FILES`, names and bytes); a hub id by name."""
    return _folder_digest(path, lambda p: p.name in TOKENIZER_FILES)


def _folder_digest(path: str | os.PathLike[str], keep: Any) -> str:
    root = Path(path)
    if not root.is_dir():
        return "name:" + str(path)
    files = sorted(p for p in root.iterdir() if p.is_file() and keep(p))
    return _digest(tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))


@lru_cache(maxsize=32)
def _digest(files: tuple[tuple[str, int, int], ...]) -> str:
    h = hashlib.sha256()
    for name, _size, _mtime in files:
        h.update(Path(name).name.encode() + b"\0")
        with open(name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    import importlib.metadata

    out = {}
    for name in ("balancedness", "torch", "transformers", "peft"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def fingerprint(options: Mapping[str, Any], task: Any, model_path: str, world_size: int) -> dict[str, Any]:
    """The fingerprint of a run: ``options`` is ``FinetuneConfig.result_options()`` (the options that count),
    ``task`` the loaded TaskData."""
    return json.loads(
        json.dumps(
            {  # JSON-normal form: tuples are lists, as when read back from run.json
                "format": FORMAT,
                "options": dict(sorted(options.items())),
                "data": {
                    "task": task.name,
                    "train_sha256": examples_digest(task.train),
                    "eval_sha256": examples_digest(task.eval),
                    "dev_sha256": examples_digest(task.dev),
                    "label_names": list(task.label_names),
                    **_prompt(task),
                },
                "model": {"sha256": model_digest(model_path), "tokenizer_sha256": tokenizer_digest(model_path)},
                "packages": _versions(),
                "world_size": world_size,
            }
        )
    )


def _prompt(task: Any) -> dict[str, Any]:
    """A task file's own prompt and label words (absent for the others: their prompts are the package's code,
    counted by its version, and their fingerprints stay as they were)."""
    if getattr(task, "prompt", None) is None:
        return {}
    return {"prompt": task.prompt, "label_words": list(task.label_words)}


def fingerprint_id(fp: Mapping[str, Any]) -> str:
    """A short, stable id of a fingerprint (the first 16 hex digits of the SHA-256 of its canonical JSON)."""
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, Mapping) and obj:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): obj}


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``["method: 'nbar' → 'sam'", "data.train_sha256: 3fa2… → 91c0…"]``; options first, by name."""
    a, b = _flatten(old), _flatten(new)
    out = []
    for key in sorted(set(a) | set(b), key=lambda k: (not k.startswith("options."), k)):
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            name = key.removeprefix("options.")
            out.append(f"{name}: {_short(a.get(key, '<absent>'))} → {_short(b.get(key, '<absent>'))}")
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text[:13] + "…'" if isinstance(value, str) and len(value) == 64 else text


def read_run_file(out: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``out/run.json`` as a dict; None when absent; ValueError naming the file when it is damaged."""
    remedy = "the folder's provenance is unknown: use overwrite (--overwrite) or another out folder"
    record = read_json_object(Path(out) / RUN_FILE, remedy)
    if record is not None and "fingerprint" not in record:
        raise ValueError(f"{str(Path(out) / RUN_FILE)!r} holds no fingerprint; {remedy}")
    return record
