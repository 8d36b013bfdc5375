"""Prompt templates and label words for causal LMs, one row per task (MeZO / LM-BFF style).

A causal LM classifies by the next-token logits of the label words after a prompt: SST-2
``"<sentence> It was"`` → ``" terrible"`` / ``" great"``. Each label word must start with a distinct
token (checked when the head is built). COPA has no fixed label words: each example's two choices
are scored as continuations (``"<premise> because"`` / ``" so"`` + choice), as MeZO does for OPT.
WebNLG is generation: ``"<triples>"`` → ``" <text>"``.

Encoders ignore the templates and read ``encoder_texts`` (one text or a pair).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .data import Example, TaskData


@dataclass(frozen=True)
class Prompt:
    """``template`` formats an example's texts (``{0}``, ``{1}``, ... in ``text_fields`` order).

    ``label_words[i]`` continues the prompt for class ``i``; ``choices`` (COPA) gives per-example
    continuations instead.
    """

    template: str
    label_words: tuple[str, ...] = ()
    choices: Callable[[Example], list[str]] | None = None

    def render(self, example: Example) -> str:
        """The prompt text for ``example``."""
        return self.template.format(*(" ".join(t.split()) for t in example.texts))


def _copa_template(example: Example) -> str:
    premise, question = example.texts[0].strip(), example.texts[1]
    return premise.rstrip(".!?") + (" because" if question == "cause" else " so")


def _lower_first(text: str) -> str:
    text = text.strip()
    return text[:1].lower() + text[1:]


class _CopaPrompt(Prompt):
    def render(self, example: Example) -> str:  # noqa: D102
        return _copa_template(example)


_NLI = 'Suppose "{0}" Can we infer that "{1}"? Yes, No, or Maybe?\nAnswer:'

PROMPTS: dict[str, Prompt] = {
    "bbc-news": Prompt("Article: {0}\nTopic:", (" business", " entertainment", " politics", " sports", " technology")),
    "sst2": Prompt("{0} It was", (" terrible", " great")),
    "sst5": Prompt("{0} It was", (" terrible", " bad", " okay", " good", " great")),
    "trec": Prompt(
        "Question: {0}\nAnswer type:", (" description", " entity", " abbreviation", " person", " location", " number")
    ),
    "rte": Prompt('{0}\nDoes this mean that "{1}" is true? Yes or No?\nAnswer:', (" Yes", " No")),
    "snli": Prompt(_NLI, (" Yes", " Maybe", " No")),
    "mnli": Prompt(_NLI, (" Yes", " Maybe", " No")),
    "cb": Prompt(_NLI, (" Yes", " No", " Maybe")),
    "boolq": Prompt("{0}\nQuestion: {1}?\nAnswer:", (" No", " Yes")),
    "copa": _CopaPrompt("", choices=lambda ex: [" " + _lower_first(c) for c in ex.texts[2:4]]),
    "webnlg": Prompt("Triples: {0}\nText:"),
}


def prompt_for(task: TaskData) -> Prompt:
    """The task's prompt: a task file's own (``task.prompt``, ``task.label_words``), a built-in task's row of
    :data:`PROMPTS`, else (the user's own files) ``"<texts>\\nLabel:"`` → ``" <label name>"``."""
    if task.prompt is not None:
        return Prompt(task.prompt, task.label_words)
    if task.name in PROMPTS and (
        task.kind == "generation"
        or PROMPTS[task.name].choices
        or len(PROMPTS[task.name].label_words) == task.num_labels
    ):
        return PROMPTS[task.name]
    fields = "\n".join(f"{{{i}}}" for i in range(len(task.text_fields)))
    return Prompt(fields + "\nLabel:", tuple(" " + name for name in task.label_names))


def encoder_texts(task: TaskData, example: Example) -> tuple[str, ...]:
    """The one or two texts an encoder reads; COPA becomes (premise + question, both choices)."""
    if task.name == "copa":
        premise, question, c1, c2 = example.texts
        return (f"{premise} What was the {question}?", f"(1) {c1} (2) {c2}")
    return example.texts[:2]
