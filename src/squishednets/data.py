"""Real image data: class-per-folder sets, a decode-once cache, batch augmentation.

Images are decoded once, resized to the training resolution and kept as a
uint8 array in a cache outside the data folder, keyed by the files (paths,
sizes, modification times) and the resolution. Augmentation (random resized
crop, flip) and normalisation then run on whole batches of tensors, so the
data path costs little next to the model (airbench's approach).

Also here: ``make_imagenet10``, which cuts the SquishedNets paper's
ImageNet-10 (its Table 1 wnids) out of a local ILSVRC2012 tree.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from .errors import DataError
from .fetch import local_data
from .io import atomic_write_bytes, atomic_write_file, atomic_write_text

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGENET10_WNIDS",
    "Split",
    "scan_split",
    "load_split",
    "load_dataset",
    "check_dataset",
    "decode_image",
    "augment_batch",
    "normalize_batch",
    "holdout_indices",
    "make_imagenet10",
    "default_cache_dir",
]

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The ten classes of the SquishedNets paper's ImageNet-10 (its Table 1).
IMAGENET10_WNIDS = (
    "n02783161", "n03085013", "n04557648", "n04037443", "n03793489",
    "n03584254", "n04548362", "n07930864", "n03782006", "n04409515",
)
_CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    env = os.environ.get("SQUISHEDNETS_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "squishednets"


def _local(root: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The data folder: ``root`` itself, or the local copy of a data set at a
    URL (``fetch``), kept in the same cache as the decoded images."""
    return local_data(root, Path(cache_dir) if cache_dir is not None else default_cache_dir())


