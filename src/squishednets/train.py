"""Training and evaluation.

SGD with Nesterov momentum (or AdamW), linear warm-up then cosine decay,
label smoothing, no weight decay on BatchNorm parameters and biases,
channels_last, batch-level augmentation on in-memory uint8 tensors.

Runs are repeatable and resumable: every epoch draws its shuffling,
augmentation and dropout from generators seeded by (seed, epoch), the
learning rate is a pure function of the step, and the state saved after each
epoch (weights, optimizer moments, history) is written atomically. An
interrupted run resumed with ``resume=True`` therefore ends with the same
weights as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .checkpoint import load_weights_into, save_checkpoint
from .errors import ConfigError, CheckpointError
from .io import atomic_dir, atomic_write_json, recover_dir
from .data import augment_batch, normalize_batch

__all__ = ["TrainConfig", "fit", "evaluate", "lr_at", "pick_device", "set_threads", "param_groups",
           "run_training", "DEFAULT_DATA"]

log = logging.getLogger(__name__)

DEFAULT_DATA = "../shared/datasets/imagenette"


@dataclass
class TrainConfig:
    """Everything that decides a training run (written to ``config.json``)."""

    data: str = DEFAULT_DATA
    model: str = "squeezenet1_1"  # a registered name or a genome JSON file
    batchnorm: bool = True
    image_size: int = 64
    epochs: int = 60
    batch_size: int = 128
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.0  # 0: the optimizer's default (0.1 for SGD, 2e-3 for AdamW)
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    warmup_epochs: float = 2.0
    min_lr_ratio: float = 0.0
    label_smoothing: float = 0.1
    min_scale: float = 0.5  # random-resized-crop smallest area (see BENCHMARKS.md)
    threads: int = 0  # 0: every core
    seed: int = 0
    channels_last: bool = True
    device: str = "auto"  # auto | cpu | cuda
    eval_every: int = 5
    cache_dir: str = ""
    strict: bool = False

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"optimizer must be 'sgd' or 'adamw', got '{self.optimizer}'")
        for name in ("image_size", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.image_size < 16:
            raise ConfigError(f"image_size {self.image_size} is too small for SqueezeNet; use 16 or more")
        if self.lr < 0 or self.weight_decay < 0 or not 0 <= self.label_smoothing < 1:
            raise ConfigError("lr and weight_decay must be >= 0 and label_smoothing in [0, 1)")
        if not 0 < self.min_scale <= 1:
            raise ConfigError(f"min_scale must be in (0, 1], got {self.min_scale}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, got '{self.device}'")

    @property
    def base_lr(self) -> float:
        if self.lr > 0:
            return self.lr
        return 0.1 if self.optimizer == "sgd" else 2e-3

    def schedule_dict(self) -> dict[str, Any]:
        """The fields that decide the numbers (a resume must match them)."""
        d = asdict(self)
        for k in ("threads", "device", "eval_every", "cache_dir", "strict", "data"):
            d.pop(k)
        return d


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' was asked for but CUDA is not available; use --device cpu")
        return torch.device("cuda")
    return torch.device("cpu")


def set_threads(n: int) -> int:
    if n > 0:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def lr_at(step: int, total: int, warmup: int, base: float, min_ratio: float = 0.0) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio * base``."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on BatchNorm parameters and biases (1-D tensors)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.base_lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.AdamW(groups, lr=cfg.base_lr)


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
             batch_size: int = 256, channels_last: bool = True) -> dict[str, Any]:
    """Top-1, top-5, per-class accuracy, confusion matrix (rows: true class)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    top5 = 0
    loss = 0.0
    for i in range(0, len(labels), batch_size):
        x = normalize_batch(images[i:i + batch_size].to(device, non_blocking=True))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = labels[i:i + batch_size].to(device)
        logits = model(x).float()
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        pred = logits.argmax(1)
        conf += torch.bincount(y.cpu() * num_classes + pred.cpu(), minlength=num_classes ** 2).view(num_classes, -1)
        k = min(5, num_classes)
        top5 += (logits.topk(k, 1).indices == y[:, None]).any(1).sum().item()
    model.train(was_training)
    n = max(1, int(labels.numel()))
    per_class = (conf.diag().float() / conf.sum(1).clamp(min=1).float()).tolist()
    return {
        "top1": conf.diag().sum().item() / n,
        "top5": top5 / n,
        "loss": loss / n,
        "per_class": per_class,
        "confusion": conf.tolist(),
        "n": int(labels.numel()),
    }


