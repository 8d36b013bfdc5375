"""The documentation site builds with ``mkdocs build --strict`` and stands on its own.

Strict: a broken internal link or anchor, a page left out of the nav, or a docstring mkdocstrings cannot
render fails the build. The reference pages hold the public API rendered from the docstrings, the math is
typeset by the KaTeX bundled in docs/assets (no CDN), and no page loads a script, a style sheet or a font
from the network. ``make test`` runs it (``[all]`` holds the ``[docs]`` extra); so does ``make docs``. Without mkdocs it
skips, except under CI, where it fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import built_once

try:
    import mkdocs  # noqa: F401
    import mkdocstrings_handlers.python  # noqa: F401
except ImportError:
    if os.environ.get("CI"):  # CI installs [all], which has the [docs] extra: a missing one is a failure there
        raise
    pytest.skip(
        "mkdocs/mkdocstrings are not installed: pip install -e '.[docs]' (or make docs)", allow_module_level=True
    )

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = {  # page -> API names that must have a rendered entry there
    "optim": [
        "bar.create_bar_optimizer",
        "sam.SAM",
        "trainer.SAMTrainer",
        "trainer.BARTrainer",
        "callbacks.BalancednessCallback",
        "pairs.lora_pairs",
        "microbatch.sam_backward",
    ],
    "sims": [
        "directions.register_direction",
        "directions.Direction",
        "discrete.simulate",
        "flows.solve_flow",
        "results.SimResult",
    ],
    "checks": ["registry.Verdict", "registry.Check", "registry.Kind", "registry.run_checks"],
    "methods": ["Method", "Hyper", "register_method"],
    "finetune": ["run.FinetuneConfig", "run.run_finetune", "sweep.run_sweep", "taskfile.TaskFile"],
}
REMOTE = re.compile(r"""<(?:script|link|img)\b[^>]*\b(?:src|href)=["'](?:https?:)?//""", re.I)


def _build(out: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built once for all xdist workers (``conftest.built_once``)."""
    return built_once(tmp_path_factory, "docs-site", _build)


@pytest.mark.parametrize("page", sorted(REFERENCE))
def test_reference_pages_render_the_public_api(site, page):
    html = (site / "reference" / page / "index.html").read_text(encoding="utf-8")
    for name in REFERENCE[page]:
        full = f"balancedness.{page}.{name}"
        assert f'id="{full}"' in html, f"{full} has no entry on reference/{page}"


def test_math_is_typeset_by_the_bundled_katex(site):
    index = (site / "index.html").read_text(encoding="utf-8")
    assert 'class="arithmatex"' in index  # \( \) and \[ \] left for KaTeX
    for asset in (
        "assets/katex/katex.min.js",
        "assets/katex/contrib/auto-render.min.js",
        "assets/katex/katex.min.css",
        "assets/katex.js",
    ):
        assert asset in index, asset
        assert (site / asset).is_file(), asset
    fonts = re.findall(r"url\((fonts/[^)]+\.woff2)\)", (site / "assets/katex/katex.min.css").read_text())
    assert fonts
    assert all((site / "assets/katex" / f).is_file() for f in fonts)


def test_no_page_loads_anything_from_the_network(site):
    for page in site.rglob("*.html"):
        found = REMOTE.findall(page.read_text(encoding="utf-8"))
        assert not found, f"{page.relative_to(site)} loads {found}"
