"""`balancedness figures`: the saved data shows what each figure claims (quick settings), and bad input exits 2."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from balancedness.cli import app
from balancedness.io import umask

runner = CliRunner()


@pytest.fixture(scope="module")
def figs(tmp_path_factory):
    out = tmp_path_factory.mktemp("figs")
    res = runner.invoke(app, ["figures", "all", "--out", str(out), "--quick", "--format", "png,svg"])
    assert res.exit_code == 0, res.output
    return out


def load(figs, name):
    return json.loads((figs / f"{name}.json").read_text())


def test_every_format_and_data_file_exists(figs):
    for name in ("fig1", "fig2", "fig4", "flow", "rates", "msharp"):
        for ext in ("png", "svg", "json"):
            assert (figs / f"{name}.{ext}").stat().st_size > 0, f"{name}.{ext}"
        assert load(figs, name)["caption"]
    assert not list(figs.glob(".*.tmp")), "temporary files left behind"
    # images and data files get the usual permissions (mkstemp's 0600 would hide them from a group/web server)
    assert {p.stat().st_mode & 0o777 for p in figs.iterdir()} == {0o666 & ~umask()}


def _final(curve):
    return np.array(curve["two_abs_B"]["mean"], dtype=float)


@pytest.mark.parametrize("kind", ["nop", "op"])
def test_fig1_sgd_flat_sam_falls_noisier_faster(figs, kind):
    rows = load(figs, "fig1")[kind]
    sgd = [_final(r) for r in rows if r["optimizer"] == "sgd"]
    sam = {r["alpha"]: _final(r) for r in rows if r["optimizer"] == "sam"}
    for B in sgd[:-1] if kind == "nop" else sgd:  # NOP α=2 drifts by O(η²) (spec §7.3(c)); α ≤ 1 must be flat
        assert np.max(np.abs(B - B[0])) / B[0] < 0.01
    alphas = sorted(sam)
    for a in alphas:
        assert sam[a][-1] < 0.9 * sam[a][0], f"SAM α={a} does not fall"
    ends = [sam[a][-1] for a in alphas]
    assert all(x > y for x, y in itertools.pairwise(ends)), f"noisier data must balance faster: {ends}"


def test_fig2_bar_falls_and_threshold_matches_sam(figs):
    data = load(figs, "fig2")
    b = {r["optimizer"]: r["final_two_abs_B"] for r in data["b"]}
    B0 = data["b"][0]["two_abs_B"]["mean"][0]
    assert b["nbar"] < 0.5 * B0
    assert b["obar"] < 0.5 * B0
    assert b["sam"] < 0.9 * B0
    assert abs(b["sgd"] - B0) < 0.01 * B0
    for r in data["a"]:
        assert np.isfinite(r["threshold_time_avg_two_abs"]["expected"])


def test_fig4_gd_stuck_on_line_bar_leaves(figs):
    trajs = {t["label"]: t for t in load(figs, "fig4")["trajectories"]}
    stuck = trajs["GD from x = −y"]
    assert max(abs(v) for v in stuck["end"]) < 1e-8
    assert max(stuck["line_distance"]) == 0.0
    to_min = trajs["GD from x = y"]["end"]
    assert np.allclose(to_min, [np.sqrt(0.005)] * 2, atol=1e-6)
    bars = [t for t in trajs.values() if t["optimizer"] in ("obar", "nbar") and t["bar_steps"]]
    assert len(bars) == 2
    for t in bars:
        assert t["line_distance"][-1] > 0.05, f"{t['label']} did not leave x = -y"
        assert abs(abs(t["end"][0]) - np.sqrt(0.005)) < 1e-6
        assert abs(t["end"][0] - t["end"][1]) < 1e-6


def test_flow_gap_shrinks_like_eta(figs):
    ratios = load(figs, "flow")["ratio_per_decade"]
    assert all(7 < r < 14 for r in ratios), ratios


def test_rates_inside_explicit_bound(figs):
    data = load(figs, "rates")
    for kind in ("nop", "op"):
        assert data[kind]["max_A_over_bound"] <= 1.0 + 1e-9


def test_msharp_larger_m_balances_at_least_as_fast(figs):
    rows = load(figs, "msharp")["rows"]
    mid = [r["mid_two_abs_B"] for r in sorted(rows, key=lambda r: r["m"])]
    assert all(x >= y for x, y in itertools.pairwise(mid)), mid
    assert mid[-1] < 0.8 * mid[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["figures", "fig9"], "unknown figure"),
        (["figures", "fig1", "--log", "run/balancedness.jsonl"], "--log applies to fig3 only"),
        (["figures", "fig3", "--log", "no/such/run"], "no balancedness.jsonl there"),
        (["figures", "fig3", "--format", "gif"], "unknown image format"),
        (["figures", "fig1", "--format", "png,jpg"], "unknown image format"),
        (["figures", "fig1", "--seeds", "0"], "--seeds must be an integer >= 1, got 0"),
        (["figures", "fig1", "--alpha", "-1"], "alpha values must be finite"),
    ],
)
def test_bad_input_exits_2(tmp_path, args, message):
    res = runner.invoke(app, args + ["--out", str(tmp_path)])
    assert res.exit_code == 2
    assert message in res.output.replace("\n", " ")
    assert not list(tmp_path.iterdir()), "nothing may be written on bad input"
