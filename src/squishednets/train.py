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

The ``train`` command fits on the training folder minus a stratified,
seeded held-out part (``holdout``), reports held-out top-1 (for choices) and
test top-1 (``test/`` or else ``val/``, reported only).

Distillation (Hinton, Vinyals and Dean 2015; the small-DNN playbook lists it
beside pruning): with a ``teacher`` the loss is ``(1 - w)`` times the label
loss plus ``w T^2`` times the KL divergence between the teacher's and the
student's outputs softened by temperature ``T``. The teacher sees the very
batch the student sees, after augmentation ("consistent teaching", Beyer et
al. 2022, "Knowledge distillation: a good teacher is patient and
consistent"). Its logits are not cached: every epoch draws new crops and
flips, so logits cached once per image would teach on other images than the
student sees, which is not the same training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from .checkpoint import (Checkpoint, load_checkpoint, load_weights_into, resolve_genome, save_checkpoint,
                         weights_digest)
from .config import from_dict, option, to_dict
from .data import Splits, augment_batch, load_split, load_splits, normalize_batch, test_split_name
from .errors import CheckpointError, ConfigError, DataError
from .io import atomic_dir, recover_dir
from .model import build
from .rundir import CONFIG_VERSION, RunDir
from .seeds import epoch_seeds

__all__ = ["TrainConfig", "Resumable", "fit", "distill_loss", "evaluate", "lr_at", "pick_device", "set_threads", "param_groups",
           "run_training", "train_config_of", "checkpoint_config", "accuracy_metrics", "evaluate_checkpoint",
           "DEFAULT_DATA"]

log = logging.getLogger(__name__)

DEFAULT_DATA = "../shared/datasets/imagenette"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run (written to the run folder and the checkpoint)."""

    data: str = option(DEFAULT_DATA, help="class-per-folder data set with train/ and val/ (or test/)")
    model: str = option("squeezenet1_1", help="registered genome name or genome JSON file")
    batchnorm: bool = option(True, help="BatchNorm after each convolution (export folds it away)")
    image_size: int = option(64, help="training resolution in px")
    epochs: int = option(60, help="training epochs")
    batch_size: int = option(128, help="images per step")
    optimizer: str = option("sgd", help="sgd (Nesterov) or adamw", choices=("sgd", "adamw"))
    lr: float | None = option(None, help="peak learning rate; off: 0.1 for SGD, 2e-3 for AdamW")
    momentum: float = option(0.9, help="SGD momentum")
    nesterov: bool = option(True, help="Nesterov momentum")
    weight_decay: float = option(5e-4, help="weight decay (never on BatchNorm or biases)")
    warmup_epochs: float = option(2.0, help="linear warm-up epochs")
    min_lr_ratio: float = option(0.0, help="final learning rate as a share of the peak")
    label_smoothing: float = option(0.1, help="label smoothing")
    teacher: str | None = option(None, help="checkpoint (or train run folder) whose softened outputs are learnt "
                                            "beside the labels: distillation (off: labels only)")
    distill_temperature: float = option(4.0, help="distillation: temperature T softening both outputs")
    distill_weight: float = option(0.5, help="distillation: share w of the loss from the teacher (1 - w: labels)")
    # 0.5 held against 0.35 and 0.7 on held-out (benchmarks/results/probe_heldout_*.json, BENCHMARKS.md).
    min_scale: float = option(0.5, help="random-resized-crop smallest area")
    holdout: float | None = option(0.1, help="share of each class held out of train for choices (off: none)")
    split_seed: int = option(0, help="seed of the held-out split")
    seed: int = option(0, help="seed: the same seed gives the same run")
    channels_last: bool = option(True, help="channels_last memory format")
    threads: int | None = option(None, help="CPU threads (off: every core)", resume=False)
    device: str = option("auto", help="auto, cpu or cuda", resume=False, choices=("auto", "cpu", "cuda"))
    eval_every: int | None = option(5, help="evaluate every N epochs (off: only at the end)", resume=False)
    cache_dir: str | None = option(None, help="decoded-image cache (off: ~/.cache/squishednets)", resume=False)
    strict: bool = option(False, help="fail on unreadable images instead of skipping", resume=False)

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"optimizer must be 'sgd' or 'adamw', got '{self.optimizer}'")
        if self.epochs < 0 or self.batch_size < 1:
            raise ConfigError(f"epochs must be >= 0 and batch_size >= 1, got {self.epochs} and {self.batch_size}")
        if self.image_size < 16:
            raise ConfigError(f"image_size {self.image_size} is too small for SqueezeNet; use 16 or more")
        if (self.lr is not None and self.lr <= 0) or self.weight_decay < 0 or not 0 <= self.label_smoothing < 1:
            raise ConfigError("lr must be > 0 (or off), weight_decay >= 0 and label_smoothing in [0, 1)")
        if self.distill_temperature <= 0 or not 0 <= self.distill_weight <= 1:
            raise ConfigError(f"distill_temperature must be > 0 and distill_weight in [0, 1], got "
                              f"{self.distill_temperature} and {self.distill_weight}")
        if not 0 < self.min_scale <= 1:
            raise ConfigError(f"min_scale must be in (0, 1], got {self.min_scale}")
        if self.holdout is not None and not 0 < self.holdout < 1:
            raise ConfigError(f"holdout must be in (0, 1) or off, got {self.holdout}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, got '{self.device}'")
        for name in ("threads", "eval_every"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"{name} must be >= 1 or off, got {v}")

    @property
    def base_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return 0.1 if self.optimizer == "sgd" else 2e-3


def checkpoint_config(cfg: TrainConfig, classes: list[str]) -> dict[str, Any]:
    """What a checkpoint's ``config.json`` holds: the training configuration and the class names."""
    return {"config_version": CONFIG_VERSION, "train": to_dict(cfg), "classes": classes}


def train_config_of(ck: Checkpoint) -> tuple[TrainConfig, list[str]]:
    """The training configuration and classes a checkpoint records."""
    c = ck.config
    if c.get("config_version") != CONFIG_VERSION or "train" not in c:
        raise CheckpointError(f"{ck.path} was written by another version of squishednets (config version "
                              f"{c.get('config_version')}, this one reads {CONFIG_VERSION}); retrain it with this one")
    return from_dict(TrainConfig, c["train"], f"{ck.path}/config.json"), list(c["classes"])


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' was asked for but CUDA is not available; use --device cpu")
        return torch.device("cuda")
    return torch.device("cpu")


def set_threads(n: int | None) -> int:
    """Use ``n`` CPU threads (``None``: torch's default, every core)."""
    if n is not None:
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


def _fingerprint(cfg: TrainConfig, n: int, extra: dict[str, Any]) -> str:
    """What a resumed ``fit`` must match: every option that decides the numbers
    (``resume=True`` in its declaration) except where the data lives, the
    number of training images, and the caller's ``extra`` (e.g. the genome)."""
    keep = {f.name for f in dataclasses.fields(cfg) if f.metadata.get("resume", True)} - {"data"}
    if cfg.teacher is None and "teacher" not in extra:  # without a teacher the distillation settings decide nothing
        keep -= {"teacher", "distill_temperature", "distill_weight"}
    d = {k: v for k, v in to_dict(cfg).items() if k in keep}
    return hashlib.sha256(json.dumps({**d, "n": n, **extra}, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Resumable:
    """Where ``fit`` keeps its per-epoch state, and what else a resume must match."""

    state_dir: Path
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclass
class _Progress:
    """The state ``fit`` carries between epochs (and saves for a resume)."""

    epoch: int = 0
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    train_time: float = 0.0
    images_seen: int = 0


def _restore(res: Resumable, model: nn.Module, opt: torch.optim.Optimizer, fp: str, desc: str) -> _Progress:
    recover_dir(res.state_dir)
    if not (res.state_dir / "state.json").exists():
        return _Progress()
    meta = _load_state(res.state_dir, model, opt)
    if meta.get("fingerprint") != fp:
        raise CheckpointError(f"{res.state_dir} was saved by a run with other settings; resume with the same "
                              "options or use a new run folder")
    log.info("%s: resuming after epoch %d", desc, meta["epoch"])
    return _Progress(meta["epoch"], meta["history"], meta["train_time"], meta["train_images_seen"])


@dataclass
class _Step:
    """Fixed per-run quantities of the optimisation loop."""

    opt: torch.optim.Optimizer
    crit: nn.Module
    steps: int
    total: int
    warmup: int
    masks: list[tuple[torch.Tensor, torch.Tensor]] | None
    bar: Any
    teacher: nn.Module | None = None


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 KL(softmax(teacher / T) || softmax(student / T))``, averaged over
    the batch (Hinton et al. 2015: the ``T^2`` keeps the gradient's scale as
    ``T`` changes)."""
    t = temperature
    return F.kl_div(F.log_softmax(student.float() / t, 1), F.log_softmax(teacher.float() / t, 1), log_target=True,
                    reduction="batchmean") * (t * t)


def _train_epoch(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], cfg: TrainConfig, epoch: int,
                 st: _Step) -> dict[str, Any]:
    """One epoch; everything random comes from (seed, epoch), so the same
    numbers are drawn whether or not the run was interrupted before it."""
    images, labels = data
    device = next(model.parameters()).device
    n = int(labels.numel())
    torch_seed, gen_seed = epoch_seeds(cfg.seed, epoch)
    torch.manual_seed(torch_seed)
    gen = torch.Generator().manual_seed(gen_seed)
    perm = torch.randperm(n, generator=gen)
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    lr = 0.0
    for s in range(st.steps):
        lr = lr_at(epoch * st.steps + s, st.total, st.warmup, cfg.base_lr, cfg.min_lr_ratio)
        for group in st.opt.param_groups:
            group["lr"] = lr
        idx = perm[s * cfg.batch_size:(s + 1) * cfg.batch_size]
        yb = labels[idx].to(device, non_blocking=True)
        x = augment_batch(images[idx].to(device, non_blocking=True), gen, cfg.min_scale)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = model(x)
        loss = st.crit(logits, yb)
        if st.teacher is not None:  # consistent teaching: the same augmented batch
            with torch.no_grad():
                soft = st.teacher(x)
            w = cfg.distill_weight
            loss = (1 - w) * loss + w * distill_loss(logits, soft, cfg.distill_temperature)
        st.opt.zero_grad(set_to_none=True)
        loss.backward()
        st.opt.step()
        if st.masks is not None:
            with torch.no_grad():
                for p, m in st.masks:
                    p.mul_(m)
        loss_sum += loss.detach()
        correct += (logits.detach().argmax(1) == yb).sum()
        seen += len(idx)  # a set smaller than one batch gives one short batch
        if st.bar is not None:
            st.bar.update(len(idx))
            if s % 10 == 0:
                st.bar.set_postfix(epoch=f"{epoch + 1}/{cfg.epochs}", loss=f"{loss.item():.3f}", lr=f"{lr:.3g}",
                                   refresh=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"epoch": epoch + 1, "loss": loss_sum.item() / st.steps, "train_acc": correct.item() / seen, "lr": lr,
            "epoch_s": dt, "img_s": seen / dt, "images": seen}


def fit(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    cfg: TrainConfig,
    *,
    resume: Resumable | None = None,
    eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    masks: dict[str, torch.Tensor] | None = None,
    desc: str | None = "train",
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    teacher: nn.Module | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place for ``cfg.epochs`` epochs on ``train`` (uint8
    images, labels) and return the history.

    With ``resume``, the state after each epoch is saved in its folder and a
    later call resumes from it (``resume.extra`` should name the teacher, if
    any). ``masks`` (parameter name -> bool tensor) keeps pruned synapses at
    zero throughout. ``teacher`` (in eval mode, frozen) distils into the
    model with ``cfg.distill_temperature`` and ``cfg.distill_weight``.
    ``desc`` labels the progress bar (``None``: no bar).
    """
    device = pick_device(cfg.device)
    set_threads(cfg.threads)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = _make_optimizer(model, cfg)
    n = int(train[1].numel())
    if n < 1:
        raise ConfigError("the training set is empty")
    # Drop the last partial batch (its noisy BN statistics help nobody),
    # unless the whole set is smaller than one batch.
    steps = max(1, n // cfg.batch_size)
    fp = _fingerprint(cfg, n, resume.extra if resume else {})
    prog = _restore(resume, model, opt, fp, desc or "train") if resume else _Progress()
    param_masks = _apply_masks(model, masks, device)
    bar = None
    if desc is not None and prog.epoch < cfg.epochs:
        per_epoch = min(n, steps * cfg.batch_size)
        bar = tqdm(total=cfg.epochs * per_epoch, initial=prog.epoch * per_epoch, unit="img", unit_scale=True,
                   desc=desc, mininterval=1.0, dynamic_ncols=True, leave=False)
    if teacher is not None:
        teacher = teacher.to(device).eval().requires_grad_(False)
        if cfg.channels_last:
            teacher.to(memory_format=torch.channels_last)
    st = _Step(opt, nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing), steps, steps * cfg.epochs,
               int(round(cfg.warmup_epochs * steps)), param_masks, bar, teacher)
    model.train()
    for epoch in range(prog.epoch, cfg.epochs):
        rec = _train_epoch(model, train, cfg, epoch, st)
        prog.train_time += rec["epoch_s"]
        prog.images_seen += rec.pop("images")
        if eval_sets and (epoch + 1 == cfg.epochs or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0)):
            for name, (xi, yi) in eval_sets.items():
                r = evaluate(model, xi, yi, int(model.genome.num_classes), channels_last=cfg.channels_last)
                rec[f"{name}_top1"], rec[f"{name}_loss"] = r["top1"], r["loss"]
        prog.history.append(rec)
        prog.epoch = epoch + 1
        log.info("%s epoch %d/%d %s", desc or "train", epoch + 1, cfg.epochs,
                 " ".join(f"{k}={v:.4g}" for k, v in rec.items() if isinstance(v, float)))
        if bar is not None:
            bar.set_postfix({"epoch": f"{epoch + 1}/{cfg.epochs}", "loss": f"{rec['loss']:.3f}",
                             **{k: f"{v:.3f}" for k, v in rec.items() if k.endswith("_top1")}})
        if resume is not None:
            _save_state(resume.state_dir, model, opt, {"epoch": prog.epoch, "history": prog.history,
                                                       "fingerprint": fp, "train_time": prog.train_time,
                                                       "train_images_seen": prog.images_seen})
        if on_epoch is not None:
            on_epoch(rec)
    if bar is not None:
        bar.close()
    model.eval()
    return {"history": prog.history, "train_time_s": prog.train_time,
            "train_img_s": prog.images_seen / prog.train_time if prog.train_time > 0 else None}


def _apply_masks(model: nn.Module, masks: dict[str, torch.Tensor] | None,
                 device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    if not masks:
        return None
    named = dict(model.named_parameters())
    out = [(named[k], m.to(device, dtype=named[k].dtype)) for k, m in masks.items()]
    with torch.no_grad():
        for p, m in out:
            p.mul_(m)
    return out


def _log_to(out: Path) -> logging.Handler:
    handler = logging.FileHandler(out / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("squishednets")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler


def accuracy_metrics(model: nn.Module, splits: Splits, channels_last: bool = True) -> dict[str, Any]:
    """Held-out top-1 (for choices) and test top-1/top-5 (reported only) of a trained model."""
    n = int(model.genome.num_classes)
    held = evaluate(model, splits.heldout.images, splits.heldout.labels, n, channels_last=channels_last)
    test = evaluate(model, splits.test.images, splits.test.labels, n, channels_last=channels_last)
    return {"heldout_top1": held["top1"] if held["n"] else None, "test_top1": test["top1"],
            "test_top5": test["top5"], "test": test, "test_split": splits.test_name,
            "heldout_images": held["n"], "test_images": test["n"]}


def run_training(cfg: TrainConfig, out: str | Path, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """The ``train`` command: data, genome, ``fit``, evaluation, checkpoint.

    ``out/state/`` holds the resumable state, ``out/model/`` the finished
    checkpoint, ``out/train.log`` the log.
    """
    out = Path(out)
    if out.exists() and out.is_dir() and any(out.iterdir()) and not resume:
        raise ConfigError(f"run folder {out} already exists; pass --resume to continue it or choose a new --out")
    if resume and (out / "model" / "metrics.json").exists():
        RunDir.open(out, cfg, "train")  # still refuses other settings
        return json.loads((out / "model" / "metrics.json").read_text())
    # Data and genome are checked before the run folder exists, so that bad
    # input leaves nothing behind that would block the corrected command.
    splits = load_splits(cfg.data, cfg.image_size, cfg.holdout, cfg.split_seed, cfg.cache_dir, cfg.strict,
                         progress=progress)
    genome = resolve_genome(cfg.model, num_classes=len(splits.classes), batchnorm=cfg.batchnorm)
    teacher, teacher_id = _teacher(cfg, splits.classes)
    RunDir.open(out, cfg, "train")
    handler = _log_to(out)
    try:
        torch.manual_seed(cfg.seed)
        model = build(genome)
        t0 = time.perf_counter()
        evals = {"test": (splits.test.images, splits.test.labels)}
        if len(splits.heldout):
            evals = {"heldout": (splits.heldout.images, splits.heldout.labels), **evals}
        result = fit(model, (splits.train.images, splits.train.labels), cfg,
                     resume=Resumable(out / "state", {"genome": genome.to_dict(), **teacher_id}), eval_sets=evals,
                     desc="train" if progress else None, teacher=teacher)
        metrics = {**accuracy_metrics(model, splits, cfg.channels_last), "classes": splits.classes,
                   "history": result["history"], "train_img_s": result["train_img_s"],
                   "train_time_s": result["train_time_s"], "wall_s_this_session": time.perf_counter() - t0,
                   "train_images": len(splits.train), "skipped_files": splits.train.skipped + splits.test.skipped}
        save_checkpoint(out / "model", model.cpu(), metrics, checkpoint_config(cfg, splits.classes))
        return metrics
    finally:
        logging.getLogger("squishednets").removeHandler(handler)
        handler.close()


def _teacher(cfg: TrainConfig, classes: list[str]) -> tuple[nn.Module | None, dict[str, Any]]:
    """The distillation teacher of ``cfg`` (checked against the data's
    classes) and what identifies it for a resume: its weights, not its path."""
    if cfg.teacher is None:
        return None, {}
    ck = load_checkpoint(cfg.teacher)
    _, t_classes = train_config_of(ck)
    if t_classes != classes:
        raise DataError(f"the teacher {cfg.teacher} was trained on classes {t_classes[:3]}..., the data has "
                        f"{classes[:3]}...; distil from a checkpoint trained on the same class folders")
    return ck.model, {"teacher": weights_digest(ck.path)}


def evaluate_checkpoint(ck: Checkpoint, data: str | None = None, split: str | None = None,
                        image_size: int | None = None, cache_dir: str | None = None) -> dict[str, Any]:
    """Top-1, top-5, per-class accuracy and confusion of a checkpoint on one
    split of its data (default: the test split, ``test/`` or else ``val/``)."""
    tcfg, classes = train_config_of(ck)
    root = data or tcfg.data
    size = image_size or tcfg.image_size
    name = split or test_split_name(root, cache_dir)
    s = load_split(root, name, size, cache_dir)
    if classes != s.classes:
        raise DataError(f"the data's classes {s.classes[:3]}... differ from the checkpoint's {classes[:3]}...; "
                        "evaluate on data with the same class folders")
    r = evaluate(ck.model, s.images, s.labels, ck.genome.num_classes)
    return {**r, "classes": s.classes, "image_size": size, "split": name}
