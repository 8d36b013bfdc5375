"""The built wheel installs clean: ``python -m build`` (sdist + wheel), ``twine check``, then the wheel, not
editable, in a fresh venv, where ``balancedness check --quick`` passes and one SAM and one BAR step run on a
tiny peft model (the ``[torch]`` extra).

Only the wheel goes into the fresh venv. Its dependencies are not downloaded again (torch alone would take
minutes): a ``.pth`` file, written after the wheel is installed, appends this interpreter's site-packages to
the fresh venv's path. A plain path line in a ``.pth`` does not run the ``.pth`` files found there, so this
checkout's editable install stays out; the test checks that ``balancedness`` is imported from the fresh venv,
and that every requirement the wheel declares (base and ``[torch]``) is met by what the venv can import.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from conftest import built_once

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

# Run in the fresh venv: every Requires-Dist of the installed wheel (for no extra and for [torch]) is met.
REQUIREMENTS = """
import importlib.metadata as md, sys
from packaging.requirements import Requirement
dist = md.distribution("balancedness")
assert str(dist.locate_file("balancedness")).startswith(sys.prefix), dist.locate_file("balancedness")
for line in dist.requires:
    req = Requirement(line)
    if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in ("", "torch")):
        continue
    if req.name == "balancedness":
        continue
    version = md.version(req.name)
    assert req.specifier.contains(version, prereleases=True), f"{req}: installed {version}"
    print(req.name, version)
"""

# Run in the fresh venv: one SAM step and one BAR step on a tiny peft LoRA model, from the installed wheel.
STEPS = """
import sys, torch
from peft import LoraConfig, get_peft_model
import balancedness
from balancedness.optim import SAM, create_bar_optimizer, lora_balancedness
assert balancedness.__file__.startswith(sys.prefix), balancedness.__file__
torch.manual_seed(0)
x, y = torch.randn(8, 6), torch.randn(8, 3)

def model():
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    return get_peft_model(base, LoraConfig(r=2, target_modules=["0", "2"], init_lora_weights=False))

def loss(m):
    return torch.nn.functional.mse_loss(m(x), y)

m = model()
before = {n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad}
sam = SAM([p for p in m.parameters() if p.requires_grad], torch.optim.SGD, rho=0.05, lr=0.1)

def closure():
    sam.zero_grad()
    value = loss(m)
    value.backward()
    return value

sam.step(closure)
assert any(not torch.equal(before[n], p) for n, p in m.named_parameters() if p.requires_grad), "SAM did not step"

m = model()
bar = create_bar_optimizer(m, torch.optim.SGD, lr=0.1, mu=0.5, variant="nbar")
b0 = sum(lora_balancedness(m).values())
bar.zero_grad()
loss(m).backward()
bar.step()
b1 = sum(lora_balancedness(m).values())
assert b1 != b0, "BAR did not change the balancedness"
print("sam ok, bar ok", float(b0), float(b1))
"""


# The fresh venv's commands run without PYTHONPATH and outside the checkout (a python's sys.path starts with
# its working folder, where ``build`` leaves balancedness.egg-info): neither may show them this checkout.
CLEAN = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}


def _run(*cmd: str, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """The sdist and the wheel, built once for all xdist workers (``conftest.built_once``)."""
    return built_once(
        tmp_path_factory, "dist", lambda out: _run(sys.executable, "-m", "build", "--outdir", str(out), str(ROOT))
    )


def _fresh_venv(dist: Path, env: Path) -> None:
    """A fresh venv with the wheel installed (not editable), then this interpreter's packages appended."""
    venv.EnvBuilder(with_pip=False).create(env)
    python = env / "bin" / "python"
    (wheel,) = dist.glob("*.whl")
    _run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(python),
        "install",
        "--no-deps",
        "--no-index",
        str(wheel),
        cwd=env,
        env=CLEAN,
    )
    purelib = Path(
        _run(
            str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=env, env=CLEAN
        ).stdout.strip()
    )
    ours = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (purelib / "zz_dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))


@pytest.fixture(scope="module")
def fresh(dist, tmp_path_factory) -> Path:
    return built_once(tmp_path_factory, "wheel-venv", lambda folder: _fresh_venv(dist, folder / "fresh")) / "fresh"


def test_sdist_and_wheel_pass_twine_check(dist):
    files = sorted(f for f in dist.iterdir() if f.name != ".built")
    assert sorted(f.suffix for f in files) == [".gz", ".whl"], files
    _run(sys.executable, "-m", "twine", "check", "--strict", *map(str, files))


def test_the_wheel_holds_the_package_and_its_data(dist):
    (wheel,) = dist.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "balancedness/py.typed" in names
    for package in (
        "balancedness/finetune/data/",
        "balancedness/optim/",
        "balancedness/sims/",
        "balancedness/checks/",
        "balancedness/figures/",
        "balancedness/commands/",
    ):
        assert f"{package}__init__.py" in names, package
    assert not any(n.startswith(("tests/", "docs/", "benchmarks/")) for n in names)


def test_installed_wheel_meets_its_declared_requirements(fresh):
    _run(str(fresh / "bin" / "python"), "-c", REQUIREMENTS, cwd=fresh, env=CLEAN)


def test_installed_wheel_runs_check_quick(fresh):
    proc = _run(str(fresh / "bin" / "balancedness"), "check", "--quick", "--brief", cwd=fresh, env=CLEAN)
    assert "0 failed" in proc.stdout, proc.stdout


def test_installed_wheel_takes_a_sam_and_a_bar_step(fresh):
    proc = _run(str(fresh / "bin" / "python"), "-c", STEPS, cwd=fresh, env=CLEAN)
    assert "sam ok, bar ok" in proc.stdout
