"""The in-memory task representation shared by every loader, and the task-independent steps.

Every task, built in or read from the user's files, becomes one :class:`TaskData`: a list of
:class:`Example` for training and one for evaluation, plus the label names and the metric. The
model layer (``finetune/models.py``, ``finetune/tasks.py``) only ever sees this form.

The steps here do not depend on the task: finding the data root, k-shot sampling (LM-BFF style:
K examples per class, stratified, seeded), and the fixed eval subset for ``max_eval``.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from balancedness.validation import integer

TaskKind = Literal["classification", "generation"]
Metric = Literal["accuracy", "bleu"]

#: Environment variable naming the folder laid out like ``/work/shared/data`` (``lm-bff/``, ...).
DATA_ENV = "BALANCEDNESS_DATA"
#: Seed of the fixed subset behind ``max_eval`` (independent of ``--seed``, so runs compare).
EVAL_SUBSET_SEED = 0


@dataclass
class Example:
    """One example.

    ``texts`` holds the task's text fields in the order of ``TaskData.text_fields`` (one for single
    sentences, two for pairs, four for COPA). ``label`` is the class id for classification and
    ``None`` for generation; ``references`` holds the reference texts for generation.
    """

    texts: tuple[str, ...]
    label: int | None = None
    references: list[str] | None = None


@dataclass
class TaskData:
    """A loaded task: what the training loop trains on and evaluates on.

    ``source`` says which files were read (the actual LM-BFF folder, e.g. ``.../16-13``), and
    ``notes`` records every choice made on the user's behalf (seed fallback, dropped overlaps, ...).
    ``prompt`` and ``label_words`` are a task file's own causal-LM prompt (``{0}``, ``{1}``: the texts in
    ``text_fields`` order) and one word per label (``finetune/taskfile.py``); ``None`` leaves the prompt to
    ``prompts.prompt_for``.
    """

    name: str
    kind: TaskKind
    train: list[Example]
    eval: list[Example]
    label_names: list[str]
    text_fields: tuple[str, ...]
    metric: Metric
    source: str = ""
    seed: int = 42
    shots: int | None = None
    notes: list[str] = field(default_factory=list)
    dev: list[Example] = field(default_factory=list)  # held out for hyper-parameter selection (may be empty)
    prompt: str | None = None
    label_words: tuple[str, ...] = ()

    @property
    def num_labels(self) -> int:
        """Number of classes (0 for generation tasks)."""
        return len(self.label_names)


def default_data_root() -> Path | None:
    """The data root from ``$BALANCEDNESS_DATA``, else ``../shared/data`` next to the cwd or repo.

    Returns ``None`` when no candidate exists; :func:`resolve_data_root` turns that into an error
    that names the places searched.
    """
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    for base in (Path.cwd(), Path(__file__).resolve().parents[3]):
        candidate = (base / ".." / "shared" / "data").resolve()
        if candidate.is_dir():
            return candidate
    return None


def resolve_data_root(data_root: str | os.PathLike[str] | None, needed_for: str) -> Path:
    """The data root to read ``needed_for`` from, or a FileNotFoundError that says how to set it."""
    root = Path(data_root).expanduser() if data_root is not None else default_data_root()
    how = f"pass --data-root DIR or set {DATA_ENV}=DIR (a folder holding lm-bff/, fewglue/, webnlg/)"
    if root is None:
        tried = ", ".join(
            str((b / ".." / "shared" / "data").resolve()) for b in (Path.cwd(), Path(__file__).resolve().parents[3])
        )
        raise FileNotFoundError(
            f"task {needed_for!r} needs the data root, but none was given, "
            f"{DATA_ENV} is unset and no ../shared/data exists (tried {tried}); {how}"
        )
    if not root.is_dir():
        raise FileNotFoundError(f"data root {str(root)!r} (for task {needed_for!r}) is not a directory; {how}")
    return root


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a file, else a FileNotFoundError naming it and what it should hold."""
    if path.is_dir():
        raise FileNotFoundError(f"{what} {str(path)!r} is a directory; expected a file")
    if not path.is_file():
        raise FileNotFoundError(
            f"missing {what}: {str(path)!r} does not exist; "
            f"check data_root (--data-root) / {DATA_ENV} (expected the layout of shared/data, see docs/data.md)"
        )
    return path


def check_shots(shots: int | None) -> None:
    """Reject ``shots < 1`` (and non-integers) before anything is read."""
    if shots is not None:
        integer("shots", shots)


def sample_shots(
    examples: Sequence[Example], shots: int, seed: int, label_names: Sequence[str], kind: TaskKind
) -> list[Example]:
    """K examples per class, stratified and seeded (LM-BFF style); K in total for generation.

    Classes are visited in label-id order, each draws ``shots`` indices with ``random.Random(seed)``,
    and the union is shuffled with the same generator, so the result depends only on
    (examples, shots, seed). A class with fewer than ``shots`` examples raises a ValueError naming
    the class, its count and K.
    """
    check_shots(shots)
    rng = random.Random(seed)
    if kind == "generation":
        if shots > len(examples):
            raise ValueError(f"shots={shots} but the generation task has only {len(examples)} training examples")
        return [examples[i] for i in sorted(rng.sample(range(len(examples)), shots))]
    chosen: list[int] = []
    for label, name in enumerate(label_names):
        members = [i for i, ex in enumerate(examples) if ex.label == label]
        if shots > len(members):
            raise ValueError(
                f"shots={shots} per class, but class {name!r} (label {label}) has only "
                f"{len(members)} training examples; use shots <= {len(members)}"
            )
        chosen.extend(rng.sample(members, shots))
    rng.shuffle(chosen)
    return [examples[i] for i in chosen]


def eval_subset(examples: list[Example], max_eval: int | None) -> list[Example]:
    """The first-class eval set, or a fixed random subset of ``max_eval`` examples in file order."""
    if max_eval is None or max_eval >= len(examples):
        return examples
    integer("max_eval", max_eval)
    keep = sorted(random.Random(EVAL_SUBSET_SEED).sample(range(len(examples)), max_eval))
    return [examples[i] for i in keep]


def sorted_labels(values: set[str]) -> list[str]:
    """Sorted unique labels: numerically when all are integers, else as strings."""
    if all(re.fullmatch(r"-?\d+", v) for v in values):
        return sorted(values, key=int)
    return sorted(values)


def map_labels(raw: Sequence[str], label_values: Sequence[str], where: str) -> list[int]:
    """Map raw label strings to ids by their position in ``label_values``; unknown → ValueError."""
    index = {value: i for i, value in enumerate(label_values)}
    unknown = sorted({r for r in raw if r not in index})
    if unknown:
        raise ValueError(f"{where}: unknown label(s) {unknown[:5]}; expected one of {list(label_values)}")
    return [index[r] for r in raw]
