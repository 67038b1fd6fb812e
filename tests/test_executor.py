import argparse
import dataclasses
import shutil
import sys
from collections import Counter

import pytest
import torch

from conftest import make_folder
from executor_tasks import always_die, die_once, fail_on_three, noise_sum
from squishednets import evolve as evolve_module
from squishednets.checkpoint import load_checkpoint
from squishednets.config import add_options, flag_values, resolve
from squishednets.data import load_splits
from squishednets.errors import ConfigError
from squishednets.evolve import GENERATION_TRAIN, EvolveConfig, evolve
from squishednets.executor import ExecConfig, TaskLostError, make_executor
from squishednets.train import TrainConfig, run_training



def _run(ex, fn, items):
    got = list(ex.map_unordered(fn, items))
    assert sorted(i for i, _ in got) == list(range(len(items)))  # each result once
    return [r for _, r in sorted(got, key=lambda t: t[0])]


# -- options -----------------------------------------------------------------------------
@pytest.mark.parametrize("kw,msg", [
    (dict(workers=0), r"--workers must be >= 1 \(1: in-process\), got 0"),
    (dict(retries=-1), r"--retries must be >= 0, got -1"),
    (dict(ray_address="somewhere"), r"--ray-address must be auto, local, HOST:PORT"),
    (dict(ray_address="host:99999"), r"--ray-address must be auto, local, HOST:PORT"),
    (dict(ray_address="auto", workers=2), r"--workers 2 counts local processes.*drop --workers"),
    (dict(gpus=-1), r"--gpus must be >= 0"),
    (dict(workers=2, gpus=1), r"--gpus 1 reserves GPUs for Ray tasks.*drop --gpus, or add --ray-address"),
])
def test_bad_options_are_one_line_errors(kw, msg):
    with pytest.raises(ConfigError, match=msg) as e:
        ExecConfig(**kw)
    assert "\n" not in str(e.value)


def test_cuda_on_ray_needs_gpus_reserved():
    with pytest.raises(ConfigError, match="add --gpus 1") as e:
        EvolveConfig(train=dataclasses.replace(EvolveConfig().train, device="cuda"),
                     executor=ExecConfig(ray_address="auto"))
    assert "\n" not in str(e.value)
    ExecConfig(ray_address="auto", gpus=0.25).check_device("cuda")  # reserved: fine
    ExecConfig(ray_address="auto").check_device("auto")  # auto may train on CPU there
    ExecConfig(workers=2).check_device("cuda")  # local processes see every GPU


def test_options_from_the_command_line_and_resume():
    p = argparse.ArgumentParser()
    add_options(p, EvolveConfig)
    a = p.parse_args(["--executor-workers", "3", "--executor-ray-address", "local", "--executor-retries", "0"])
    cfg = resolve(EvolveConfig, flags=flag_values(a))
    assert cfg.executor == ExecConfig(workers=3, ray_address="local", retries=0)
    a = p.parse_args(["--executor-ray-address", "off"])
    assert resolve(EvolveConfig, flags=flag_values(a)).executor.ray_address is None
    # Where candidates train never stops a run folder from resuming.
    assert all(not f.metadata["resume"] for f in dataclasses.fields(ExecConfig))


def test_the_default_runs_in_process():
    with make_executor(ExecConfig()) as ex:
        assert ex.name == "in-process"
        assert _run(ex, lambda s: s * 2, [1, 2, 3]) == [2, 4, 6]  # any callable in-process


# -- local processes ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def pool():
    with make_executor(ExecConfig(workers=2, retries=2)) as ex:
        yield ex


def test_processes_give_the_in_process_results(pool):
    items = list(range(7))
    with make_executor(ExecConfig()) as here:
        want = _run(here, noise_sum, items)
    assert pool.name == "processes(2)"
    assert _run(pool, noise_sum, items) == want
    assert _run(pool, noise_sum, items) == want  # the pool serves several maps


def test_an_ordinary_exception_propagates_without_retry(pool):
    with pytest.raises(ValueError, match="three is not allowed"):
        list(pool.map_unordered(fail_on_three, list(range(6))))
    assert _run(pool, noise_sum, [1]) == [noise_sum(1)]  # usable afterwards


def test_a_lambda_is_refused_by_a_process_pool(pool):
    with pytest.raises(TypeError, match="module-level function"):
        list(pool.map_unordered(lambda x: x, [1]))


def test_a_killed_worker_is_retried_and_its_result_recorded_once(pool, tmp_path):
    """Item 0's worker dies before it writes its result, item 1's after: both
    are retried, the retry of item 1 returns the file its first run wrote."""
    items = [{"dir": str(tmp_path), "i": i} for i in range(4)]
    got = _run(pool, die_once, items)
    assert (tmp_path / "died_0").exists() and (tmp_path / "died_1").exists()
    assert got == [{"i": i, "value": noise_sum(i)} for i in range(4)]
    written = Counter((tmp_path / "written.log").read_text().split())
    assert written["1"] == 1 and max(written.values()) == 1  # no result computed twice


