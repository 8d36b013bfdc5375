"""The method table (``balancedness/methods.py``) and its bindings (``finetune/bindings.py``): what derives from
the rows agrees with them, ``--hparam`` and ``--plugin`` are validated, ASAM and a method from a file outside
the package run through ``finetune`` and ``sweep``."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from balancedness.cli import app
from balancedness.finetune import bindings
from balancedness.finetune.run import NOT_COUNTED, FinetuneConfig, check_config
from balancedness.methods import METHODS
from data_fixtures import data_root_or_skip

runner = CliRunner()
TINY = ["--steps", "2", "--batch-size", "4", "--shots", "2", "--max-eval", "16", "--log-every", "1", "--seed", "13"]

#: A method from outside the package: SAM at radius scale·ρ, ``scale`` a hyper-parameter with no option of its own.
PLUGIN = """
from balancedness.finetune.bindings import register_binding
from balancedness.methods import RHO, Hyper, Method, register_method
from balancedness.optim.trainer import SAMTrainer

SCALE = Hyper("scale", float, 0.5, "the fraction of rho that SAM climbs by", strict=True, search={"cpu": (0.5, 0.25)})
register_method(Method("sam-half", "LoRA-SAM/2", "SAM/2", "#8c564b", (RHO, SCALE), "sam", help="SAM at scale x rho"))
register_binding("sam-half", SAMTrainer, lambda hp: {"rho": hp["rho"] * hp["scale"]})
"""


@pytest.fixture
def registry(monkeypatch):
    """The method and binding registries as they are, restored after the test (a plugin's rows go away)."""
    monkeypatch.setattr(bindings, "_PLUGINS", {})
    rows, bound = dict(METHODS), dict(bindings.BINDINGS)
    yield
    METHODS.clear()
    METHODS.update(rows)
    bindings.BINDINGS.clear()
    bindings.BINDINGS.update(bound)


@pytest.fixture
def plugin(tmp_path, registry):
    path = tmp_path / "sam_half.py"
    path.write_text(PLUGIN)
    return path


def _flat(text: str) -> str:
    return re.sub(r"[\s│]", "", text)  # rich wraps help and errors, inside boxes


# ------------------------------------------------------------------------------------ the table agrees
def test_every_row_has_a_binding():
    assert sorted(bindings.BINDINGS) == sorted(METHODS)


def test_cli_help_lists_every_method():
    finetune_help = _flat(runner.invoke(app, ["finetune", "--help"]).output)
    sweep_help = _flat(runner.invoke(app, ["sweep", "--help"]).output)
    for name, row in METHODS.items():
        assert _flat(f"{name} ({row.help})") in finetune_help, name
        assert name in sweep_help.split("methods(repeatorcomma):")[1], name


def test_report_and_figures_have_a_label_and_colour_of_every_method():
    from balancedness.figures.fig3 import METHOD_STYLE
    from balancedness.figures.style import OPTIMIZER_COLORS
    from balancedness.finetune.report import METHOD_LABELS

    for name, row in METHODS.items():
        assert METHOD_LABELS[name] == row.label
        assert METHOD_STYLE[name] == (row.colour, row.short)
        if row.direction:
            assert row.direction in OPTIMIZER_COLORS
    assert len({row.colour for row in METHODS.values()}) == len(METHODS)  # no two methods look alike


def test_every_direction_of_the_table_is_a_registered_numpy_direction():
    from balancedness.sims.directions import DIRECTIONS

    missing = {row.direction for row in METHODS.values() if row.direction and row.direction not in DIRECTIONS}
    assert not missing, missing


def test_derived_names_keep_their_values():
    from balancedness.finetune.run import METHOD_OPTIONS, TABLE_METHODS
    from balancedness.finetune.run import METHODS as RUN_METHODS

    assert TABLE_METHODS == ("lora", "sam", "obar", "nbar")
    assert set(RUN_METHODS) == {"lora", "sam", "msam", "nbar", "obar", "asam", "flat-lora", "bi-lora"}
    assert dict(METHOD_OPTIONS) == {
        "lora": (),
        "sam": ("rho",),
        "msam": ("rho", "m"),
        "nbar": ("mu", "schedule"),
        "obar": ("mu", "schedule"),
        "asam": ("rho",),
        "flat-lora": (),
        "bi-lora": ("rho",),
    }


def test_presets_keep_their_grids():
    """``paper`` as before the table (search.py at cfc0b58) plus ASAM's, Flat-LoRA's and Bi-LoRA's; ``cpu-2024`` the
    old ``cpu`` grid (docs/results-cpu was made with it) plus ASAM's; ``cpu`` one shared learning-rate axis, 4
    configurations for every method."""
    from balancedness.finetune.search import PRESETS

    paper_lr, cpu_lr = (1e-4, 3e-4, 5e-4), (1e-3, 2e-3)
    bar = {"lr": paper_lr, "mu": (0.5, 1.0, 2.0), "schedule": ("linear", "cosine")}
    assert {m: dict(g) for m, g in PRESETS["paper"].grids.items()} == {
        "lora": {"lr": paper_lr},
        "sam": {"lr": paper_lr, "rho": (0.05, 0.1, 0.2)},
        "msam": {"lr": paper_lr, "rho": (0.05, 0.1, 0.2)},
        "nbar": bar,
        "obar": bar,
        "asam": {"lr": paper_lr, "rho": (0.5, 1.0, 2.0)},
        "flat-lora": {"lr": paper_lr, "sigma": (0.05, 0.1)},
        "bi-lora": {"lr": paper_lr, "rho": (0.005, 0.01, 0.05, 0.1, 0.2, 0.5)},
    }
    old = {
        "sam": {"lr": cpu_lr, "rho": (0.05, 0.1)},
        "msam": {"lr": cpu_lr, "rho": (0.05, 0.1)},
        "nbar": {"lr": cpu_lr, "mu": (2.0, 8.0)},
        "obar": {"lr": cpu_lr, "mu": (2.0, 8.0)},
        "asam": {"lr": cpu_lr, "rho": (0.5, 1.0)},
    }
    assert {m: dict(g) for m, g in PRESETS["cpu-2024"].grids.items()} == {
        "lora": {"lr": (5e-4, 1e-3, 2e-3, 4e-3)},
        **old,
    }
    cpu = {m: dict(g) for m, g in PRESETS["cpu"].grids.items()}
    assert cpu == {
        "lora": {"lr": cpu_lr, "weight_decay": (0.0, 0.01)},
        **old,
        "flat-lora": {"lr": cpu_lr, "sigma": (0.05, 0.1)},
        "bi-lora": {"lr": cpu_lr, "rho": (0.05, 0.1)},
    }
    assert {len(PRESETS["cpu"].points(m)) for m in cpu} == {4}
    assert {g["lr"] for g in cpu.values()} == {cpu_lr}
    assert [list(g) for g in PRESETS["paper"].grids.values()][3] == ["lr", "mu", "schedule"]  # the axis order


def test_empty_hparams_leave_the_record_and_fingerprint_options_as_they_were():
    """The keys of ``metrics.json``'s config and of the fingerprint's options before ``hparams`` existed."""
    before = [
        "batch_size",
        "data_root",
        "dropout",
        "eval_batch_size",
        "eval_file",
        "grad_accum",
        "keep_checkpoints",
        "label_column",
        "log_every",
        "lora_alpha",
        "lora_r",
        "lr",
        "m",
        "max_eval",
        "max_length",
        "method",
        "model",
        "mu",
        "out",
        "overwrite",
        "precision",
        "progress",
        "resume",
        "rho",
        "save_every",
        "schedule",
        "seed",
        "shots",
        "steps",
        "target_modules",
        "task",
        "text_columns",
        "train_file",
        "weight_decay",
        "zero_shot",
    ]
    for method in ("lora", "sam", "msam", "nbar", "obar"):
        config = FinetuneConfig(method=method)
        assert sorted(config.to_json()) == before
        unused = {
            "lora": {"rho", "m", "mu", "schedule"},
            "sam": {"m", "mu", "schedule"},
            "msam": {"mu", "schedule"},
            "nbar": {"rho", "m"},
            "obar": {"rho", "m"},
        }[method]
        assert sorted(config.result_options()) == sorted(set(before) - unused - set(NOT_COUNTED)), method


# ------------------------------------------------------------------------------------ rows and bindings
def test_a_row_refuses_a_shared_or_repeated_hyper_parameter():
    from balancedness.methods import RHO, SHARED, Method

    with pytest.raises(ValueError, match="shared by every method"):
        Method("x", "X", "X", "#000000", (SHARED[0],))
    with pytest.raises(ValueError, match="declared twice"):
        Method("x", "X", "X", "#000000", (RHO, RHO))


def test_unknown_method_and_missing_binding_are_named(registry):
    from balancedness.methods import Hyper, Method, method, register_method

    with pytest.raises(ValueError, match="lora.*got 'nope'"):
        method("nope")
    register_method(Method("unbound", "U", "U", "#000001"))
    with pytest.raises(ValueError, match="'unbound' has a row but no binding"):
        check_config(FinetuneConfig(method="unbound"))
    register_method(Method("dropper", "D", "D", "#000003", (Hyper("dropout", float, 0.1, "p"),)))
    bindings.register_binding("dropper", object)
    with pytest.raises(ValueError, match="dropout, which are options of every method"):
        check_config(FinetuneConfig(method="dropper"))
    with pytest.raises(ValueError, match="micro_batches 'rho' is not an int hyper-parameter"):
        bindings.register_binding("sam", object, micro_batches="rho", replace=True)


# ------------------------------------------------------------------------------------ hparams
def test_hparams_are_checked_against_the_row(plugin):
    bindings.load_plugin(plugin)
    check_config(FinetuneConfig(method="sam-half", hparams={"scale": 0.25}))
    for hparams, needle in (
        ({"beta": 1.0}, "'beta'"),
        ({"rho": 0.1}, "'rho'"),
        ({"scale": "0.5"}, "'0.5'"),
        ({"scale": 0.0}, "scale must be a finite number > 0"),
    ):
        with pytest.raises(ValueError, match=needle):
            check_config(FinetuneConfig(method="sam-half", hparams=hparams))
    with pytest.raises(ValueError, match="'scale'"):
        check_config(FinetuneConfig(method="sam", hparams={"scale": 0.5}))


def test_hparams_count_in_the_fingerprint_with_defaults_filled(plugin):
    bindings.load_plugin(plugin)
    default = FinetuneConfig(method="sam-half")
    assert default.result_options()["hparams"] == {"scale": 0.5}
    assert FinetuneConfig(method="sam-half", hparams={"scale": 0.5}).result_options() == default.result_options()
    assert FinetuneConfig(method="sam-half", hparams={"scale": 0.25}).result_options()["hparams"] == {"scale": 0.25}


def test_a_sweep_grid_varies_a_hyper_parameter_of_the_row(plugin):
    from balancedness.finetune.search import PRESETS, make_space

    bindings.load_plugin(plugin)
    space = make_space("fixed", ["sam-half:scale=0.5,0.25"], ["lora", "sam-half"])
    assert space.points("sam-half") == [{"scale": 0.5}, {"scale": 0.25}]
    config = FinetuneConfig().with_options(method="sam-half", **space.points("sam-half")[1])
    assert config.hparams == {"scale": 0.25}
    assert config.method == "sam-half"
    assert dict(PRESETS["cpu"].grids["sam-half"]) == {"rho": (0.05, 0.1), "scale": (0.5, 0.25)}  # RHO's and its own
    with pytest.raises(ValueError, match="does not read scale"):
        make_space("fixed", ["lora:scale=1"], ["lora", "sam-half"])
    with pytest.raises(ValueError, match="must be floats"):
        make_space("fixed", ["sam-half:scale=big"], ["sam-half"])


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--method", "sam", "--hparam", "scale=1"], "NAME a hyper-parameter of method sam"),
        (["--method", "sam-half", "--hparam", "scale=big"], "scale must be a float, got 'big'"),
        (["--method", "sam-half", "--hparam", "scale=-1"], "hyper-parameter scale must be a finite number > 0"),
        (["--method", "sam-half", "--hparam", "beta=1"], "'beta=1'"),
        (["--method", "sam-half", "--hparam", "rho=0.1"], "'rho=0.1'"),
    ],
)
def test_bad_hparam_exits_2_before_any_work(tmp_path, plugin, args, needle):
    result = runner.invoke(app, ["finetune", "--plugin", str(plugin), *args, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert _flat(needle) in _flat(result.output)
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------ plugins
@pytest.mark.parametrize(
    "text, needle",
    [
        (None, "is not a file"),
        ("x = 1\n", "registers no method"),
        ("import no_such_module_here\n", "failed to import: ModuleNotFoundError"),
        (
            "from balancedness.methods import Method, register_method\n"
            "register_method(Method('lonely', 'L', 'L', '#000002'))\n",
            "lonely without a binding",
        ),
    ],
)
def test_bad_plugin_exits_2_and_registers_nothing(tmp_path, registry, text, needle):
    path = tmp_path / "plugin.py"
    if text is not None:
        path.write_text(text)
    for command in (["finetune"], ["sweep", "--tasks", "sst2"]):  # --steps 0: a plugin let through fails at once
        result = runner.invoke(app, [*command, "--plugin", str(path), "--steps", "0", "--out", str(tmp_path / "o")])
        assert result.exit_code == 2, result.output
        assert _flat(needle) in _flat(result.output)
    assert "lonely" not in METHODS
    assert not (tmp_path / "o").exists()


def _adapter(run):
    from safetensors.torch import load_file

    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def _finetune(out, *args):
    result = runner.invoke(
        app, ["finetune", "--task", "sst2", "--data-root", str(data_root_or_skip()), *TINY, *args, "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
def test_asam_runs_through_finetune_and_is_not_sam(tmp_path):
    import torch

    asam = _finetune(tmp_path / "asam", "--method", "asam", "--rho", "0.5")
    assert asam["method"] == "asam"
    assert asam["status"] == "complete"
    assert asam["config"]["rho"] == 0.5
    _finetune(tmp_path / "sam", "--method", "sam", "--rho", "0.5")
    a, s = _adapter(tmp_path / "asam"), _adapter(tmp_path / "sam")
    assert not all(torch.equal(a[k], s[k]) for k in a)  # the binding's adaptive=True reaches the Trainer


@pytest.mark.slow
def test_a_plugin_method_runs_through_finetune_and_a_sweep(tmp_path, plugin):
    import torch

    half = _finetune(tmp_path / "half", "--plugin", str(plugin), "--method", "sam-half", "--rho", "0.1")
    assert half["method"] == "sam-half"
    assert half["status"] == "complete"
    _finetune(tmp_path / "sam", "--method", "sam", "--rho", "0.05")
    a, s = _adapter(tmp_path / "half"), _adapter(tmp_path / "sam")
    assert all(torch.equal(a[k], s[k]) for k in a)  # SAM/2 at ρ 0.1 is SAM at ρ 0.05: its binding's kwargs count

    out = tmp_path / "sweep"
    result = runner.invoke(
        app,
        [
            "sweep",
            "--plugin",
            str(plugin),
            "--tasks",
            "sst2",
            "--methods",
            "asam,sam-half",
            "--seeds",
            "13",
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--shots",
            "2",
            "--max-eval",
            "16",
            "--data-root",
            str(data_root_or_skip()),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    table = (out / "table.md").read_text()
    assert "| LoRA-SAM/2 |" in table
    assert "| LoRA-ASAM |" in table
    assert {p.parent.name for p in out.glob("sst2/*/seed13-*")} == {"asam", "sam-half"}