@dataclass
class Split:
    """One split held in memory: uint8 images (N, 3, S, S) and int64 labels."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    files: list[str]
    skipped: list[str]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _class_dirs(root: Path, split: str) -> list[Path]:
    d = root / split
    if not root.exists():
        raise DataError(f"data folder {root} does not exist; pass --data with a folder holding train/ and val/")
    if not root.is_dir():
        raise DataError(f"{root} is a file, not a folder; pass --data with a folder holding train/ and val/")
    if not d.exists():
        raise DataError(f"{d} is missing; a data folder needs {split}/<class>/<images> (class-per-folder)")
    if not d.is_dir():
        raise DataError(f"{d} is a file, not a folder; a data folder needs {split}/<class>/<images>")
    dirs = sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise DataError(f"{d} has no class folders; put each class's images in {split}/<class>/")
    return dirs


def scan_split(root: str | Path, split: str) -> tuple[list[str], list[tuple[Path, int]]]:
    """Classes (sorted folder names) and (file, label) pairs of one split."""
    root = _local(root)
    dirs = _class_dirs(root, split)
    classes = [d.name for d in dirs]
    items: list[tuple[Path, int]] = []
    for label, d in enumerate(dirs):
        files = sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise DataError(f"class '{d.name}' in {root / split} has no images; add images or remove the folder")
        items += [(p, label) for p in files]
    return classes, items


def decode_image(path: str | Path, size: int) -> np.ndarray:
    """Decode to RGB (greyscale and CMYK included), resize the shorter side to
    ``size`` and centre-crop: a (3, size, size) uint8 array."""
    with Image.open(path) as im:
        # JPEG draft mode decodes at a reduced scale directly: far faster
        # than a full decode followed by a large downscale.
        im.draft("RGB", (size, size))
        im = im.convert("RGB")
        w, h = im.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        im = im.resize((nw, nh), Image.BILINEAR, reducing_gap=3.0)
        left, top = (nw - size) // 2, (nh - size) // 2
        im = im.crop((left, top, left + size, top + size))
        arr = np.asarray(im, dtype=np.uint8)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def _decode_or_none(args: tuple[str, int]) -> tuple[np.ndarray | None, str]:
    path, size = args
    try:
        return decode_image(path, size), ""
    except Exception as e:  # PIL raises many types for bad files
        return None, f"{type(e).__name__}: {e}"


def _cache_key(root: Path, split: str, items: list[tuple[Path, int]], size: int, classes: list[str]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"format": _CACHE_FORMAT, "size": size, "split": split, "classes": classes,
                         "root": str(root.resolve())}).encode())
    for p, label in items:
        st = p.stat()
        h.update(f"{p.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\0{label}\n".encode())
    return h.hexdigest()[:24]


def load_split(
    root: str | Path,
    split: str,
    image_size: int,
    cache_dir: str | Path | None = None,
    strict: bool = False,
    workers: int | None = None,
    progress: bool = False,
) -> Split:
    """Load one split, decoding only when the cache is missing or stale."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = _local(root, cache_dir)
    classes, items = scan_split(root, split)
    key = _cache_key(root, split, items, image_size, classes)
    npy, meta_path = cache_dir / f"{split}-{image_size}px-{key}.npy", cache_dir / f"{split}-{image_size}px-{key}.json"
    if npy.exists() and meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
            images = np.load(npy)
            if images.shape[0] == len(meta["labels"]):
                if strict and meta["skipped"]:
                    raise DataError(_skipped_message(meta["skipped"], strict=True))
                _warn_skipped(meta["skipped"])
                return Split(torch.from_numpy(images), torch.tensor(meta["labels"], dtype=torch.int64),
                             classes, meta["files"], meta["skipped"])
        except (OSError, ValueError, KeyError):
            log.warning("cache %s is unreadable; decoding again", npy)
    workers = workers or min(4, os.cpu_count() or 1)
    args = [(str(p), image_size) for p, _ in items]
    results: list[tuple[np.ndarray | None, str]]
    it = None
    if progress:
        it = tqdm(total=len(args), desc=f"decoding {split} at {image_size}px", unit="img", leave=False)
    results = []
    if workers > 1 and len(args) > 64:
        with ProcessPoolExecutor(workers) as ex:
            for r in ex.map(_decode_or_none, args, chunksize=64):
                results.append(r)
                if it is not None:
                    it.update()
    else:
        for a in args:
            results.append(_decode_or_none(a))
            if it is not None:
                it.update()
    if it is not None:
        it.close()
    kept, labels, files, skipped = [], [], [], []
    for (p, label), (arr, err) in zip(items, results):
        rel = str(p.relative_to(root))
        if arr is None:
            skipped.append(f"{rel} ({err})")
            continue
        kept.append(arr)
        labels.append(label)
        files.append(rel)
    if skipped and strict:
        raise DataError(_skipped_message(skipped, strict=True))
    _warn_skipped(skipped)
    present = set(labels)
    for i, c in enumerate(classes):
        if i not in present:
            raise DataError(f"class '{c}' in {root / split} has no readable images; add images or remove the folder")
    images = np.stack(kept)
    cache_dir.mkdir(parents=True, exist_ok=True)
    # npy first, meta last: a meta file only exists beside a complete array.
    atomic_write_file(npy, lambda tmp: _save_array(tmp, images))
    atomic_write_text(meta_path, json.dumps({"labels": labels, "files": files, "skipped": skipped}))
    return Split(torch.from_numpy(images), torch.tensor(labels, dtype=torch.int64), classes, files, skipped)


def _save_array(path: Path, array: np.ndarray) -> None:
    # Through a handle: np.save on a path would append ".npy" to the temporary name.
    with open(path, "wb") as fh:
        np.save(fh, array, allow_pickle=False)


def _skipped_message(skipped: list[str], strict: bool) -> str:
    head = "; ".join(skipped[:5]) + (f"; and {len(skipped) - 5} more" if len(skipped) > 5 else "")
    if strict:
        return f"{len(skipped)} unreadable or non-image file(s) (--strict): {head}; remove them or drop --strict"
    return f"skipped {len(skipped)} unreadable or non-image file(s): {head}"


def _warn_skipped(skipped: list[str]) -> None:
    if skipped:
        log.warning(_skipped_message(skipped, strict=False))


def test_split_name(root: str | Path, cache_dir: str | Path | None = None) -> str:
    """``test`` when the data set has a ``test/`` folder, else ``val``: the
    split whose figure is reported (and never used to choose anything)."""
    return "test" if (_local(root, cache_dir) / "test").is_dir() else "val"