def test_a_pool_closing_under_submit_is_restarted(pool, monkeypatch):
    """A worker's death can leave the pool closing its pipes before it marks
    itself broken; submit then fails with OSError. The task is retried on a
    fresh pool, not lost."""
    from concurrent.futures import ProcessPoolExecutor
    real, calls = ProcessPoolExecutor.submit, []

    def flaky(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("handle is closed")
        return real(self, *a, **k)

    monkeypatch.setattr(ProcessPoolExecutor, "submit", flaky)
    assert _run(pool, noise_sum, [0, 1, 2]) == [noise_sum(i) for i in range(3)]
    assert len(calls) == 4  # the refused task was submitted again


def test_a_task_that_always_kills_its_worker_gives_up_after_the_retries(tmp_path):
    with make_executor(ExecConfig(workers=2, retries=1)) as ex:
        with pytest.raises(TaskLostError, match=r"task 0 lost its worker 2 times.*--retries") as e:
            list(ex.map_unordered(always_die, [{"dir": str(tmp_path)}]))
    assert "\n" not in str(e.value)
    assert len((tmp_path / "attempts.log").read_text().split()) == 2


# -- evolve's candidates through the executor -----------------------------------------------
@pytest.fixture(scope="module")
def ancestor(tmp_path_factory):
    root = tmp_path_factory.mktemp("executor")
    data = make_folder(root / "data")
    cfg = TrainConfig(data=str(data), image_size=32, epochs=2, batch_size=6, threads=1, holdout=0.25,
                      cache_dir=str(root / "cache"))
    run_training(cfg, root / "anc", progress=False)
    return root / "anc"


def evolve_cfg(**executor):
    return EvolveConfig(generations=2, population=2, target_reduction=2.0, round_to=1,
                        train=dataclasses.replace(GENERATION_TRAIN, epochs=2, batch_size=6, threads=1),
                        executor=ExecConfig(**executor))


@pytest.fixture(scope="module")
def in_process_lineage(ancestor, tmp_path_factory):
    run = tmp_path_factory.mktemp("in_process") / "ev"
    loads = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(evolve_module, "load_splits", lambda *a, **k: loads.append(a) or load_splits(*a, **k))
        lineage = evolve(ancestor, run, evolve_cfg(), progress=False)
    return run, lineage, len(loads)


def test_in_process_candidates_use_the_data_already_loaded(in_process_lineage):
    assert in_process_lineage[2] == 1  # the driver's load, lent to its 4 candidates


def _same_lineage(a, run_a, b, run_b):
    assert len(a.generations) == len(b.generations)
    for ea, eb in zip(a.generations, b.generations):
        for k in ("params", "size_mb", "macs", "widths", "heldout_top1", "test_top1", "env_factor", "seed",
                  "selected", "parent"):
            assert getattr(ea, k) == getattr(eb, k), (ea.generation, k)
        assert [c.heldout_top1 for c in ea.candidates] == [c.heldout_top1 for c in eb.candidates]
    wa = load_checkpoint(run_a / a.generations[-1].path).model.state_dict()
    wb = load_checkpoint(run_b / b.generations[-1].path).model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_evolve_on_two_workers_gives_the_in_process_lineage(ancestor, in_process_lineage, tmp_path):
    run_a, a, _ = in_process_lineage
    b = evolve(ancestor, tmp_path / "ev", evolve_cfg(workers=2), progress=False)
    _same_lineage(a, run_a, b, tmp_path / "ev")
    assert b.config["executor"]["workers"] == 2


def test_finished_candidates_are_not_trained_again(ancestor, in_process_lineage, tmp_path):
    """A task whose result is on disk returns it: a run whose generations were
    lost but whose candidates were written (here in-process) resumes on other
    workers without training any candidate again."""
    run_a, a, _ = in_process_lineage
    run = tmp_path / "ev"
    shutil.copytree(run_a, run)
    for p in ("gen_02/model", "gen_01/model"):
        shutil.rmtree(run / p)
    written = {p: p.stat().st_mtime_ns for p in run.glob("gen_*/cand_*/model/weights.safetensors")}
    assert len(written) == 4
    b = evolve(ancestor, run, evolve_cfg(workers=2), progress=False)
    assert {p: p.stat().st_mtime_ns for p in written} == written
    _same_lineage(a, run_a, b, run)


# -- Ray ---------------------------------------------------------------------------------
def test_ray_missing_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ConfigError, match=r"--ray-address needs Ray: pip install 'squishednets\[ray\]'"):
        make_executor(ExecConfig(ray_address="local"))


def test_an_unreachable_ray_cluster_is_one_line(monkeypatch):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'squishednets[ray]')")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("ray.init called for an unreachable address"))
    with pytest.raises(ConfigError, match=r"no Ray cluster answers at 127.0.0.1:9 .*ray start --head") as e:
        make_executor(ExecConfig(ray_address="127.0.0.1:9"))
    assert "\n" not in str(e.value)




def test_ray_gives_the_in_process_results(local_ray):
    items = list(range(7))
    with make_executor(ExecConfig(ray_address="local")) as ex:
        assert ex.name == "ray(local)"
        assert _run(ex, noise_sum, items) == [noise_sum(i) for i in items]
        with pytest.raises(ValueError, match="three is not allowed"):
            list(ex.map_unordered(fail_on_three, list(range(6))))
    assert local_ray.is_initialized()  # an instance it did not start is left running


def test_ray_retries_a_killed_worker(local_ray, tmp_path):
    items = [{"dir": str(tmp_path), "i": i} for i in range(4)]
    with make_executor(ExecConfig(ray_address="local", retries=1)) as ex:
        got = _run(ex, die_once, items)
    assert (tmp_path / "died_0").exists() and (tmp_path / "died_1").exists()
    assert got == [{"i": i, "value": noise_sum(i)} for i in range(4)]
    # Ray retries only the task whose worker died: every result written once.
    assert sorted((tmp_path / "written.log").read_text().split()) == ["0", "1", "2", "3"]


def test_evolve_on_ray_gives_the_in_process_lineage(local_ray, ancestor, in_process_lineage, tmp_path):
    run_a, a, _ = in_process_lineage
    b = evolve(ancestor, tmp_path / "ev", evolve_cfg(ray_address="local"), progress=False)
    _same_lineage(a, run_a, b, tmp_path / "ev")
