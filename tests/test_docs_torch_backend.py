"""Every example of docs/torch-backend.md runs: its setup block, then the example, as one script in a fresh Python
process and an empty working directory. A fenced ``python`` block is an example when the line before it is
``<!-- example: NAME -->`` (the setup block: ``<!-- example-setup -->``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "torch-backend.md"
BLOCK = re.compile(r"^<!-- (example-setup|example: ([\w-]+)) -->\n```python\n(.*?)^```$", re.M | re.S)
ENTRY_POINTS = ["stock-trainer-bar", "samtrainer", "bartrainer", "hand-written-loop", "accelerate-sam",
                "accelerate-bar"]


def _blocks() -> tuple[str, dict[str, str]]:
    setup, examples = None, {}
    for match in BLOCK.finditer(DOC.read_text(encoding="utf-8")):
        if match.group(1) == "example-setup":
            setup = match.group(3)
        else:
            assert match.group(2) not in examples, f"two examples named {match.group(2)!r}"
            examples[match.group(2)] = match.group(3)
    assert setup is not None, "docs/torch-backend.md has no <!-- example-setup --> block"
    return setup, examples


def test_every_entry_point_has_an_example():
    assert list(_blocks()[1]) == ENTRY_POINTS


@pytest.mark.slow
@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_doc_example_runs(tmp_path, name):
    setup, examples = _blocks()
    script = tmp_path / f"{name}.py"
    script.write_text(setup + "\n" + examples[name], encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    if name == "samtrainer":  # the per-layer balancedness reached TensorBoard and the file in output_dir
        assert list((tmp_path / "out" / "runs").glob("*/events.out.tfevents.*"))
        assert len((tmp_path / "out" / "balancedness.jsonl").read_text().splitlines()) == 4
        assert "balancedness/mean_abs" in done.stdout