def check_dataset(root: str | Path, cache_dir: str | Path | None = None) -> list[str]:
    """Cheap structural check of a class-per-folder set (no decoding): train
    and the test split (``test/`` or else ``val/``) exist, have classes with
    files, and the same classes. Returns them."""
    root = _local(root, cache_dir)
    test = test_split_name(root)
    tc, _ = scan_split(root, "train")
    vc, _ = scan_split(root, test)
    if tc != vc:
        only_t, only_v = sorted(set(tc) - set(vc)), sorted(set(vc) - set(tc))
        raise DataError(
            f"train and {test} have different classes (only in train: {only_t or 'none'}; only in {test}: "
            f"{only_v or 'none'}); give both splits the same class folders"
        )
    return tc


@dataclass
class Splits:
    """The three sets of our evidence rule: ``train`` (the training folder
    minus a stratified, seeded held-out part) to fit, ``heldout`` for every
    choice (fitness, which models a report names, probes), ``test`` (``test/``
    or else ``val/``) for the reported figure only."""

    train: Split
    heldout: Split
    test: Split
    test_name: str
    holdout: float | None
    split_seed: int

    @property
    def classes(self) -> list[str]:
        return self.train.classes


def _subset(s: Split, idx: torch.Tensor) -> Split:
    return Split(s.images[idx], s.labels[idx], s.classes, [s.files[i] for i in idx.tolist()], s.skipped)


def load_splits(
    root: str | Path, image_size: int, holdout: float | None, split_seed: int,
    cache_dir: str | Path | None = None, strict: bool = False, progress: bool = False,
) -> Splits:
    """Train, held-out and test splits (see :class:`Splits`). ``holdout`` is
    the fraction of each class held out of train (``None``: no held-out set,
    then ``heldout`` is empty)."""
    root = _local(root, cache_dir)
    check_dataset(root)
    test_name = test_split_name(root)
    full = load_split(root, "train", image_size, cache_dir, strict, progress=progress)
    test = load_split(root, test_name, image_size, cache_dir, strict, progress=progress)
    if holdout:
        fit_idx, held_idx = holdout_indices(full.labels, holdout, split_seed)
    else:
        fit_idx, held_idx = torch.arange(len(full)), torch.zeros(0, dtype=torch.int64)
    return Splits(_subset(full, fit_idx), _subset(full, held_idx), test, test_name, holdout, split_seed)


def load_dataset(
    root: str | Path, image_size: int, cache_dir: str | Path | None = None, strict: bool = False,
    progress: bool = False,
) -> tuple[Split, Split]:
    """The whole training folder and the test split (``test/`` or else ``val/``)."""
    s = load_splits(root, image_size, None, 0, cache_dir, strict, progress)
    return s.train, s.test


def holdout_indices(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A stratified, seeded split of the training set into (fit, held-out)
    indices. Selection during synthesis scores on the held-out part, never on val."""
    g = torch.Generator().manual_seed(seed)
    fit, held = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = max(1, int(round(len(idx) * fraction)))
        held.append(idx[:k])
        fit.append(idx[k:])
    return torch.sort(torch.cat(fit)).values, torch.sort(torch.cat(held)).values


def normalize_batch(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) to normalised float32."""
    mean = torch.tensor(IMAGENET_MEAN, device=images_u8.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=images_u8.device).view(1, 3, 1, 1) * 255
    return (images_u8.float() - mean) / std


def augment_batch(
    images_u8: torch.Tensor, generator: torch.Generator, min_scale: float, flip: bool = True
) -> torch.Tensor:
    """Random resized crop (area in [min_scale, 1], aspect 3/4..4/3) and
    horizontal flip for a whole batch at once, via one affine grid sample."""
    n = images_u8.shape[0]
    x = normalize_batch(images_u8)
    area = torch.empty(n).uniform_(min_scale, 1.0, generator=generator)
    log_r = torch.empty(n).uniform_(float(np.log(3 / 4)), float(np.log(4 / 3)), generator=generator)
    ratio = torch.exp(log_r)
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, generator=generator) * 2 - 1) * (1 - h)
    sign = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = w * sign
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


