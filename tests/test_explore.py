"""Design-space exploration: designs as genomes, the choosing rules, and whole
explore runs on tiny data (resume, kill -9, executors, constraints)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("optuna")

from conftest import make_folder  # noqa: E402
from squishednets.cli import main  # noqa: E402
from squishednets.errors import ConfigError  # noqa: E402
from squishednets.executor import ExecConfig  # noqa: E402
from squishednets.explore import (AXES, BASE, EXPLORE_TRAIN, ExploreConfig, design_genome, design_key,  # noqa: E402
                                  energy_mj, explore, full_design, memory_figures, pareto, saturation, seed_noise,
                                  violations)
from squishednets.genome import get_genome, load_genome_file  # noqa: E402
from squishednets.metrics import profile  # noqa: E402


def test_base_design_is_squeezenet11():
    g = design_genome(BASE, 10)
    ref = get_genome("squeezenet1_1", 10, batchnorm=True)
    assert (g.stem, g.fires, g.pool_after, g.num_classes, g.batchnorm) == (
        ref.stem, ref.fires, ref.pool_after, ref.num_classes, ref.batchnorm)
    assert g.name == "squeezenet1_1"


@pytest.mark.parametrize("axis", list(AXES))
def test_every_axis_value_builds_its_own_genome(axis):
    keys = set()
    for v in AXES[axis]:
        g = design_genome({axis: v}, 7)
        prof = profile(g, 64)
        assert prof.params > 0 and prof.macs > 0 and g.num_classes == 7
        keys.add(design_key({axis: v}))
    assert len(keys) == len(AXES[axis])  # every value is another design


def test_more_capacity_costs_more():
    for axis in ("base_e", "incr_e", "pct3x3", "sr", "width", "stem_filters"):
        sizes = [profile(design_genome({axis: v}, 10), 64).params for v in AXES[axis]]
        assert sizes == sorted(sizes), axis
    macs = [profile(design_genome({"pool": v}, 10), 64).macs for v in AXES["pool"]]
    assert macs == sorted(macs)  # pooling later keeps more pixels


def test_one_design_one_key():
    assert design_key({"width": 1}) == design_key({"width": 1.0}) == design_key({})
    assert full_design({"width": 1})["width"] == 1.0
    with pytest.raises(ConfigError, match="depthwise has no value 1"):
        full_design({"depthwise": 1})


def test_bad_designs_fail_clearly():
    with pytest.raises(ConfigError, match="unknown design axis"):
        full_design({"kernel": 3})
    with pytest.raises(ConfigError, match="has no value 0.3"):
        full_design({"sr": 0.3})


def test_bad_options_fail_clearly():
    with pytest.raises(ConfigError, match="unknown axis"):
        ExploreConfig(axes=("sr", "nope"))
    with pytest.raises(ConfigError, match="top1 plus"):
        ExploreConfig(objectives=("size", "macs"))
    with pytest.raises(ConfigError, match="min-top1"):
        ExploreConfig(min_top1=75.0)
    with pytest.raises(ConfigError, match="sram-kb"):
        ExploreConfig(sram_kb=0)
    with pytest.raises(ConfigError, match="population must be >= 2 for nsga2"):
        ExploreConfig(strategy="nsga2", population=1)


def _pt(name, top1, size, macs, lat=1.0):
    return {"name": name, "heldout_top1": top1, "size_mb": size, "macs": macs, "ort_b1_ms": lat}


def test_pareto_keeps_the_undominated():
    pts = [_pt("a", 0.8, 1.0, 10), _pt("b", 0.7, 0.5, 10), _pt("c", 0.7, 1.0, 10), _pt("d", 0.9, 2.0, 20),
           _pt("e", 0.9, 2.0, 20)]
    assert pareto(pts, ("top1", "size")) == ["a", "b", "d", "e"]  # c is beaten by a; d and e tie
    assert pareto(pts, ("top1", "macs")) == ["a", "d", "e"]


def test_saturation_rule():
    # Rises, then flat within the noise: saturates at the first value of the plateau.
    assert saturation([(0.125, 0.60), (0.25, 0.70), (0.5, 0.74), (0.75, 0.75), (1.0, 0.745)], 0.02) == 0.5
    # Still rising at the end: the last value.
    assert saturation([(1, 0.5), (2, 0.6), (3, 0.7)], 0.01) == 3
    # Flat from the start.
    assert saturation([(1, 0.7), (2, 0.7), (3, 0.71)], 0.02) == 1


def test_seed_noise_pooled_or_binomial():
    one = [{"runs": [{"heldout_top1": 0.5}], "heldout_top1": 0.5}]
    sd, src = seed_noise(one, 100)
    assert sd == pytest.approx(0.05) and "binomial" in src
    two = [{"runs": [{"heldout_top1": 0.5}, {"heldout_top1": 0.7}], "heldout_top1": 0.6}]
    sd, src = seed_noise(one + two, 100)
    assert sd == pytest.approx(0.1414, abs=1e-3) and "pooled" in src


def test_memory_both_ways_and_energy():
    prof = profile(get_genome("squeezenet1_1", 10, batchnorm=True), 64)
    m = memory_figures(prof)
    assert m["params_plus_activations_kb"] == pytest.approx((prof.params * 4 + prof.peak_activation_bytes) / 1024)
    assert m["int8_sram_kb"] == pytest.approx(m["peak_activation_kb"] / 4)
    assert prof.params / 1024 < m["int8_flash_kb"] < prof.params * 4 / 1024
    # Off-chip memory costs more energy than on-chip.
    assert energy_mj(prof, sram_kb=1) > energy_mj(prof, sram_kb=8192) > prof.macs * 4.6e-9


def test_violations():
    cfg = ExploreConfig(sram_kb=100, min_top1=0.5, min_fps=10)
    p = {"params_plus_activations_kb": 150, "heldout_top1": 0.6, "fps": 5}
    v = violations(p, cfg)
    assert len(v) == 2 and "150 KB > 100 KB" in v[0] and "frames/s" in v[1]


def _cfg(data, **kw) -> ExploreConfig:
    train = dataclasses.replace(EXPLORE_TRAIN, data=str(data), image_size=32, epochs=1, batch_size=8, threads=1,
                                holdout=0.34)
    base = dict(strategy="grid", axes=("width",), front_seeds=2, grace_s=2, bench_threads=1, timing_rounds=1,
                train=train, executor=ExecConfig())
    base.update(kw)
    return ExploreConfig(**base)


def _results(out: Path) -> dict[str, float]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.glob("points/*/*/result.json")}


def test_grid_explore_end_to_end_and_resume(tiny_data, tmp_path):
    out = tmp_path / "ex"
    doc = explore(_cfg(tiny_data, top=2, sram_kb=8192), out, progress=False, say=lambda s: None)
    assert len(doc["points"]) == len(AXES["width"])  # the base (width 1.0) and the three others
    for p in doc["points"]:
        for k in ("name", "genome", "size_mb", "macs", "peak_activation_kb", "heldout_top1", "test_top1", "seeds",
                  "ort_b32_img_s", "ort_b1_ms", "energy_mj", "meets_constraints", "int8_flash_kb", "int8_sram_kb"):
            assert k in p
        assert 0 <= p["heldout_top1"] <= 1 and p["ort_b32_img_s"] > 0
    sizes = {p["design"]["width"]: p["size_mb"] for p in doc["points"]}
    assert sizes[0.25] < sizes[0.5] < sizes[0.75] < sizes[1.0]
    assert set(doc["pareto"]) <= {p["name"] for p in doc["points"]} and doc["pareto"]
    shown = set(doc["pareto"]).union(*doc["fronts"].values())
    assert set(doc["fronts"]["latency"]) <= shown
    for p in doc["points"]:  # every point on a front shown has two seeds
        assert len(p["seeds"]) >= (2 if p["name"] in shown else 1)
    assert set(doc["fronts"]["meeting_constraints"]) <= set(doc["meets_constraints"])
    assert doc["failed"] == []
    assert doc["saturation"]["width"] in AXES["width"]
    assert doc["selected_by"] == "heldout"
    on_disk = json.loads((out / "explore.json").read_text())
    assert on_disk["pareto"] == doc["pareto"]
    assert (out / "explore.html").read_text().count("data:image/png;base64,") == 2
    assert "| design |" in (out / "explore.md").read_text()
    designs = sorted((out / "designs").glob("*.json"))
    assert len(designs) == 2 and load_genome_file(designs[0]).num_classes == 3
    # The same command again trains nothing.
    before = _results(out)
    doc2 = explore(_cfg(tiny_data, top=2, sram_kb=8192), out, progress=False, say=lambda s: None)
    assert _results(out) == before
    assert [p["name"] for p in doc2["points"]] == [p["name"] for p in doc["points"]]
    # Other settings refuse the folder.
    with pytest.raises(ConfigError, match="other settings"):
        explore(_cfg(tiny_data, axes=("sr",)), out, progress=False, say=lambda s: None)


# The two ways a study grows: the grid adds finished trials; NSGA-II asks,
# trains and tells a whole generation at a time.
STUDIES = {"grid": dict(front_seeds=1),
           "nsga2": dict(strategy="nsga2", axes=("width", "pool"), trials=4, population=2, front_seeds=1)}


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    """In-process studies that the other executors are compared with."""
    root = tmp_path_factory.mktemp("in_process")
    data = make_folder(root / "data")
    with pytest.MonkeyPatch.context() as mp:  # runs before the function-scoped _isolate: keep caches out of home
        mp.setenv("SQUISHEDNETS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        return data, {k: explore(_cfg(data, **kw), root / k, progress=False, say=lambda s: None)
                      for k, kw in STUDIES.items()}


def _same(doc):
    return {p["name"]: (p["heldout_top1"], p["test_top1"], p["size_mb"]) for p in doc["points"]}


@pytest.mark.parametrize("study", list(STUDIES))
def test_processes_give_the_same_study_as_in_process(in_process, tmp_path, study):
    data, a = in_process
    b = explore(_cfg(data, **STUDIES[study], executor=ExecConfig(workers=2)), tmp_path / "b", progress=False,
                say=lambda s: None)
    assert _same(a[study]) == _same(b)
    assert "processes" in b["executor"]


def test_workers_reading_the_data_from_a_url_give_the_same_study(in_process, tmp_path):
    # What a Ray node without the driver's file system does: fetch the archive, read its own copy.
    data, a = in_process
    archive = tmp_path / "data.tgz"
    with tarfile.open(archive, "w:gz") as t:
        t.add(data, arcname="data")
    b = explore(_cfg(archive.as_uri(), **STUDIES["grid"], executor=ExecConfig(workers=2)), tmp_path / "b",
                progress=False, say=lambda s: None)
    assert _same(a["grid"]) == _same(b) and b["data"] == archive.as_uri()


@pytest.mark.parametrize("study", list(STUDIES))
def test_ray_gives_the_same_study_as_in_process(local_ray, in_process, tmp_path, study):
    data, a = in_process
    b = explore(_cfg(data, **STUDIES[study], executor=ExecConfig(workers=2, ray_address="local")),
                tmp_path / "b", progress=False, say=lambda s: None)
    assert _same(a[study]) == _same(b)
    assert "ray" in b["executor"]


def test_a_study_shared_from_another_folder_is_refused(in_process, tmp_path):
    data, _ = in_process
    shared = f"sqlite:///{tmp_path / 'shared.db'}"
    explore(_cfg(data, front_seeds=1, storage=shared), tmp_path / "a", progress=False, say=lambda s: None)
    with pytest.raises(ConfigError, match="needs the same --out") as e:
        explore(_cfg(data, front_seeds=1, storage=shared), tmp_path / "b", progress=False, say=lambda s: None)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "b" / "points").exists()  # refused before any training


def test_a_design_another_process_trains_is_left_to_it(tiny_data, tmp_path):
    from squishednets.rundir import RunDir

    cfg = _cfg(tiny_data, front_seeds=1)
    RunDir.open(tmp_path / "ex", cfg, "explore")  # the folder the other worker shares
    busy = tmp_path / "ex" / "points" / design_key({"width": 0.5}) / "s0"
    busy.mkdir(parents=True)
    (busy / ".lock").touch()
    stop = threading.Event()

    def other_worker():  # keeps its lock fresh while the others train, then dies without a result
        while not stop.wait(0.3) and len(_results(tmp_path / "ex")) < len(AXES["width"]) - 1:
            os.utime(busy / ".lock")

    t = threading.Thread(target=other_worker, daemon=True)
    t.start()
    try:
        explore(cfg, tmp_path / "ex", progress=False, say=lambda s: None)
    finally:
        stop.set()
        t.join()
    done = sorted(_results(tmp_path / "ex").items(), key=lambda kv: kv[1])
    assert len(done) == len(AXES["width"])
    assert done[-1][0].startswith(f"points/{design_key({'width': 0.5})}/")  # the others went first


def test_a_stale_lock_is_taken_over_once(tmp_path):
    from squishednets.explore import _PointLock

    lock = tmp_path / ".lock"
    lock.touch()
    os.utime(lock, (time.time() - 60, time.time() - 60))  # its owner died a minute ago
    a, b = _PointLock(tmp_path, grace_s=5), _PointLock(tmp_path, grace_s=5)
    assert a.acquire(tmp_path / "result.json")  # takes the dead owner's lock over
    try:
        fresh = lock.stat().st_ino
        # b saw the dead owner's lock before a replaced it; its takeover must
        # re-check and leave a's fresh lock alone, or both would train
        b._take_over()
        assert lock.is_file() and lock.stat().st_ino == fresh
        assert _PointLock.held(tmp_path, 5)
        assert not (tmp_path / ".lock.takeover").exists()
    finally:
        a.release()
    assert not lock.exists()


def test_a_minutes_budget_is_one_schedule_per_design(tiny_data, tmp_path):
    doc = explore(_cfg(tiny_data, minutes=0.002, seeds=2, front_seeds=1), tmp_path / "ex", progress=False,
                  say=lambda s: None)
    for p in doc["points"]:
        folder = tmp_path / "ex" / "points" / p["key"]
        epochs = json.loads((folder / "epochs.json").read_text())["epochs"]
        assert epochs >= 1 and not list(folder.glob("s*/epochs.json"))
        assert {json.loads(f.read_text())["epochs"] for f in folder.glob("s*/result.json")} == {epochs}
        assert p["seeds"] == [0, 1]


@pytest.mark.parametrize("study", list(STUDIES))
def test_kill_9_then_resume_loses_nothing(tiny_data, tmp_path, study):
    out = tmp_path / "ex"
    args = ["explore", "--out", str(out), "--data", str(tiny_data), "--image-size", "32", "--epochs", "3",
            "--train-batch-size", "8", "--threads", "1", "--train-holdout", "0.34", "--axes", "width",
            "--front-seeds", "1", "--grace-s", "2", "--bench-threads", "1", "--timing-rounds", "1",
            "--no-progress"]
    if study == "nsga2":
        args += ["--strategy", "nsga2", "--axes", "width,pool", "--trials", "4", "--population", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "squishednets.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 600  # generous: a loaded CI machine
    while time.time() < deadline and len(_results(out)) < 1:
        time.sleep(0.2)
    assert _results(out), "the first point never finished"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _results(out)
    assert main(args) == 0
    after = _results(out)
    assert all(after[k] == before[k] for k in before)  # finished points were not trained again
    doc = json.loads((out / "explore.json").read_text())
    assert len(doc["points"]) == 4  # the width sweep's four, or the four trials asked
    assert len({p["name"] for p in doc["points"]}) == len(doc["points"])


def test_impossible_constraints_fail_before_training(tiny_data, tmp_path, capsys):
    out = tmp_path / "ex"
    rc = main(["explore", "--out", str(out), "--data", str(tiny_data), "--image-size", "32", "--sram-kb", "1",
               "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "meets the constraints" in err[0]
    assert not out.exists()


def test_bad_axes_on_the_command_line(tiny_data, tmp_path, capsys):
    rc = main(["explore", "--out", str(tmp_path / "ex"), "--data", str(tiny_data), "--axes", "sr,bogus"])
    assert rc == 2
    assert "unknown axis" in capsys.readouterr().err


def test_run_from_design_sets_the_ancestor(tmp_path):
    from squishednets.cli import build_parser
    from squishednets.config import flag_values, resolve
    from squishednets.pipeline import RunConfig

    g = tmp_path / "d.json"
    g.write_text(design_genome({"sr": 0.25}, 10).to_json())
    a = build_parser().parse_args(["run", "--from-design", str(g)])
    cfg = resolve(RunConfig, flags=flag_values(a))
    assert cfg.ancestor.model == str(g)
    assert os.path.isfile(cfg.ancestor.model)


def test_run_refuses_a_design_evolution_cannot_shrink_before_training(tiny_data, tmp_path, capsys):
    g = tmp_path / "grouped.json"
    g.write_text(design_genome({"groups": 4}, 3).to_json())
    out = tmp_path / "run"
    assert main(["run", "--from-design", str(g), "--data", str(tiny_data), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dense" in err[0]
    assert not out.exists()


def test_random_search_and_a_space_too_small(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="only 4 designs"):
        explore(_cfg(tiny_data, strategy="random", trials=6), tmp_path / "x", progress=False, say=lambda s: None)
    assert not (tmp_path / "x").exists()
    doc = explore(_cfg(tiny_data, strategy="random", trials=3, axes=("width", "pool"), front_seeds=1),
                  tmp_path / "r", progress=False, say=lambda s: None)
    assert len(doc["points"]) >= 3
    assert len({p["name"] for p in doc["points"]}) == len(doc["points"])
    assert set(doc["fronts"]) == {"size", "macs", "latency", "meeting_constraints"}


def test_a_failing_point_fails_alone_and_three_stop_the_run(tiny_data, tmp_path, monkeypatch, capsys):
    import squishednets.explore as ex_mod
    from squishednets.errors import SquishedError

    real = ex_mod._train_and_measure
    bad = design_key({"width": 0.5})

    def flaky(task, out, done):
        if task["key"] == bad:
            raise RuntimeError("out of memory")
        return real(task, out, done)

    monkeypatch.setattr(ex_mod, "_train_and_measure", flaky)
    args = ["explore", "--out", str(tmp_path / "ex"), "--data", str(tiny_data), "--image-size", "32", "--epochs",
            "1", "--train-batch-size", "8", "--threads", "1", "--train-holdout", "0.34", "--axes", "width",
            "--front-seeds", "1", "--grace-s", "2", "--bench-threads", "1", "--timing-rounds", "1",
            "--no-progress"]
    assert main(args) == 1  # the others finished and are reported; the command says one failed
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: 1 design point(s) failed") and "out of memory" in err[-1]
    doc = json.loads((tmp_path / "ex" / "explore.json").read_text())
    assert len(doc["points"]) == len(AXES["width"]) - 1
    assert bad not in {p["key"] for p in doc["points"]}
    assert [f["key"] for f in doc["failed"]] == [bad] and "out of memory" in doc["failed"][0]["error"]
    assert "Failed design points" in (tmp_path / "ex" / "explore.md").read_text()
    # Fixed, the same command trains the missing point and nothing else.
    monkeypatch.setattr(ex_mod, "_train_and_measure", real)
    before = _results(tmp_path / "ex")
    assert main(args) == 0
    doc = json.loads((tmp_path / "ex" / "explore.json").read_text())
    assert len(doc["points"]) == len(AXES["width"]) and doc["failed"] == []
    assert all(_results(tmp_path / "ex")[k] == v for k, v in before.items())
    # Every point failing: one line, after three.
    monkeypatch.setattr(ex_mod, "_train_and_measure", lambda *a: (_ for _ in ()).throw(RuntimeError("disk full")))
    with pytest.raises(SquishedError, match="three design points failed in a row.*disk full") as e:
        explore(_cfg(tiny_data, axes=("sr",)), tmp_path / "ex2", progress=False, say=lambda s: None)
    assert "\n" not in str(e.value)
