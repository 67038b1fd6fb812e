"""ONNX export: parity with PyTorch on noise and real images under a
tolerance relative to the logit scale, dead exports refused, int8 modes
that hold without VNNI, and a full disk that leaves no partial file."""

import errno
import logging

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from conftest import bn_model
from squishednets import export as ex
from squishednets.checkpoint import save_checkpoint
from squishednets.cli import main
from squishednets.data import load_split
from squishednets.errors import CheckpointError, ConfigError, ExportError, StorageError
from squishednets.export import INT8_MODES, check_onnx, export_checkpoint, export_onnx
from squishednets.genome import get_genome
from squishednets.model import build
from squishednets.ort import CPU_FLAGS
from squishednets.train import TrainConfig, checkpoint_config

INT8_KEYS = {"int8_path", "int8_bytes", "int8_mode", "int8_config", "cpu_flags", "calibration_images", "test_split",
             "test_images", "fp32_test_top1", "int8_test_top1", "fp32_b32_img_s", "int8_b32_img_s", "int8_speedup",
             "speed_threads", "int8_warning"}


def _hidden(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture
def ck(tmp_path, tiny_data):
    """A checkpoint that records its data (tiny_data: 3 classes, 3 val images each) and size."""
    torch.manual_seed(0)
    cfg = checkpoint_config(TrainConfig(data=str(tiny_data), image_size=40), ["a", "b", "c"])
    return save_checkpoint(tmp_path / "ck", build(get_genome("squeezenet1_1", 3)).eval(), {"top1": 0.5}, cfg)


def test_export_parity_two_batch_sizes(tmp_path):
    m = bn_model()
    info = export_onnx(m, tmp_path / "m.onnx", 48)
    assert info["max_abs_diff"] < 1e-4 and info["bytes"] > 1000
    assert info["real_images"] == 0 and info["real_max_abs_diff"] is None and info["real_top1_agreement"] is None
    g = onnx.load(str(tmp_path / "m.onnx")).graph
    assert not any(n.op_type == "BatchNormalization" for n in g.node)  # folded away
    assert g.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    import onnxruntime as ort

    s = ort.InferenceSession(str(tmp_path / "m.onnx"))
    for b in (1, 7):
        x = torch.randn(b, 3, 48, 48)
        np.testing.assert_allclose(s.run(None, {"input": x.numpy()})[0], m(x).detach().numpy(), rtol=1e-3, atol=1e-5)
    assert _hidden(tmp_path) == []


def test_failed_parity_check_is_an_error(tmp_path):
    m = bn_model()
    export_onnx(m, tmp_path / "m.onnx", 48, check=False)
    other = bn_model(seed=1)
    with pytest.raises(ExportError, match="differs from PyTorch"):
        check_onnx(other, tmp_path / "m.onnx", 48)


def test_parity_tolerance_follows_the_logit_scale():
    rng = np.random.default_rng(0)
    big = rng.uniform(-1, 1, (5, 10)).astype(np.float32) * 1e4
    big[0, 0] = 1e4  # max |logit|: the bound is 1e-3 x 1e4 = 10
    assert ex._compare(big, big + 5, "x", 1e-3) == 5  # 5e-4 of the largest logit: float noise
    with pytest.raises(ExportError, match=r"max \|diff\| 20 > 10"):
        ex._compare(big, big + 20, "x", 1e-3)
    small = rng.normal(0, 0.1, (5, 10)).astype(np.float32)
    assert ex._compare(small, small + 5e-4, "x", 1e-3) == pytest.approx(5e-4, rel=1e-3)  # floor: 1e-3 absolute
    with pytest.raises(ExportError, match="differs"):
        ex._compare(small, small + 5e-3, "x", 1e-3)


def test_degenerate_outputs_are_errors():
    ref = np.random.default_rng(0).normal(0, 1, (4, 3)).astype(np.float32)
    for real in (True, False):
        with pytest.raises(ExportError, match="all zero; PyTorch's are not: the export is broken"):
            ex._compare(ref, np.zeros_like(ref), "m.onnx", 1e-3, real=real)
        with pytest.raises(ExportError, match="the same for every image; PyTorch's are not"):
            ex._compare(ref, np.tile(ref[:1], (4, 1)), "m.onnx", 1e-3, real=real)
    zeros = np.zeros_like(ref)
    with pytest.raises(ExportError, match="all zero; PyTorch's are too: the network itself is dead"):
        ex._compare(zeros, zeros, "m.onnx", 1e-3, real=True)
    # Noise may switch off every class of a healthy ReLU-headed classifier.
    assert ex._compare(zeros, zeros, "m.onnx", 1e-3, real=False) == 0
    one = ref[:1]
    assert ex._compare(one, one, "m.onnx", 1e-3) == 0  # one image cannot be "the same for every image"


@pytest.mark.parametrize("bias, words", [(0.0, "all zero"), (0.5, "the same for every image")])
def test_dead_network_is_not_exported(tmp_path, tiny_data, bias, words):
    m = bn_model(classes=3)
    with torch.no_grad():
        m.conv10.weight.zero_()
        m.conv10.bias.fill_(bias)
    out = tmp_path / "out" / "m.onnx"
    with pytest.raises(ExportError, match=f"{words}; PyTorch's are too: the network itself is dead") as ei:
        export_onnx(m, out, 40, images_u8=load_split(tiny_data, "val", 40).images)
    assert f"{out} on 9 real images" in str(ei.value) and "\n" not in str(ei.value)
    assert not out.exists() and _hidden(out.parent) == []  # checked before it is written
    assert export_onnx(m, out, 40)["real_images"] == 0  # noise alone cannot tell a dead network


def test_parity_on_real_images(tmp_path, tiny_data):
    val = load_split(tiny_data, "val", 40)
    info = export_onnx(bn_model(classes=3), tmp_path / "m.onnx", 40, images_u8=val.images)
    assert info["real_images"] == len(val) == 9
    assert 0 <= info["real_max_abs_diff"] < 1e-3 and 0 <= info["real_top1_agreement"] <= 1


def test_export_checkpoint_checks_on_its_val_images(tmp_path, ck):
    info = export_checkpoint(ck, tmp_path / "m.onnx")
    assert info["real_images"] == 9 and info["real_data"].endswith("(val)") and info["image_size"] == 40
    info = export_checkpoint(ck, tmp_path / "m.onnx", check_images=4)
    assert info["real_images"] == 4


def test_export_checkpoint_without_its_data_checks_on_noise(tmp_path, tiny_data):
    """A checkpoint whose data folder has moved away still exports, checked on noise."""
    c = save_checkpoint(tmp_path / "ck", build(get_genome("squeezenet1_1", 3)).eval(), {},
                        checkpoint_config(TrainConfig(data=str(tmp_path / "moved"), image_size=40), ["a", "b", "c"]))
    info = export_checkpoint(c, tmp_path / "m.onnx")
    assert info["real_images"] == 0 and info["real_data"] is None and info["max_abs_diff"] < 1e-3


def _conv_weights(path):
    g = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    conv_w = {n.input[1] for n in g.node if n.op_type == "Conv"}
    return [inits[n.input[0]] for n in g.node if n.op_type == "DequantizeLinear" and n.output[0] in conv_w]


@pytest.mark.parametrize("mode", list(INT8_MODES))
def test_int8_modes(tmp_path, ck, mode):
    info = export_checkpoint(ck, tmp_path / "m.onnx", int8=True, int8_mode=mode, calib_images=12, threads=1)
    assert INT8_KEYS <= set(info) and info["int8_mode"] == mode
    act, weight, reduce_range = INT8_MODES[mode]
    assert info["int8_config"] == {"format": "QDQ", "activation_type": act, "weight_type": weight,
                                   "reduce_range": reduce_range, "per_channel": True}
    assert set(info["cpu_flags"]) == set(CPU_FLAGS) and info["speed_threads"] == 1
    w = _conv_weights(info["int8_path"])
    assert len(w) == 26  # every convolution of SqueezeNet v1.1 is quantized
    if weight == "QUInt8":
        assert all(x.dtype == np.uint8 for x in w)
    else:
        assert all(x.dtype == np.int8 for x in w)
        # 7-bit weights keep u8 x s8 pair sums inside 16 bits on CPUs without VNNI
        assert (max(int(np.abs(x.astype(np.int32)).max()) for x in w) <= 64) == reduce_range
    assert info["test_split"] == "val" and info["test_images"] == 9  # tiny_data has no test/: val is the test split
    assert 0 <= info["fp32_test_top1"] <= 1 and 0 <= info["int8_test_top1"] <= 1
    assert info["int8_speedup"] == pytest.approx(info["int8_b32_img_s"] / info["fp32_b32_img_s"])
    assert info["fp32_b32_img_s"] > 0 and info["int8_b32_img_s"] > 0
    assert (info["int8_warning"] is not None) == (info["fp32_test_top1"] - info["int8_test_top1"] > 0.01)
    assert _hidden(tmp_path) == []


@pytest.mark.parametrize("fp32, int8, warned", [(0.90, 0.80, True), (0.90, 0.895, False)])
def test_int8_drop_over_one_point_warns(tmp_path, ck, monkeypatch, caplog, fp32, int8, warned):
    monkeypatch.setattr(ex, "ort_top1", lambda path, *a: int8 if str(path).endswith(".int8.onnx") else fp32)
    with caplog.at_level(logging.WARNING, logger="squishednets.export"):
        info = export_checkpoint(ck, tmp_path / "m.onnx", int8=True, calib_images=12, threads=1)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if warned:
        assert len(lines) == 1 and "10.0 points below fp32" in lines[0] and info["int8_warning"] == lines[0]
    else:
        assert lines == [] and info["int8_warning"] is None


def test_unknown_int8_mode_fails_first(tmp_path, ck):
    with pytest.raises(ConfigError, match="unknown int8 mode 'u4'; choose one of reduce_range, u8u8"):
        export_checkpoint(ck, tmp_path / "m.onnx", int8=True, int8_mode="u4")
    assert not (tmp_path / "m.onnx").exists()


def _full_disk_export(monkeypatch):
    real = torch.onnx.export

    def half_then_full(model, args, f, *a, **k):
        real(model, args, f, *a, **k)
        with open(f, "ab") as fh:
            fh.write(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch.onnx, "export", half_then_full)


def test_full_disk_leaves_no_partial_onnx(tmp_path, monkeypatch):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous export")
    _full_disk_export(monkeypatch)
    with pytest.raises(StorageError, match=f"cannot write {out}: no space left on the device; free space"):
        export_onnx(bn_model(), out, 48)
    assert out.read_bytes() == b"previous export" and _hidden(tmp_path) == []


def test_full_disk_during_int8(tmp_path, ck, monkeypatch):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ex, "quantize_static", full)
    with pytest.raises(StorageError, match="m.int8.onnx: no space left"):
        export_checkpoint(ck, tmp_path / "m.onnx", int8=True, calib_images=12)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("m")) == ["m.onnx"]
    assert _hidden(tmp_path) == []