# -- ImageNet-10 ----------------------------------------------------------------
def _read_val_labels(path: Path, synsets: Path | None) -> dict[str, str]:
    """File name (no folder) -> wnid, from the Kaggle CSV
    (ImageId,PredictionString), 'FILE WNID' lines, or the devkit's integer
    ground truth with a synset list (one wnid per line in ILSVRC2012_ID order)."""
    text = path.read_text().splitlines()
    out: dict[str, str] = {}
    if text and text[0].lower().startswith("imageid"):
        for row in csv.DictReader(text):
            key = next(k for k in row if k.lower() == "imageid")
            pred = next(k for k in row if k.lower() == "predictionstring")
            out[row[key]] = row[pred].split()[0]
        return out
    first = text[0].split() if text else []
    if len(first) == 1 and first[0].isdigit():
        if synsets is None:
            raise DataError(f"{path} holds integer labels; pass --synsets with the wnid list in ILSVRC2012_ID order")
        wnids = [ln.split()[0] for ln in synsets.read_text().splitlines() if ln.strip()]
        for i, ln in enumerate(text, start=1):
            out[f"ILSVRC2012_val_{i:08d}"] = wnids[int(ln.strip()) - 1]
        return out
    for ln in text:
        parts = ln.replace(",", " ").split()
        if len(parts) >= 2:
            out[Path(parts[0]).stem] = parts[1]
    if not out:
        raise DataError(f"{path} holds no validation labels in a known format")
    return out


def make_imagenet10(
    ilsvrc: str | Path, out: str | Path, val_labels: str | Path | None = None, synsets: str | Path | None = None
) -> dict[str, dict[str, int]]:
    """Copy the paper's ten ImageNet-10 classes out of an ILSVRC2012 tree into
    ``out/{train,val}/<wnid>/``. Validation labels come from class folders
    under val/, or from ``val_labels`` for a flat val/ folder. Returns counts."""
    src, dst = Path(ilsvrc), Path(out)
    if not src.is_dir():
        raise DataError(f"ILSVRC folder {src} does not exist or is not a folder; pass --ilsvrc with the tree holding train/ and val/")
    if dst.exists() and any(dst.iterdir()):
        raise DataError(f"output folder {dst} is not empty; choose a new --out so nothing is overwritten")
    train_root = src / "train"
    if not train_root.is_dir():
        raise DataError(f"{train_root} is missing; the ILSVRC tree needs train/<wnid>/")
    missing = [w for w in IMAGENET10_WNIDS if not (train_root / w).is_dir()]
    if missing:
        raise DataError(f"{train_root} lacks the ImageNet-10 class folder(s) {missing}")
    val_root = src / "val"
    if not val_root.is_dir():
        raise DataError(f"{val_root} is missing; the ILSVRC tree needs val/ (class folders or flat with --val-labels)")
    plan: list[tuple[Path, Path]] = []
    counts: dict[str, dict[str, int]] = {"train": {}, "val": {}}
    for w in IMAGENET10_WNIDS:
        files = sorted(p for p in (train_root / w).iterdir() if p.is_file())
        plan += [(p, dst / "train" / w / p.name) for p in files]
        counts["train"][w] = len(files)
    if all((val_root / w).is_dir() for w in IMAGENET10_WNIDS):
        for w in IMAGENET10_WNIDS:
            files = sorted(p for p in (val_root / w).iterdir() if p.is_file())
            plan += [(p, dst / "val" / w / p.name) for p in files]
            counts["val"][w] = len(files)
    else:
        if val_labels is None:
            raise DataError(f"{val_root} has no class folders; pass --val-labels with the validation ground truth")
        labels = _read_val_labels(Path(val_labels), Path(synsets) if synsets else None)
        wanted = set(IMAGENET10_WNIDS)
        counts["val"] = {w: 0 for w in IMAGENET10_WNIDS}
        for p in sorted(val_root.iterdir()):
            w = labels.get(p.stem)
            if p.is_file() and w in wanted:
                plan.append((p, dst / "val" / w / p.name))
                counts["val"][w] += 1
    empty = [f"{s}/{w}" for s in counts for w, n in counts[s].items() if n == 0]
    if empty:
        raise DataError(f"ImageNet-10 class(es) with no images: {empty}; check the ILSVRC tree and labels")
    # Write into a temporary sibling and rename at the end: an interrupted cut
    # leaves no half-made data set behind.
    tmp = dst.with_name(f".{dst.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    for s, d in plan:
        t = tmp / d.relative_to(dst)
        t.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(s, t)
    atomic_write_bytes(tmp / "imagenet10.json", json.dumps({"wnids": list(IMAGENET10_WNIDS), "counts": counts},
                                                           indent=2).encode())
    if dst.exists():
        dst.rmdir()
    os.replace(tmp, dst)
    return counts
