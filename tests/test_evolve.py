import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from squishednets.checkpoint import load_checkpoint
from squishednets.errors import ConfigError
from squishednets.evolve import EvolveConfig, evolve, select, size_path
from squishednets.train import TrainConfig, run_training

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def ancestor(tiny_data, tmp_path):
    cfg = TrainConfig(data=str(tiny_data), image_size=32, epochs=2, batch_size=6, threads=1, eval_every=0)
    run_training(cfg, tmp_path / "anc", progress=False)
    return tmp_path / "anc"


def small_cfg(**kw):
    base = dict(generations=3, population=2, target_reduction=3.0, epochs=2, batch_size=6, threads=1, round_to=1,
                holdout=0.25)
    base.update(kw)
    return EvolveConfig(**base)


def test_lineage_shrinks_and_records_everything(ancestor, tmp_path):
    lineage = evolve(ancestor, tmp_path / "ev", small_cfg(), progress=False)
    assert [e["generation"] for e in lineage] == [0, 1, 2, 3]
    sizes = [e["size_mb"] for e in lineage]
    assert all(b < a for a, b in zip(sizes, sizes[1:]))  # every offspring physically smaller
    # The target mode follows its geometric path; drawing several offspring
    # keeps the last one close to the target.
    assert sizes[-1] == pytest.approx(sizes[0] / 3, rel=0.05)
    for e in lineage[1:]:
        assert e["size_mb"] == pytest.approx(e["target_size_mb"], rel=0.1)
    doc = json.loads((tmp_path / "ev" / "lineage.json").read_text())
    assert len(doc["generations"]) == 4
    for e in doc["generations"][1:]:
        assert {"params", "size_mb", "macs", "top1", "holdout_top1", "wall_s", "seed", "parent", "env_factor"} <= set(e)
        assert 0 < e["env_factor"] <= 1 and e["wall_s"] > 0 and len(e["candidates"]) == 2
        ck = load_checkpoint(tmp_path / "ev" / e["path"])
        assert ck.metrics["params"] == e["params"]
    assert doc["generations"][2]["parent"] == "gen_01/model"


def test_fixed_env_factor_and_scratch(ancestor, tmp_path):
    lineage = evolve(ancestor, tmp_path / "ev", small_cfg(target_reduction=0.0, env_factor=0.9, init="scratch",
                                                          generations=1, population=1), progress=False)
    assert lineage[1]["env_factor"] == 0.9 and lineage[1]["size_mb"] < lineage[0]["size_mb"]


def test_selection_respects_constraints():
    cands = [{"holdout_top1": 0.9, "size_mb": 2.0, "macs": 10}, {"holdout_top1": 0.8, "size_mb": 1.0, "macs": 5}]
    assert select(cands, small_cfg()) == (0, True)
    assert select(cands, small_cfg(max_size_mb=1.5)) == (1, True)
    assert select(cands, small_cfg(fitness="smallest")) == (1, True)
    assert select(cands, small_cfg(max_macs=1)) == (0, False)  # none fits: the fittest, flagged


def test_mac_target_in_a_real_lineage(ancestor, tmp_path):
    """With a MAC target the lineage ends at about the same size with fewer
    MACs than size alone gives, and every generation records its pressure."""
    plain = evolve(ancestor, tmp_path / "a", small_cfg(population=1, generations=2), progress=False)
    fast = evolve(ancestor, tmp_path / "b", small_cfg(population=1, generations=2, target_macs_reduction=6.0),
                  progress=False)
    assert fast[-1]["macs"] < plain[-1]["macs"]
    assert fast[-1]["size_mb"] == pytest.approx(plain[-1]["size_mb"], rel=0.15)
    assert all(e["mac_pressure"] == 0 for e in plain[1:])
    assert any(e["mac_pressure"] > 0 for e in fast[1:])
    assert fast[2]["target_macs"] == pytest.approx(fast[0]["macs"] / 6.0)


def test_run_folder_from_before_the_mac_target_resumes(ancestor, tmp_path):
    """A config.json written before --target-macs-reduction existed resumes as
    a size-only run and refuses a MAC target."""
    cfg = small_cfg(population=1, generations=1)
    first = evolve(ancestor, tmp_path / "ev", cfg, progress=False)
    path = tmp_path / "ev" / "config.json"
    old = json.loads(path.read_text())
    del old["target_macs_reduction"]
    path.write_text(json.dumps(old))
    assert evolve(ancestor, tmp_path / "ev", cfg, progress=False)[-1]["params"] == first[-1]["params"]
    with pytest.raises(ConfigError, match=r"other settings \(target_macs_reduction\)"):
        evolve(ancestor, tmp_path / "ev", small_cfg(population=1, generations=1, target_macs_reduction=4.0),
               progress=False)


