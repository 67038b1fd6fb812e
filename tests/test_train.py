import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import squishednets.checkpoint as ckmod
from squishednets.checkpoint import load_checkpoint, save_checkpoint
from squishednets.errors import CheckpointError, ConfigError
from squishednets.genome import get_genome
from squishednets.model import build
from squishednets.train import TrainConfig, evaluate, fit, lr_at, param_groups, run_training

TINY = dict(image_size=32, epochs=3, batch_size=8, eval_every=1, threads=2)


def test_lr_schedule():
    assert lr_at(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0) == pytest.approx(0.5)
    assert lr_at(100, 100, 10, 1.0, 0.1) == pytest.approx(0.1)


def test_no_weight_decay_on_bn_and_bias():
    m = build(get_genome("squeezenet1_1", 3, batchnorm=True))
    decay, no_decay = param_groups(m, 5e-4)
    assert all(p.ndim == 4 for p in decay["params"])
    assert all(p.ndim == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(m.parameters()))


def test_train_run_writes_checkpoint(tiny_data, tmp_path):
    cfg = TrainConfig(data=str(tiny_data), **TINY)
    m = run_training(cfg, tmp_path / "run", progress=False)
    ck = load_checkpoint(tmp_path / "run")
    assert ck.genome.num_classes == 3 and ck.genome.batchnorm
    assert set(m) >= {"top1", "top5", "val", "history", "classes"}
    assert len(m["history"]) == 3 and all("val_top1" in h for h in m["history"])
    assert m["val"]["n"] == 9 and sum(map(sum, m["val"]["confusion"])) == 9
    assert json.loads((tmp_path / "run" / "model" / "config.json").read_text())["image_size"] == 32
    assert (tmp_path / "run" / "train.log").read_text().count("epoch") >= 3
    # The reloaded network gives the metrics that were saved with it.
    from squishednets.data import load_dataset
    _, val = load_dataset(tiny_data, 32)
    assert evaluate(ck.model, val.images, val.labels, 3)["top1"] == pytest.approx(m["top1"])


def test_learns_on_real_photos(real_data, tmp_path):
    """A few epochs on 36 real photos beat chance on the training set."""
    cfg = TrainConfig(data=str(real_data), image_size=48, epochs=15, batch_size=12, threads=2, optimizer="adamw",
                      lr=5e-3, warmup_epochs=1, eval_every=0, min_scale=0.8)
    m = run_training(cfg, tmp_path / "run", progress=False)
    assert m["history"][-1]["loss"] < m["history"][0]["loss"]
    assert max(h["train_acc"] for h in m["history"][-3:]) > 0.6  # chance is 1/3


class Stop(Exception):
    pass