def test_cli_export_on_a_full_disk_is_one_line(tmp_path, ck, monkeypatch, capsys):
    _full_disk_export(monkeypatch)
    assert main(["export", str(ck), "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write") and "free space on the device or choose another --out" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "m.onnx").exists() and _hidden(tmp_path) == []


@pytest.mark.slow
def test_export_command_with_int8(real_lineage, tmp_path, capsys):
    ck = real_lineage / "ev" / "gen_04" / "model"
    info = export_checkpoint(ck, tmp_path / "m.onnx", int8=True, calib_images=32)
    assert info["int8_bytes"] < info["bytes"] and info["int8_mode"] == "reduce_range"
    assert 0 <= info["int8_test_top1"] <= 1 and 0 <= info["fp32_test_top1"] <= 1 and info["test_images"] == 18
    assert info["real_images"] == 18 and 0 <= info["real_top1_agreement"] <= 1  # the lineage's own val photos
    code = main(["export", str(ck), "--out", str(tmp_path / "x.txt")])
    assert code == 2 and "must end in .onnx" in capsys.readouterr().err


def test_a_checkpoint_of_another_config_version_is_refused(tmp_path):
    c = save_checkpoint(tmp_path / "ck", build(get_genome("squeezenet1_1", 3)).eval(), {}, {"image_size": 40})
    with pytest.raises(CheckpointError, match="another version of squishednets"):
        export_checkpoint(c, tmp_path / "m.onnx")