def test_target_error_prefers_draws_within_budget():
    from squishednets.evolve import _target_error
    from types import SimpleNamespace as P

    assert _target_error(P(params=90, macs=0), 100, None) < _target_error(P(params=110, macs=0), 100, None)
    assert _target_error(P(params=100, macs=50), 100, 60) == 0  # fewer MACs than asked is no fault
    assert _target_error(P(params=100, macs=66), 100, 60) == pytest.approx(0.1)


def test_size_path_is_geometric():
    assert size_path(1000, 10, 2, 1) == pytest.approx(100)
    assert size_path(1000, 10, 2, 2) == pytest.approx(10)


@pytest.mark.parametrize("kw,msg", [
    (dict(target_reduction=0.0), "give --env-factor"),
    (dict(env_factor=1.2, target_reduction=0.0), "below 1"),
    (dict(env_factor=0.9), "not several"),
    (dict(fitness="val"), "--fitness must be one of"),
    (dict(target_macs_reduction=0.5), "--target-macs-reduction must be > 1"),
    (dict(target_macs_reduction=4.0, target_reduction=0.0, env_factor=0.9), "works in target mode"),
])
def test_config_errors(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        small_cfg(**kw)


def test_other_settings_refuse_to_resume(ancestor, tmp_path):
    evolve(ancestor, tmp_path / "ev", small_cfg(generations=1, population=1), progress=False)
    with pytest.raises(ConfigError, match="other settings"):
        evolve(ancestor, tmp_path / "ev", small_cfg(generations=1, population=1, lr=0.3), progress=False)


def _cli(ancestor, run):
    return [sys.executable, "-m", "squishednets.cli", "evolve", str(ancestor), "--out", str(run), "--generations", "3",
            "--population", "2", "--target-reduction", "3", "--epochs", "3", "--batch-size", "6", "--threads", "1",
            "--round-to", "1", "--holdout", "0.25", "--no-progress"]


def test_kill_9_mid_generation_then_resume_gives_the_same_lineage(ancestor, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    ref = tmp_path / "ref"
    r = subprocess.run(_cli(ancestor, ref), env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "killed"
    p = subprocess.Popen(_cli(ancestor, run), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Kill once generation 2's first offspring has saved a training epoch.
    target = run / "gen_02" / "cand_0" / "state" / "state.json"
    deadline = time.time() + 300
    while not target.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.02)
    assert p.poll() is None, "the run finished before it could be killed"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (run / "gen_02" / "model").exists()
    done_before = (run / "gen_01" / "model" / "weights.safetensors").stat().st_mtime_ns
    r = subprocess.run(_cli(ancestor, run), env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    # Finished generations were not recomputed.
    assert (run / "gen_01" / "model" / "weights.safetensors").stat().st_mtime_ns == done_before
    a = json.loads((ref / "lineage.json").read_text())["generations"]
    b = json.loads((run / "lineage.json").read_text())["generations"]
    for ea, eb in zip(a, b):
        for k in ("params", "size_mb", "macs", "top1", "holdout_top1", "env_factor", "widths", "seed"):
            assert ea[k] == eb[k], (ea["generation"], k)
    wa = load_checkpoint(ref / "gen_03" / "model").model.state_dict()
    wb = load_checkpoint(run / "gen_03" / "model").model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_synapse_level_lineage_reports_sparse_size(ancestor, tmp_path):
    from squishednets.report import write_report

    lineage = evolve(ancestor, tmp_path / "ev", small_cfg(generations=2, population=1, synapse_level=True,
                                                          synapse_factor=0.9), progress=False)
    last = lineage[-1]
    assert last["nonzero_params"] < last["params"]  # dense size stays the headline
    assert last["sparse_bytes"] < 4 * last["params"] * 1.5
    ck = load_checkpoint(tmp_path / "ev" / last["path"])
    assert ck.masks is not None
    w = dict(ck.model.named_parameters())
    assert all((w[k][~m] == 0).all() for k, m in ck.masks.items())  # the mask held while training
    page = write_report(tmp_path / "ev")["html"].read_text()
    assert "Sparse size (MB)" in page and "Non-zero params" in page