def test_resume_gives_identical_weights(tiny_data, tmp_path):
    from squishednets.data import load_dataset

    train, _ = load_dataset(tiny_data, 32)
    cfg = TrainConfig(data=str(tiny_data), image_size=32, epochs=4, batch_size=6, threads=2)
    g = get_genome("squeezenet1_1", 3, batchnorm=True)

    torch.manual_seed(0)
    ref = build(g)
    fit(ref, train.images, train.labels, cfg, state_dir=tmp_path / "a", progress=False)

    torch.manual_seed(0)
    m = build(g)

    def stop_after_two(rec):
        if rec["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        fit(m, train.images, train.labels, cfg, state_dir=tmp_path / "b", progress=False, on_epoch=stop_after_two)
    torch.manual_seed(123)  # a fresh process would have other global RNG state
    resumed = build(g)
    fit(resumed, train.images, train.labels, cfg, state_dir=tmp_path / "b", progress=False)
    for (k, a), (_, b) in zip(ref.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k


def test_resume_with_other_settings_is_refused(tiny_data, tmp_path):
    from squishednets.data import load_dataset

    train, _ = load_dataset(tiny_data, 32)
    g = get_genome("squeezenet1_1", 3)
    fit(build(g), train.images, train.labels, TrainConfig(image_size=32, epochs=1, batch_size=6),
        state_dir=tmp_path / "s", progress=False)
    with pytest.raises(CheckpointError, match="other settings"):
        fit(build(g), train.images, train.labels, TrainConfig(image_size=32, epochs=1, batch_size=6, lr=0.3),
            state_dir=tmp_path / "s", progress=False)


def test_run_folder_is_not_overwritten(tiny_data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    with pytest.raises(ConfigError, match="already exists; pass --resume"):
        run_training(TrainConfig(data=str(tiny_data), **TINY), out, progress=False)
    assert (out / "precious.txt").read_text() == "keep"


def test_masks_keep_pruned_weights_at_zero(tiny_data):
    from squishednets.data import load_dataset

    train, _ = load_dataset(tiny_data, 32)
    g = get_genome("squeezenet1_1", 3)
    m = build(g)
    mask = torch.rand_like(m.fires[0].expand3x3.conv.weight) > 0.5
    fit(m, train.images, train.labels, TrainConfig(image_size=32, epochs=1, batch_size=6), progress=False,
        masks={"fires.0.expand3x3.conv.weight": mask})
    w = m.fires[0].expand3x3.conv.weight
    assert (w[~mask] == 0).all() and (w[mask] != 0).float().mean() > 0.9


def test_checkpoint_round_trip(tmp_path):
    g = get_genome("squeezenet1_1", 5, batchnorm=True)
    m = build(g)
    save_checkpoint(tmp_path / "ck", m, {"top1": 0.5}, {"image_size": 32})
    ck = load_checkpoint(tmp_path / "ck")
    assert ck.genome == g and ck.metrics["top1"] == 0.5 and ck.config["image_size"] == 32
    for k, v in m.state_dict().items():
        assert torch.equal(v, ck.model.state_dict()[k])


def test_checkpoint_with_weights_that_do_not_fit(tmp_path):
    g = get_genome("squeezenet1_1", 5)
    save_checkpoint(tmp_path / "ck", build(g))
    w = load_file(str(tmp_path / "ck" / "weights.safetensors"))
    w["conv10.weight"] = torch.zeros(7, 512, 1, 1)
    save_file(w, str(tmp_path / "ck" / "weights.safetensors"))
    with pytest.raises(CheckpointError, match=r"conv10.weight is \(7, 512, 1, 1\) but the genome needs \(5, 512, 1, 1\)"):
        load_checkpoint(tmp_path / "ck")


def test_interrupted_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    g = get_genome("squeezenet1_1", 5)
    first = build(g)
    save_checkpoint(tmp_path / "ck", first, {"n": 1})
    real_save = ckmod.save_file

    def half_then_die(tensors, path, metadata=None):
        with open(path, "wb") as fh:
            fh.write(b"\0" * 100)  # half a file, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(ckmod, "save_file", half_then_die)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "ck", build(g), {"n": 2})
    monkeypatch.setattr(ckmod, "save_file", real_save)
    ck = load_checkpoint(tmp_path / "ck")
    assert ck.metrics == {"n": 1}
    for k, v in first.state_dict().items():
        assert torch.equal(v, ck.model.state_dict()[k])
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no temporary left behind


def test_crash_between_renames_is_recovered(tmp_path):
    g = get_genome("squeezenet1_1", 5)
    save_checkpoint(tmp_path / "ck", build(g), {"n": 1})
    (tmp_path / "ck").rename(tmp_path / ".ck.old")  # the state after the first rename
    assert load_checkpoint(tmp_path / "ck").metrics == {"n": 1}


def test_bad_checkpoint_paths(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing")
    (tmp_path / "f").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        load_checkpoint(tmp_path / "f")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        load_checkpoint(tmp_path / "empty")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "genome.json").write_text(get_genome("squeezenet1_1", 3).to_json())
    (tmp_path / "junk" / "weights.safetensors").write_text("not safetensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(tmp_path / "junk")