# -- resumable state --------------------------------------------------------------
def _save_state(state_dir: Path, model: nn.Module, opt: torch.optim.Optimizer, meta: dict[str, Any]) -> None:
    sd = opt.state_dict()
    tensors = {}
    scalars: dict[str, Any] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{k}"] = v
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}

    def fill(tmp: Path) -> None:
        save_file(weights, str(tmp / "weights.safetensors"))
        if tensors:
            save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "state.json").write_text(json.dumps({**meta, "optimizer_groups": sd["param_groups"],
                                                     "optimizer_scalars": scalars}, indent=1))

    atomic_dir(state_dir, fill)


def _load_state(state_dir: Path, model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    meta = json.loads((state_dir / "state.json").read_text())
    load_weights_into(model, load_file(str(state_dir / "weights.safetensors")), str(state_dir))
    state: dict[int, dict[str, Any]] = {}
    if (state_dir / "optimizer.safetensors").exists():
        for key, v in load_file(str(state_dir / "optimizer.safetensors")).items():
            idx, k = key.split(".", 1)
            state.setdefault(int(idx), {})[k] = v
    for key, v in meta.get("optimizer_scalars", {}).items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["optimizer_groups"]})
    return meta


def _fingerprint(d: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def fit(
    model: nn.Module,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    cfg: TrainConfig,
    state_dir: str | Path | None = None,
    eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    masks: dict[str, torch.Tensor] | None = None,
    progress: bool = True,
    desc: str = "train",
    fingerprint_extra: dict[str, Any] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place for ``cfg.epochs`` epochs and return the history.

    With ``state_dir``, the state after each epoch is saved there and a
    later call resumes from it. ``masks`` (parameter name -> bool tensor)
    keeps pruned synapses at zero throughout.
    """
    device = pick_device(cfg.device)
    set_threads(cfg.threads)
    num_classes = int(model.genome.num_classes)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = _make_optimizer(model, cfg)
    n = int(train_labels.numel())
    if n < 1:
        raise ConfigError("the training set is empty")
    # Drop the last partial batch: its noisy BN statistics help nobody.
    steps_per_epoch = max(1, n // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    fp = _fingerprint({**cfg.schedule_dict(), "n": n, **(fingerprint_extra or {})})
    history: list[dict[str, Any]] = []
    start_epoch = 0
    train_time = 0.0
    train_images_seen = 0
    if state_dir is not None:
        state_dir = Path(state_dir)
        recover_dir(state_dir)
        if (state_dir / "state.json").exists():
            meta = _load_state(state_dir, model, opt)
            if meta.get("fingerprint") != fp:
                raise CheckpointError(
                    f"{state_dir} was saved by a run with other settings; resume with the same options or use a new run folder"
                )
            start_epoch = meta["epoch"]
            history = meta["history"]
            train_time = meta.get("train_time", 0.0)
            train_images_seen = meta.get("train_images_seen", 0)
            log.info("%s: resuming after epoch %d", desc, start_epoch)
    param_masks = None
    if masks:
        named = dict(model.named_parameters())
        param_masks = [(named[k], m.to(device, dtype=named[k].dtype)) for k, m in masks.items()]
        with torch.no_grad():
            for p, m in param_masks:
                p.mul_(m)
    bar = None
    if progress and start_epoch < cfg.epochs:
        from tqdm import tqdm

        bar = tqdm(total=total * cfg.batch_size, initial=start_epoch * steps_per_epoch * cfg.batch_size,
                   unit="img", unit_scale=True, desc=desc, mininterval=1.0, dynamic_ncols=True, leave=False)
    crit = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    model.train()
    for epoch in range(start_epoch, cfg.epochs):
        # Everything random in this epoch comes from (seed, epoch): the same
        # numbers whether or not the run was interrupted before it.
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=gen)
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        for s in range(steps_per_epoch):
            step = epoch * steps_per_epoch + s
            lr = lr_at(step, total, warmup, cfg.base_lr, cfg.min_lr_ratio)
            for gparam in opt.param_groups:
                gparam["lr"] = lr
            idx = perm[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            xb = train_images[idx].to(device, non_blocking=True)
            yb = train_labels[idx].to(device, non_blocking=True)
            x = augment_batch(xb, gen, cfg.min_scale)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            logits = model(x)
            loss = crit(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if param_masks is not None:
                with torch.no_grad():
                    for p, m in param_masks:
                        p.mul_(m)
            loss_sum += loss.detach()
            correct += (logits.detach().argmax(1) == yb).sum()
            if bar is not None:
                bar.update(len(idx))
                if s % 10 == 0:
                    bar.set_postfix(epoch=f"{epoch + 1}/{cfg.epochs}", loss=f"{loss.item():.3f}", lr=f"{lr:.3g}",
                                    refresh=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        train_time += dt
        train_images_seen += steps_per_epoch * cfg.batch_size
        rec: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": loss_sum.item() / steps_per_epoch,
            "train_acc": correct.item() / (steps_per_epoch * cfg.batch_size),
            "lr": lr,
            "epoch_s": dt,
            "img_s": steps_per_epoch * cfg.batch_size / dt,
        }
        last = epoch + 1 == cfg.epochs
        if eval_sets and (last or (cfg.eval_every > 0 and (epoch + 1) % cfg.eval_every == 0)):
            for name, (xi, yi) in eval_sets.items():
                r = evaluate(model, xi, yi, num_classes, channels_last=cfg.channels_last)
                rec[f"{name}_top1"] = r["top1"]
                rec[f"{name}_loss"] = r["loss"]
        history.append(rec)
        log.info("%s epoch %d/%d %s", desc, epoch + 1, cfg.epochs,
                 " ".join(f"{k}={v:.4g}" for k, v in rec.items() if isinstance(v, float)))
        if bar is not None:
            bar.set_postfix({"epoch": f"{epoch + 1}/{cfg.epochs}", "loss": f"{rec['loss']:.3f}",
                             **{k: f"{v:.3f}" for k, v in rec.items() if k.endswith("_top1")}})
        if state_dir is not None:
            _save_state(state_dir, model, opt, {"epoch": epoch + 1, "history": history, "fingerprint": fp,
                                                "train_time": train_time, "train_images_seen": train_images_seen})
        if on_epoch is not None:
            on_epoch(rec)
    if bar is not None:
        bar.close()
    model.eval()
    return {"history": history, "train_time_s": train_time,
            "train_img_s": train_images_seen / train_time if train_time > 0 else None}


def run_training(
    cfg: TrainConfig, out: str | Path, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """The ``train`` command: data, genome, ``fit``, evaluation, checkpoint.

    ``out/state/`` holds the resumable state, ``out/model/`` the finished
    checkpoint, ``out/train.log`` the log.
    """
    from .data import load_dataset
    from .genome import Genome, get_genome, list_genomes, load_genome_file
    from .model import build

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; choose a folder for the run")
    if out.exists() and any(out.iterdir()) and not resume:
        raise ConfigError(f"run folder {out} already exists; pass --resume to continue it or choose a new --out")
    if (out / "model" / "metrics.json").exists() and resume:
        return json.loads((out / "model" / "metrics.json").read_text())
    # Data and genome are checked before the run folder exists, so that bad
    # input leaves nothing behind that would block the corrected command.
    train, val = load_dataset(cfg.data, cfg.image_size, cfg.cache_dir or None, cfg.strict, progress=progress)
    genome: Genome
    if cfg.model in list_genomes():
        genome = get_genome(cfg.model, num_classes=len(train.classes), batchnorm=cfg.batchnorm)
    elif cfg.model.endswith(".json") or os.path.sep in cfg.model:
        genome = load_genome_file(cfg.model).with_classes(len(train.classes))
    else:
        raise ConfigError(f"unknown model '{cfg.model}'; use one of {list_genomes()} or a genome JSON file")
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("squishednets").addHandler(handler)
    logging.getLogger("squishednets").setLevel(logging.INFO)
    try:
        torch.manual_seed(cfg.seed)
        model = build(genome)
        cfg_dict = {**asdict(cfg), "classes": train.classes}
        atomic_write_json(out / "config.json", cfg_dict)
        t0 = time.perf_counter()
        result = fit(model, train.images, train.labels, cfg, state_dir=out / "state",
                     eval_sets={"val": (val.images, val.labels)}, progress=progress,
                     fingerprint_extra={"genome": genome.to_dict()})
        ev = evaluate(model, val.images, val.labels, genome.num_classes, channels_last=cfg.channels_last)
        metrics = {
            "val": ev,
            "top1": ev["top1"],
            "top5": ev["top5"],
            "classes": train.classes,
            "image_size": cfg.image_size,
            "epochs": cfg.epochs,
            "history": result["history"],
            "train_img_s": result["train_img_s"],
            "train_time_s": result["train_time_s"],
            "wall_s_this_session": time.perf_counter() - t0,
            "train_images": len(train),
            "val_images": len(val),
            "skipped_files": train.skipped + val.skipped,
        }
        save_checkpoint(out / "model", model.cpu(), metrics, cfg_dict)
        return metrics
    finally:
        logging.getLogger("squishednets").removeHandler(handler)
        handler.close()
