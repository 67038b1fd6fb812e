import pytest
import torch
from safetensors.torch import load_file, save_file

import squishednets.checkpoint as ckmod
from squishednets.checkpoint import load_checkpoint, resolve_genome, save_checkpoint
from squishednets.errors import CheckpointError, GenomeError
from squishednets.genome import get_genome
from squishednets.model import build


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


def test_resolve_genome_by_name_file_and_checkpoint(tmp_path):
    g = get_genome("squeezenet1_0", 4)
    (tmp_path / "g.json").write_text(g.to_json())
    save_checkpoint(tmp_path / "ck", build(g))
    assert resolve_genome("squeezenet1_0", num_classes=4, batchnorm=False) == g
    assert resolve_genome(tmp_path / "g.json") == g
    assert resolve_genome(tmp_path / "ck", num_classes=7).num_classes == 7
    with pytest.raises(GenomeError, match="neither a registered genome"):
        resolve_genome(tmp_path / "nothing")
