"""ONNX export that ships: BatchNorm folded, a dynamic batch axis, checked.

The exported graph is the BN-free network of ``model.fold_batchnorm`` (the
parameters the paper's size counts). Each export is run in ONNX Runtime at
two batch sizes and compared with PyTorch (rtol 1e-3, atol 1e-5, as
torchvision's ``test_onnx.py`` does); a failed check is an error. ``--int8``
adds static quantization calibrated on real training images, and its val
top-1 is measured beside fp32's, never assumed.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import normalize_batch
from .errors import ExportError
from .model import SqueezeNet, fold_batchnorm

__all__ = ["export_onnx", "check_onnx", "ort_predict", "ort_top1", "quantize_int8", "export_checkpoint"]

log = logging.getLogger(__name__)
OPSET = 17


def export_onnx(model: SqueezeNet, path: str | Path, image_size: int, check: bool = True) -> dict[str, Any]:
    """Write ``model`` (BN folded) to ``path``; with ``check``, verify it."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folded = fold_batchnorm(model.cpu()).eval()
    x = torch.randn(2, 3, image_size, image_size)
    tmp = path.with_name(f".{path.name}.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript-based exporter gives a compact graph for this plain
        # convolutional network, without the dynamo exporter's start-up time.
        torch.onnx.export(folded, (x,), str(tmp), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=OPSET,
                          dynamo=False)
    onnx.checker.check_model(str(tmp))
    tmp.replace(path)
    info: dict[str, Any] = {"path": str(path), "bytes": path.stat().st_size, "opset": OPSET}
    if check:
        info["max_abs_diff"] = check_onnx(folded, path, image_size)
    return info


def _session(path: str | Path, threads: int = 0):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def check_onnx(model: torch.nn.Module, path: str | Path, image_size: int, batches: tuple[int, ...] = (1, 5),
               rtol: float = 1e-3, atol: float = 1e-5) -> float:
    """Compare ONNX Runtime with PyTorch at two batch sizes; raise on mismatch."""
    sess = _session(path)
    name = sess.get_inputs()[0].name
    worst = 0.0
    gen = torch.Generator().manual_seed(0)
    for b in batches:
        x = torch.randn(b, 3, image_size, image_size, generator=gen)
        with torch.inference_mode():
            ref = model(x).numpy()
        got = sess.run(None, {name: x.numpy()})[0]
        if got.shape != ref.shape:
            raise ExportError(f"{path}: ONNX Runtime output shape {got.shape} != PyTorch {ref.shape} at batch {b}")
        try:
            np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol)
        except AssertionError:
            d = float(np.abs(got - ref).max())
            raise ExportError(f"{path}: ONNX Runtime differs from PyTorch at batch {b} (max |diff| {d:.3g} over "
                              f"rtol {rtol}, atol {atol}); the export is not usable") from None
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst


def ort_predict(path: str | Path, images_u8: torch.Tensor, batch: int = 64, threads: int = 0) -> np.ndarray:
    sess = _session(path, threads)
    name = sess.get_inputs()[0].name
    out = []
    for i in range(0, len(images_u8), batch):
        out.append(sess.run(None, {name: normalize_batch(images_u8[i:i + batch]).numpy()})[0])
    return np.concatenate(out)


def ort_top1(path: str | Path, images_u8: torch.Tensor, labels: torch.Tensor) -> float:
    return float((ort_predict(path, images_u8).argmax(1) == labels.numpy()).mean())


def quantize_int8(fp32_path: str | Path, out_path: str | Path, calib_u8: torch.Tensor, batch: int = 32) -> Path:
    """Static int8 quantization (QDQ, per-channel weights) calibrated on
    ``calib_u8``, real training images."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out_path = Path(out_path)
    pre = out_path.with_name(f".{out_path.stem}.pre.onnx")
    quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([normalize_batch(calib_u8[i:i + batch]).numpy() for i in range(0, len(calib_u8), batch)])

        def get_next(self):
            b = next(self.batches, None)
            return None if b is None else {"input": b}

    tmp = out_path.with_name(f".{out_path.name}.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(str(pre), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    pre.unlink(missing_ok=True)
    tmp.replace(out_path)
    return out_path


def export_checkpoint(checkpoint: str | Path, out: str | Path, int8: bool = False, data: str | None = None,
                      calib_images: int = 512, cache_dir: str | None = None, image_size: int | None = None,
                      ) -> dict[str, Any]:
    """The ``export`` command: ONNX (and int8) files plus a JSON summary."""
    from .checkpoint import load_checkpoint
    from .errors import ConfigError

    ck = load_checkpoint(checkpoint)
    size = image_size or ck.config.get("image_size") or ck.metrics.get("image_size")
    if not size:
        raise ConfigError(f"{ck.path} does not record its input size; pass --image-size")
    out = Path(out)
    if out.suffix != ".onnx":
        raise ConfigError(f"--out {out} must end in .onnx")
    info = export_onnx(ck.model, out, int(size))
    info["image_size"] = int(size)
    if int8:
        from .data import load_dataset

        d = data or ck.config.get("data")
        if not d:
            raise ConfigError("int8 calibration needs real images: pass --data")
        train, val = load_dataset(d, int(size), cache_dir)
        g = torch.Generator().manual_seed(0)
        idx = torch.randperm(len(train), generator=g)[:calib_images]
        q = quantize_int8(out, out.with_name(out.stem + ".int8.onnx"), train.images[idx])
        info["int8_path"] = str(q)
        info["int8_bytes"] = q.stat().st_size
        info["calibration_images"] = int(len(idx))
        info["fp32_val_top1"] = ort_top1(out, val.images, val.labels)
        info["int8_val_top1"] = ort_top1(q, val.images, val.labels)
        info["val_images"] = len(val)
    return info
