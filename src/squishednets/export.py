"""ONNX export that ships: BatchNorm folded, a dynamic batch axis, checked.

The exported graph is the BN-free network of ``model.fold_batchnorm`` (the
parameters the paper's size counts). Each export is run in ONNX Runtime
(``ort.session``, the benchmark's session) and compared with PyTorch on
noise at two batch sizes, as torchvision's ``test_onnx.py`` does, and on up
to 64 real test images when the data set is at hand. Parity means
max |diff| <= 1e-3 x max(1, max |logit|): relative to the logit scale, so it
holds on CPUs whose kernels sum in different orders. A failed check, or
outputs on the real images that are all zero or the same for every image,
is an error and leaves no file behind; files are written atomically (``io``).

``--int8`` adds static quantization calibrated on real training images. Its
default mode (7-bit weights, ``reduce_range``) holds on x86 CPUs without
VNNI, where full-range u8 x s8 products saturate; its test top-1 and its
speed are measured beside fp32's, never assumed.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from .checkpoint import load_checkpoint
from .data import load_dataset, load_split, normalize_batch, test_split_name
from .errors import ConfigError, DataError, DeadNetworkError, ExportError
from .fetch import is_url
from .io import atomic_write_file
from .model import SqueezeNet, fold_batchnorm
from .ort import cpu_flags, images_per_second, session
from .train import train_config_of

__all__ = ["OPSET", "PARITY_TOL", "INT8_MODES", "export_onnx", "check_onnx", "check_onnx_images", "ort_predict",
           "ort_top1", "quantize_int8", "export_checkpoint"]

log = logging.getLogger(__name__)
OPSET = 17
PARITY_TOL = 1e-3  # of max(1, max |logit|)
CHECK_IMAGES = 64  # real images in the parity check: enough to meet every class of a few-class task

# int8 modes: (activation type, weight type, reduce_range). On x86 without
# VNNI, ONNX Runtime multiplies u8 activations by s8 weights with VPMADDUBSW,
# which adds pairs of products in 16 bits and saturates when both are large;
# that cost 3 points of top-1 on the ancestor and 11-14 on small generations
# on an AVX2 machine. 7-bit weights (reduce_range) keep every pair sum in
# range (0.2-0.6 points lost there); u8 weights take a kernel without the
# 16-bit step. ONNX Runtime turns s8 activations into u8 on x86, so the
# full-range s8s8 and u8s8 modes are free of this saturation only with VNNI
# or on ARM; they are kept for comparison (benchmarks/int8.py).
INT8_MODES: dict[str, tuple[str, str, bool]] = {
    "reduce_range": ("QUInt8", "QInt8", True),
    "u8u8": ("QUInt8", "QUInt8", False),
    "s8s8_full": ("QInt8", "QInt8", False),
    "u8s8_full": ("QUInt8", "QInt8", False),
}
INT8_DROP_WARN = 0.01  # int8 top-1 this far below fp32 (1 point) is worth a warning


def _degenerate(y: np.ndarray) -> str | None:
    if not np.any(y):
        return "all zero"
    if len(y) > 1 and np.all(y == y[:1]):
        return "the same for every image"
    return None


def _compare(ref: np.ndarray, got: np.ndarray, where: str, tol: float, real: bool = True) -> float:
    """max |got - ref|, or an ExportError when ``got`` is off or degenerate.

    Degenerate outputs are an error on ``real`` images whatever PyTorch
    gives; on noise only when PyTorch's are not: noise is no image, and a
    healthy network may give it the same class every time.
    """
    if got.shape != ref.shape:
        raise ExportError(f"{where}: ONNX Runtime output shape {got.shape} != PyTorch {ref.shape}")
    if not np.all(np.isfinite(got)):
        raise ExportError(f"{where}: ONNX Runtime outputs are not finite; the export is broken")
    bad, ref_bad = _degenerate(got), _degenerate(ref)
    if bad and (real or not ref_bad):
        if ref_bad:
            raise DeadNetworkError(f"{where}: ONNX Runtime outputs are {bad}; PyTorch's are too: the network "
                                   "itself is dead, retrain it")
        raise ExportError(f"{where}: ONNX Runtime outputs are {bad}; PyTorch's are not: the export is broken")
    d = float(np.abs(got - ref).max())
    bound = tol * max(1.0, float(np.abs(ref).max()))
    if d > bound:
        raise ExportError(f"{where}: ONNX Runtime differs from PyTorch (max |diff| {d:.3g} > {bound:.3g}, "
                          f"{tol:g} x max(1, max |logit|)); the export is not usable")
    return d


def check_onnx(model: torch.nn.Module, path: str | Path, image_size: int, batches: tuple[int, ...] = (1, 5),
               tol: float = PARITY_TOL, label: str | Path | None = None) -> float:
    """Compare ONNX Runtime with PyTorch on noise at two batch sizes; the
    largest |diff|. Raises ExportError, naming ``label`` (default ``path``),
    on a mismatch or on degenerate outputs where PyTorch's are not."""
    sess = session(path)
    name = sess.get_inputs()[0].name
    worst = 0.0
    gen = torch.Generator().manual_seed(0)
    for b in batches:
        x = torch.randn(b, 3, image_size, image_size, generator=gen)
        with torch.inference_mode():
            ref = model(x).numpy()
        got = sess.run(None, {name: x.numpy()})[0]
        worst = max(worst, _compare(ref, got, f"{label or path} at batch {b} (noise)", tol, real=False))
    return worst


