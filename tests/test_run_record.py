"""The typed run (issue 20, item 2): a run is prepared once, its record (``metrics.json``) is a frozen
``RunRecord`` that reads and writes back byte for byte, and a ``RunFolder`` says what is complete and where
the log is. The runs are real (MiniLM, SST-2 4-shot, a few steps), as in ``tests/test_faults.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from balancedness.finetune.record import LOG, RunFolder, RunRecord, is_complete
from test_faults import _args


def _file_bytes(record: RunRecord, tmp_path: Path) -> bytes:
    """What ``RunFolder.write`` (the writer of metrics.json) writes for ``record``."""
    return RunFolder(tmp_path).write(record).read_bytes()


@pytest.fixture(scope="module")
def counted_run(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    """One real ``balancedness finetune`` in this process, with the task loader, the model resolver and the
    config reader wrapped by counters (the real functions run)."""
    import balancedness.finetune.data as data
    import balancedness.finetune.models as models
    from balancedness.cli import app

    counts = {"load_task": 0, "resolve_model": 0, "model_config": 0}
    patch = pytest.MonkeyPatch()

    def counting(module, name):
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            counts[name] += 1
            return real(*args, **kwargs)

        patch.setattr(module, name, wrapper)

    counting(data, "load_task")
    counting(models, "resolve_model")
    counting(models, "model_config")
    out = tmp_path_factory.mktemp("counted") / "run"
    try:
        result = CliRunner().invoke(app, ["finetune", *_args(out, method="sam", steps=2)])
    finally:
        patch.undo()
    assert result.exit_code == 0, result.output
    return out, counts


@pytest.mark.slow
def test_a_finetune_loads_its_task_and_resolves_its_model_once(counted_run):
    _out, counts = counted_run
    assert counts == {"load_task": 1, "resolve_model": 1, "model_config": 1}


@pytest.mark.slow
def test_a_complete_record_round_trips_byte_identically(counted_run, tmp_path):
    out, _ = counted_run
    text = (out / "metrics.json").read_text()
    record = RunRecord.from_json(json.loads(text))
    assert record.status == "complete"
    assert record.method == "sam"
    assert record.value == json.loads(text)["accuracy"]
    assert record.dev == json.loads(text)["dev_accuracy"]
    assert _file_bytes(record, tmp_path) == (out / "metrics.json").read_bytes()


@pytest.mark.slow
def test_a_complete_folder_is_complete_and_names_its_files(counted_run):
    out, _ = counted_run
    folder = RunFolder(out)
    assert folder.is_complete
    assert folder.record == RunRecord.from_json(json.loads((out / "metrics.json").read_text()))
    assert folder.log.is_file()
    assert folder.metrics.is_file()
    assert (folder.adapter / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_the_folder_of_an_interrupted_run_is_not_complete(interrupted_run):  # conftest: SIGINT at step 2 of 6
    folder = RunFolder(interrupted_run)
    record = folder.record
    assert record is not None
    assert record.status == "interrupted"
    assert record.step_reached == 2
    assert not folder.is_complete
    assert not is_complete(record)
    assert folder.complete_record() is None


@pytest.mark.slow
def test_an_interrupted_record_round_trips_byte_identically(interrupted_run, tmp_path):
    data = (interrupted_run / "metrics.json").read_bytes()
    assert _file_bytes(RunRecord.from_json(json.loads(data)), tmp_path) == data


RECORDS = Path(__file__).with_name("data") / "records"  # metrics.json files written by the commit before RunRecord


@pytest.mark.parametrize("name", ["complete", "interrupted", "diverged"])
def test_records_the_old_writer_wrote_round_trip_byte_identically(name, tmp_path):
    """Records written by cfc0b58's dict-based writer (a complete m-SAM run with --zero-shot, an nBAR run
    interrupted at step 2, a diverged one): the typed record writes them back byte for byte."""
    data = (RECORDS / f"{name}.json").read_bytes()
    record = RunRecord.from_json(json.loads(data))
    assert record.status == {"complete": "complete", "interrupted": "interrupted", "diverged": "failed"}[name]
    assert record.extra == {}  # every key is a typed field
    assert _file_bytes(record, tmp_path) == data
    assert is_complete(record) == (name == "complete")


def test_the_log_name_is_the_one_the_callback_writes():
    from balancedness.optim.callbacks import LOG_NAME

    assert LOG == LOG_NAME == "balancedness.jsonl"
    assert RunFolder("x").log == Path("x") / LOG_NAME


def test_keys_a_record_does_not_know_are_kept_in_place():
    obj = {
        "task": "t",
        "method": "lora",
        "model": "m",
        "seed": 1,
        "metric": "accuracy",
        "steps": 2,
        "fingerprint_id": "0" * 16,
        "config": {},
        "train_seconds": 1.0,
        "seconds_per_step": None,
        "train_loss": 0.5,
        "accuracy": 0.75,
        "n": 8,
        "status": "complete",
        "from_a_plugin": [1, 2],
    }
    record = RunRecord.from_json(obj)
    assert record.extra == {"from_a_plugin": [1, 2]}
    assert record.value == 0.75
    assert list(record.to_json().items()) == list(obj.items())
    with pytest.raises(ValueError, match="status"):
        RunRecord.from_json({k: v for k, v in obj.items() if k != "status"})
