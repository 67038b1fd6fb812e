"""Shared fixtures: tiny synthetic image folders and a few real Imagenette photos."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from squishednets.genome import get_genome
from squishednets.model import build

def bn_model(classes=4, seed=0):
    """A seeded SqueezeNet v1.1 whose BatchNorm statistics are not the
    identity (two training-mode passes), so that folding them is tested."""
    torch.manual_seed(seed)
    m = build(get_genome("squeezenet1_1", classes, batchnorm=True))
    m.train()
    with torch.no_grad():
        for _ in range(2):
            m(torch.randn(8, 3, 48, 48))
    return m.eval()


REAL = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "imagenette"


@pytest.fixture(autouse=True)
def _isolate(tmp_path_factory, monkeypatch):
    # Caches never land in the user's home during tests; few threads keep CI steady.
    monkeypatch.setenv("SQUISHEDNETS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    torch.set_num_threads(2)


def make_folder(root: Path, classes=("a", "b", "c"), n_train=6, n_val=3, size=40, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for ci, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                # Class-dependent colour so that a tiny network can learn something.
                base = np.zeros((size, size + 8, 3), np.uint8)
                base[..., ci % 3] = 160
                arr = np.clip(base + rng.integers(0, 90, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(d / f"{c}_{i}.jpg", quality=90)
    return root


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    return make_folder(tmp_path / "data")


@pytest.fixture
def real_data(tmp_path) -> Path:
    """A few real photos of three Imagenette classes (train 12, val 6 each)."""
    if not REAL.is_dir():
        pytest.skip("../shared/datasets/imagenette is not beside the checkout")
    out = tmp_path / "imagenette-mini"
    for split, n in (("train", 12), ("val", 6)):
        for wnid in sorted(p.name for p in (REAL / split).iterdir())[:3]:
            d = out / split / wnid
            d.mkdir(parents=True)
            for f in sorted((REAL / split / wnid).iterdir())[:n]:
                shutil.copy(f, d / f.name)
    return out


@pytest.fixture(scope="session")
def real_lineage(tmp_path_factory):
    """A small real lineage: an ancestor trained on a few real photos, then 3 generations."""
    if not REAL.is_dir():
        pytest.skip("../shared/datasets/imagenette is not beside the checkout")
    root = tmp_path_factory.mktemp("lineage")
    data = root / "data"
    for split, n in (("train", 16), ("val", 6)):
        for wnid in sorted(p.name for p in (REAL / split).iterdir())[:3]:
            (data / split / wnid).mkdir(parents=True)
            for f in sorted((REAL / split / wnid).iterdir())[:n]:
                shutil.copy(f, data / split / wnid / f.name)
    from squishednets.evolve import GENERATION_TRAIN, EvolveConfig, evolve
    from squishednets.train import TrainConfig, run_training

    cfg = TrainConfig(data=str(data), image_size=40, epochs=3, batch_size=12, threads=2, optimizer="adamw", lr=5e-3,
                      holdout=0.25)
    run_training(cfg, root / "anc", progress=False)
    evolve(root / "anc", root / "ev", EvolveConfig(
        generations=4, target_reduction=4.0, round_to=1,
        train=dataclasses.replace(GENERATION_TRAIN, epochs=1, batch_size=12, threads=2)), progress=False)
    return root


@pytest.fixture(scope="session")
def local_ray(tmp_path_factory):
    """One local Ray instance for the session (starting one takes seconds),
    shared by the executor's and explore's tests. Its workers import test
    modules by name, hence the PYTHONPATH, and keep their caches out of the
    home folder like ``_isolate``."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'squishednets[ray]')")
    tests = Path(__file__).resolve().parent
    path = os.pathsep.join([str(tests), str(tests.parent / "src"), os.environ.get("PYTHONPATH", "")])
    env = {"PYTHONPATH": path, "SQUISHEDNETS_CACHE": str(tmp_path_factory.getbasetemp() / "cache")}
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": env})
    yield ray
    ray.shutdown()