def check_onnx_images(model: torch.nn.Module, path: str | Path, images_u8: torch.Tensor,
                      tol: float = PARITY_TOL, label: str | Path | None = None) -> dict[str, Any]:
    """Compare ONNX Runtime with PyTorch on real images (uint8, N x 3 x S x S):
    the largest |diff| and the share of images whose top-1 class agrees.
    Outputs all zero or the same for every image are an ExportError.
    Agreement is reported, not required: near-ties may flip."""
    x = normalize_batch(images_u8)
    with torch.inference_mode():
        ref = model(x).numpy()
    sess = session(path)
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    d = _compare(ref, got, f"{label or path} on {len(x)} real images", tol)
    return {"real_images": int(len(x)), "real_max_abs_diff": d,
            "real_top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean())}


def export_onnx(model: SqueezeNet, path: str | Path, image_size: int, check: bool = True,
                images_u8: torch.Tensor | None = None, tol: float = PARITY_TOL) -> dict[str, Any]:
    """Write ``model`` (BN folded) to ``path``; with ``check``, verify it on
    noise and, if given, on real ``images_u8`` before it replaces ``path``."""
    path = Path(path)
    folded = fold_batchnorm(model.cpu()).eval()
    x = torch.randn(2, 3, image_size, image_size)
    checks: dict[str, Any] = {}

    def fill(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # The TorchScript-based exporter gives a compact graph for this
            # plain convolutional network, without the dynamo exporter's
            # start-up time.
            torch.onnx.export(folded, (x,), str(tmp), input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=OPSET,
                              dynamo=False)
        onnx.checker.check_model(str(tmp))
        if check:
            # Checked before it replaces ``path``: a failed export leaves no file.
            checks["max_abs_diff"] = check_onnx(folded, tmp, image_size, tol=tol, label=path)
            if images_u8 is not None and len(images_u8):
                checks.update(check_onnx_images(folded, tmp, images_u8, tol, label=path))
            else:
                checks.update(real_images=0, real_max_abs_diff=None, real_top1_agreement=None)

    atomic_write_file(path, fill)
    return {"path": str(path), "bytes": path.stat().st_size, "opset": OPSET, **checks}


def ort_predict(path: str | Path, images_u8: torch.Tensor, batch: int = 64, threads: int = 0) -> np.ndarray:
    """Logits of ONNX Runtime for uint8 images, ``batch`` at a time."""
    sess = session(path, threads)
    name = sess.get_inputs()[0].name
    out = []
    for i in range(0, len(images_u8), batch):
        out.append(sess.run(None, {name: normalize_batch(images_u8[i:i + batch]).numpy()})[0])
    return np.concatenate(out)


def ort_top1(path: str | Path, images_u8: torch.Tensor, labels: torch.Tensor) -> float:
    return float((ort_predict(path, images_u8).argmax(1) == labels.numpy()).mean())


def _int8_mode(mode: str) -> tuple[str, str, bool]:
    if mode not in INT8_MODES:
        raise ConfigError(f"unknown int8 mode '{mode}'; choose one of {', '.join(INT8_MODES)}")
    return INT8_MODES[mode]


def quantize_int8(fp32_path: str | Path, out_path: str | Path, calib_u8: torch.Tensor, batch: int = 32,
                  mode: str = "reduce_range") -> Path:
    """Static int8 quantization (QDQ, per-channel weights) calibrated on
    ``calib_u8``, real training images, in one of ``INT8_MODES``."""

    act, weight, reduce_range = _int8_mode(mode)
    out_path = Path(out_path)
    pre = out_path.with_name(f".{out_path.stem}.pre{os.getpid()}.onnx")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([normalize_batch(calib_u8[i:i + batch]).numpy() for i in range(0, len(calib_u8), batch)])

        def get_next(self):
            b = next(self.batches, None)
            return None if b is None else {"input": b}

    def quantize(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_static(str(pre), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=reduce_range, activation_type=getattr(QuantType, act),
                            weight_type=getattr(QuantType, weight))

    try:
        atomic_write_file(pre, lambda tmp: quant_pre_process(str(fp32_path), str(tmp), skip_symbolic_shape=True))
        atomic_write_file(out_path, quantize)
    finally:
        pre.unlink(missing_ok=True)
    return out_path


def _speed(path: Path, image_size: int, batch: int, threads: int) -> float:
    """ORT images/s at ``batch`` through the benchmark's session factory."""
    x = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)).numpy()
    return images_per_second(session(path, threads), x)


def _subset(n: int, k: int) -> torch.Tensor:
    # A seeded random subset: splits are read class by class, so the first
    # k images would often be a single class.
    return torch.randperm(n, generator=torch.Generator().manual_seed(0))[:k]


def export_checkpoint(checkpoint: str | Path, out: str | Path, int8: bool = False, data: str | None = None,
                      calib_images: int = 512, cache_dir: str | None = None, image_size: int | None = None,
                      int8_mode: str = "reduce_range", check_images: int = CHECK_IMAGES, threads: int = 0,
                      ) -> dict[str, Any]:
    """The ``export`` command: ONNX (and int8) files plus a JSON summary.

    The parity check uses up to ``check_images`` images of the test split
    (``test/`` or else ``val/``) of ``data``, or of the data the checkpoint
    was trained on while that folder is still there. With ``int8``, fp32
    and int8 test top-1 and images/s at batch 32 are measured in ONNX
    Runtime with ``threads`` threads (0: every core)."""
    ck = load_checkpoint(checkpoint)
    trained, _ = train_config_of(ck)
    size = image_size or trained.image_size
    out = Path(out)
    if out.suffix != ".onnx":
        raise ConfigError(f"--out {out} must end in .onnx")
    if int8:
        _int8_mode(int8_mode)  # a bad mode fails before any work
    d = data or trained.data
    train = test = None
    if int8:
        if not d:
            raise ConfigError("int8 calibration needs real images: pass --data")
        train, test = load_dataset(d, size, cache_dir)
    elif d and (data or is_url(d) or Path(d).is_dir()):
        try:
            test = load_split(d, test_split_name(d, cache_dir), size, cache_dir)
        except DataError as e:
            if data:
                raise
            # The checkpoint's own data changed since training: the noise
            # check still guards the export, so this is no reason to stop.
            log.warning("parity on real images skipped (%s); checking on noise only", e)
    check = None if test is None else test.images[_subset(len(test), check_images)]
    info = export_onnx(ck.model, out, size, images_u8=check)
    info["image_size"] = size
    info["real_data"] = None if check is None else f"{d} ({test_split_name(d, cache_dir)})"
    if not int8:
        return info
    threads = threads or os.cpu_count() or 1
    idx = _subset(len(train), calib_images)
    q = quantize_int8(out, out.with_name(out.stem + ".int8.onnx"), train.images[idx], mode=int8_mode)
    act, weight, reduce_range = INT8_MODES[int8_mode]
    fp32_top1, int8_top1 = ort_top1(out, test.images, test.labels), ort_top1(q, test.images, test.labels)
    fp32_speed, int8_speed = _speed(out, size, 32, threads), _speed(q, size, 32, threads)
    info.update({
        "int8_path": str(q),
        "int8_bytes": q.stat().st_size,
        "int8_mode": int8_mode,
        "int8_config": {"format": "QDQ", "activation_type": act, "weight_type": weight,
                        "reduce_range": reduce_range, "per_channel": True},
        "cpu_flags": cpu_flags(),
        # Calibration draws on the whole training folder; the reported
        # figures are the test split's, which chooses nothing.
        "calibration_images": int(len(idx)),
        "test_split": test_split_name(d, cache_dir),
        "test_images": len(test),
        "fp32_test_top1": fp32_top1,
        "int8_test_top1": int8_top1,
        "speed_batch": 32,
        "speed_threads": threads,
        "fp32_b32_img_s": fp32_speed,
        "int8_b32_img_s": int8_speed,
        "int8_speedup": int8_speed / fp32_speed,
        "int8_warning": None,
    })
    if fp32_top1 - int8_top1 > INT8_DROP_WARN:
        msg = (f"int8 ({int8_mode}) test top-1 {int8_top1:.4f} is {100 * (fp32_top1 - int8_top1):.1f} points below "
               f"fp32 {fp32_top1:.4f}; try another --int8-mode (u8u8) or ship the fp32 model")
        log.warning(msg)
        info["int8_warning"] = msg
    return info
