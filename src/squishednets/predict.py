"""Inference on image files with a checkpoint: class and probability per image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import Checkpoint
from .data import decode_image, normalize_batch
from .errors import DataError
from .train import train_config_of

__all__ = ["predict"]


def predict(ck: Checkpoint, images: list[str | Path], top: int = 1) -> list[dict[str, Any]]:
    """The ``top`` classes and their probabilities for each image, decoded
    the way the checkpoint's training data was (resolution, centre crop)."""
    tcfg, classes = train_config_of(ck)
    arrays = []
    for img in images:
        p = Path(img)
        if not p.is_file():
            raise DataError(f"image {p} does not exist or is not a file")
        try:
            arrays.append(decode_image(p, tcfg.image_size))
        except Exception as e:  # PIL raises many types for a file that is not an image
            raise DataError(f"{p} is not a readable image ({type(e).__name__}); pass JPEG, PNG or another image") from None
    x = normalize_batch(torch.from_numpy(np.stack(arrays)))
    with torch.inference_mode():
        probs = torch.softmax(ck.model.eval()(x), 1)
    out = []
    for img, pr in zip(images, probs):
        t = pr.topk(min(top, len(classes)))
        out.append({"image": str(img), "predictions": [{"class": classes[i], "probability": float(v)}
                                                        for v, i in zip(t.values.tolist(), t.indices.tolist())]})
    return out
