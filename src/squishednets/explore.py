"""Design-space exploration: the small-DNN playbook's method on the user's data.

The playbook (sections 3-4) finds a small network by defining a benchmark
and goals (parameters + activations in an 8192 KB SRAM, a frame rate, an
accuracy, energy per frame), training many points of a design space, and
finding each dimension's *saturation point*: the value after which more
capacity stops buying accuracy (section 4.4; the SqueezeNet paper's
section 5 found SR = 0.75 and 50% 3x3 filters on ImageNet). SqueezeNet came
out of 1,000+ such points; here the same search runs on one machine or, through
``executor``, on a Ray cluster.

A design is a dict of axis values (``AXES``); ``design_genome`` turns it into
a genome with ``genome.squeezenet_design``, so every point is built, trained,
exported and measured like any network. Strategies:

- ``grid``: the playbook's one-dimension sweeps, each chosen axis swept over
  its values with every other axis at the base design (SqueezeNet v1.1);
- ``random``: designs drawn uniformly from the chosen axes;
- ``nsga2``: Optuna's NSGA-II over held-out top-1, size and MACs (or
  measured batch-1 latency).

Every strategy runs as an Optuna study in a real database (SQLite in the run
folder by default, any SQLAlchemy URL with ``--storage``), so several
processes can share one study. A design point's work is idempotent and
atomic on disk (``points/KEY/sSEED/``: its training state, checkpoint, ONNX
file and ``result.json``): a killed run's trials go stale (no heartbeat),
Optuna fails them and queues the same design again, and the retry finds the
training state where it stopped, so after ``kill -9`` and a restart no point
is lost or trained twice.

Choices (the Pareto front, saturation points, ``--top`` designs) use held-out
top-1 only; test top-1 is reported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import html
import json
import logging
import math
import os
import random
import statistics
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .config import from_dict, option, to_dict
from .data import check_dataset
from .fetch import location
from .errors import ConfigError, GenomeError, SquishedError
from .executor import ExecConfig, make_executor
from .genome import Genome, StemSpec, make_divisible, pool_positions, squeezenet_design
from .io import atomic_write_bytes, atomic_write_json, atomic_write_text
from .metrics import BYTES_FP32, Profile, profile
from .records import SELECTED_BY
from .rundir import RunDir
from .train import TrainConfig

__all__ = ["AXES", "BASE", "PAPER_SATURATION", "ENERGY_PJ", "ExploreConfig", "EXPLORE_TRAIN", "full_design",
           "design_key", "design_genome", "energy_mj", "memory_figures", "violations", "pareto", "saturation",
           "run_point", "explore", "summary"]

log = logging.getLogger(__name__)

# Each axis's values in order of capacity (the sweeps' x axis). Booleans and
# the pooling strategy are categorical: no saturation point.
AXES: dict[str, tuple[Any, ...]] = {
    "base_e": (16, 32, 64, 128, 256),          # expand filters of the first Fire (SqueezeNet paper 5.1)
    "incr_e": (0, 32, 64, 128),                # added every freq Fire modules
    "freq": (4, 2, 1),                         # how often e grows (more often: more capacity)
    "pct3x3": (0.0, 0.125, 0.25, 0.5, 0.75, 1.0),  # kernel reduction (playbook 5.3)
    "sr": (0.125, 0.25, 0.5, 0.75, 1.0),       # squeeze ratio: channel reduction (playbook 5.4)
    "width": (0.25, 0.5, 0.75, 1.0),           # width multiplier over every layer
    "stem_filters": (16, 32, 64, 96),
    "stem_kernel": (3, 5, 7),
    "stem_stride": (2, 1),
    "pool": ("early", "even", "late"),         # downsampling placement (playbook 5.5)
    "depthwise": (False, True),                # depthwise-separable expand3x3 (playbook 5.6)
    "groups": (4, 2, 1),                       # grouped 1x1 with channel shuffle (playbook 5.7)
}
CATEGORICAL = ("pool", "depthwise")
# SqueezeNet v1.1 (the SquishedNets ancestor) as a design: the sweeps' centre.
BASE: dict[str, Any] = {"base_e": 128, "incr_e": 128, "freq": 2, "pct3x3": 0.5, "sr": 0.125, "width": 1.0,
                        "stem_filters": 64, "stem_kernel": 3, "stem_stride": 2, "pool": "early",
                        "depthwise": False, "groups": 1}
# The SqueezeNet paper's saturation points on ImageNet (section 5, top-5).
PAPER_SATURATION = {"sr": {"value": 0.75, "top5": 0.860}, "pct3x3": {"value": 0.5, "top5": 0.856}}
GRID_AXES = ("pct3x3", "sr")  # the playbook's two sweeps
SEARCH_AXES = ("base_e", "incr_e", "freq", "pct3x3", "sr", "width", "pool")
OBJECTIVES = ("top1", "size", "macs", "latency")

# Energy per frame, estimated from counts (Horowitz, ISSCC 2014, 45 nm): an
# fp32 multiply-add 4.6 pJ (3.7 + 0.9), a 32-bit read from a small SRAM
# 5 pJ, from DRAM 640 pJ: the playbook's "off-chip access costs 100x".
ENERGY_PJ = {"mac": 4.6, "sram": 5.0, "dram": 640.0}

# A design point's short schedule: cached data, no evaluation until the end.
EXPLORE_TRAIN = TrainConfig(epochs=6, eval_every=None)


# -- designs --------------------------------------------------------------------------
def full_design(partial: Mapping[str, Any]) -> dict[str, Any]:
    """The base design with ``partial``'s axes replaced; unknown axes or values fail."""
    unknown = sorted(set(partial) - set(AXES))
    if unknown:
        raise ConfigError(f"unknown design axis {unknown}; the axes are {', '.join(AXES)}")
    d = {**BASE, **partial}
    for k, v in d.items():
        # The axis's own value (1 and 1.0 are one width; True is not 1): one design, one key.
        same = [a for a in AXES[k] if a == v and isinstance(a, bool) == isinstance(v, bool)]
        if not same:
            raise ConfigError(f"design axis {k} has no value {v!r}; its values are {list(AXES[k])}")
        d[k] = same[0]
    return d


def design_key(design: Mapping[str, Any]) -> str:
    """A short, stable identity of a design (the name of its points folder)."""
    canon = json.dumps(full_design(design), sort_keys=True)
    return hashlib.sha256(canon.encode()).hexdigest()[:10]


def design_name(design: Mapping[str, Any]) -> str:
    d = full_design(design)
    return "squeezenet1_1" if d == BASE else f"design-{design_key(d)}"


def design_genome(design: Mapping[str, Any], num_classes: int, round_to: int = 8, batchnorm: bool = True) -> Genome:
    """The genome of ``design`` (SqueezeNet paper 5.1's metaparameters plus the
    playbook's 5.5-5.7 options), widths rounded to multiples of ``round_to``."""
    d = full_design(design)
    # Same-size padding only at stride 1 (v1.0 and v1.1 pad their stride-2 conv1 by nothing).
    stem = StemSpec(filters=make_divisible(d["stem_filters"] * d["width"], math.lcm(round_to, d["groups"])),
                    kernel=d["stem_kernel"],
                    stride=d["stem_stride"], padding=d["stem_kernel"] // 2 if d["stem_stride"] == 1 else 0)
    try:
        return squeezenet_design(
            base_e=d["base_e"], incr_e=d["incr_e"], pct3x3=d["pct3x3"], freq=d["freq"], sr=d["sr"],
            num_classes=num_classes, stem=stem, pool_after=pool_positions(d["pool"], 8), divisor=round_to,
            width_multiplier=d["width"], batchnorm=batchnorm, name=design_name(d), depthwise=d["depthwise"],
            groups=d["groups"])
    except GenomeError as e:
        raise ConfigError(f"design {design_name(d)} {json.dumps({k: d[k] for k in d if d[k] != BASE[k]})}: {e}") from None


# -- memory and energy ----------------------------------------------------------------
def memory_figures(prof: Profile) -> dict[str, float]:
    """Memory counted both ways: the playbook's (fp32 parameters + peak fp32
    activations against one SRAM) and the microcontroller one (MCUNet: int8
    weights in flash, the peak int8 activations in SRAM; int32 biases)."""
    biases = sum(layer.cout for layer in prof.layers if layer.params)
    return {
        "peak_activation_kb": prof.peak_activation_bytes / 1024,
        "params_plus_activations_kb": prof.on_chip_bytes() / 1024,
        "int8_flash_kb": ((prof.params - biases) + 4 * biases) / 1024,
        "int8_sram_kb": prof.peak_activation_bytes / BYTES_FP32 / 1024,
    }


def energy_mj(prof: Profile, sram_kb: float = 8192) -> float:
    """Estimated energy per frame (batch 1) in mJ: every MAC, every weight read
    once, every activation written once and read once; from the SRAM when
    parameters + activations fit ``sram_kb``, else from DRAM (``ENERGY_PJ``)."""
    fits = prof.on_chip_bytes() / 1024 <= sram_kb
    mem = ENERGY_PJ["sram" if fits else "dram"]
    activations = sum(layer.activation_bytes for layer in prof.layers) / BYTES_FP32
    pj = prof.macs * ENERGY_PJ["mac"] + prof.params * mem + 2 * activations * mem
    return pj * 1e-9


# -- configuration --------------------------------------------------------------------
@dataclass(frozen=True)
class ExploreConfig:
    """Settings of ``squishednets explore``."""

    strategy: str = option("grid", help="grid: one-axis sweeps around SqueezeNet v1.1; random; nsga2: Optuna's "
                                        "multi-objective NSGA-II", choices=("grid", "random", "nsga2"))
    axes: tuple[str, ...] = option((), help="axes to vary, comma-separated (off: pct3x3,sr for grid; base_e,"
                                            "incr_e,freq,pct3x3,sr,width,pool otherwise); all: " + ",".join(AXES))
    trials: int = option(24, help="random/nsga2: design points to evaluate (raise it to extend a study)",
                         resume=False)
    population: int = option(8, help="nsga2: population per generation")
    objectives: tuple[str, ...] = option(("top1", "size", "macs"), help="what the search and the Pareto front "
                                         "trade: top1 (held-out, up) and some of size, macs, latency (batch 1, down)")
    seeds: int = option(1, help="training seeds per design point")
    front_seeds: int = option(2, help="seeds of every point on the final Pareto front (more are trained)",
                              resume=False)
    timing_rounds: int = option(3, help="interleaved rounds of the final ONNX Runtime timing of every point, "
                                        "serially in this process (medians)", resume=False)
    minutes: float | None = option(None, help="per-point budget in minutes instead of --train-epochs (epochs "
                                              "from the measured speed of the design, recorded)")
    round_to: int = option(8, help="round every width to a multiple of this")
    sram_kb: float | None = option(None, help="constraint: fp32 parameters + activations in KB (playbook: 8192)", resume=False)
    min_fps: float | None = option(None, help="constraint: frames/s at batch 1 in ONNX Runtime here", resume=False)
    min_top1: float | None = option(None, help="constraint: held-out top-1 (0-1)", resume=False)
    max_energy_mj: float | None = option(None, help="constraint: estimated energy per frame in mJ", resume=False)
    flash_kb: float | None = option(None, help="constraint: int8 weights in KB (microcontroller flash)", resume=False)
    mcu_sram_kb: float | None = option(None, help="constraint: peak int8 activations in KB (microcontroller SRAM)", resume=False)
    top: int = option(0, help="write the genomes of the best K designs meeting the constraints to OUT/designs/",
                      resume=False)
    storage: str | None = option(None, help="Optuna storage URL shared by workers (off: sqlite in the run folder)",
                                 resume=False)
    study: str = option("explore", help="Optuna study name in the storage")
    grace_s: int = option(120, help="seconds without a heartbeat after which a running point counts as lost "
                                    "and is queued again", resume=False)
    bench_threads: int | None = option(None, help="ONNX Runtime threads of the speed figures (off: every core)",
                                       resume=False)
    seed: int = option(0, help="seed of the sampler and the first training seed")
    train: TrainConfig = option(default_factory=lambda: EXPLORE_TRAIN, help="each design point's training")
    executor: ExecConfig = option(default_factory=ExecConfig, help="where the points run")

    def __post_init__(self) -> None:
        bad = sorted(set(self.axes) - set(AXES))
        if bad:
            raise ConfigError(f"unknown axis {bad} in --axes; the axes are {','.join(AXES)}")
        if len(set(self.axes)) != len(self.axes):
            raise ConfigError(f"--axes names an axis twice: {','.join(self.axes)}")
        bad = sorted(set(self.objectives) - set(OBJECTIVES))
        if bad or "top1" not in self.objectives or len(self.objectives) < 2:
            raise ConfigError(f"--objectives must be top1 plus some of size, macs, latency, got "
                              f"{','.join(self.objectives) or 'none'}")
        for name in ("trials", "population", "seeds", "front_seeds", "round_to", "grace_s", "timing_rounds"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.top < 0:
            raise ConfigError(f"--top must be >= 0, got {self.top}")
        if self.minutes is not None and self.minutes <= 0:
            raise ConfigError(f"--minutes must be > 0 or off, got {self.minutes}")
        if self.min_top1 is not None and not 0 < self.min_top1 <= 1:
            raise ConfigError(f"--min-top1 is a share in (0, 1], got {self.min_top1}")
        for name in ("sram_kb", "min_fps", "max_energy_mj", "flash_kb", "mcu_sram_kb"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0 or off, got {v}")
        if self.strategy == "nsga2" and self.population < 2:
            raise ConfigError(f"--population must be >= 2 for nsga2 (Optuna's NSGA-II breeds pairs), got "
                              f"{self.population}")
        if self.train.holdout is None:
            raise ConfigError("explore chooses by held-out top-1: --train-holdout cannot be off")
        self.executor.check_device(self.train.device)

    @property
    def swept(self) -> tuple[str, ...]:
        return self.axes or (GRID_AXES if self.strategy == "grid" else SEARCH_AXES)


def _constraints(cfg: ExploreConfig) -> dict[str, float]:
    return {k: getattr(cfg, k) for k in ("sram_kb", "min_fps", "min_top1", "max_energy_mj", "flash_kb",
                                          "mcu_sram_kb") if getattr(cfg, k) is not None}


def violations(point: Mapping[str, Any], cfg: ExploreConfig) -> list[str]:
    """What ``point`` (a result) misses of the constraints; static ones work
    on a point without accuracy or speed (those are skipped when absent)."""
    checks = [("sram_kb", "params_plus_activations_kb", "fp32 params + activations {:.0f} KB > {:g} KB", 1),
              ("flash_kb", "int8_flash_kb", "int8 weights {:.0f} KB > {:g} KB", 1),
              ("mcu_sram_kb", "int8_sram_kb", "int8 activations {:.0f} KB > {:g} KB", 1),
              ("max_energy_mj", "energy_mj", "energy {:.3f} mJ > {:g} mJ", 1),
              ("min_top1", "heldout_top1", "held-out top-1 {:.3f} < {:g}", -1),
              ("min_fps", "fps", "{:.1f} frames/s < {:g}", -1)]
    out = []
    for opt, field, text, sign in checks:
        limit, value = getattr(cfg, opt), point.get(field)
        if limit is not None and value is not None and sign * (value - limit) > 0:
            out.append(text.format(value, limit))
    return out


# -- one design point -----------------------------------------------------------------
def _epochs_for(genome: Genome, tcfg: TrainConfig, n_train: int, minutes: float) -> int:
    """Epochs that fit ``minutes`` at the speed this design trains here, on
    the device it will train on (a few timed steps after a warm-up), at least 1."""
    import torch

    from .model import build
    from .train import pick_device, set_threads

    set_threads(tcfg.threads)
    dev = pick_device(tcfg.device)
    torch.manual_seed(0)
    model = build(genome).train().to(dev)
    if tcfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(tcfg.batch_size, 3, tcfg.image_size, tcfg.image_size, device=dev)
    y = torch.randint(0, genome.num_classes, (tcfg.batch_size,), device=dev)
    times = []
    for i in range(4):
        t = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t)
    img_s = tcfg.batch_size / statistics.median(times)
    return max(1, min(200, int(minutes * 60 * img_s / max(1, n_train))))


def _design_epochs(path: Path, genome: Genome, tcfg: TrainConfig, task: dict[str, Any]) -> int:
    """The ``--minutes`` schedule of a design, chosen once for all its seeds
    (a seed's spread must not mix in another schedule) and kept on resume.
    The first seed to get here writes it; a seed racing it reads the winner's."""
    if not path.is_file():
        epochs = _epochs_for(genome, tcfg, task["n_train"], task["minutes"])
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        atomic_write_json(tmp, {"epochs": epochs, "device": tcfg.device})
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)  # exclusive: never replaces a schedule a seed may already train on
        tmp.unlink()
    return int(json.loads(path.read_text())["epochs"])


class _PointLock:
    """One trainer per point folder: ``.lock`` is created exclusively and
    touched while the point trains, so another process (a second worker on a
    shared study, a duplicate design in flight) waits for the result instead
    of training the point twice; a lock untouched for ``grace_s`` belongs to a
    dead process and is taken over."""

    def __init__(self, folder: Path, grace_s: float):
        self.path, self.grace_s = folder / ".lock", grace_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, done: Path) -> bool:
        """True once held; False when ``done`` appeared while waiting."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                break
            except FileExistsError:
                if done.is_file():
                    return False
                try:
                    if time.time() - self.path.stat().st_mtime > self.grace_s and self._take_over():
                        continue  # its owner is gone
                except FileNotFoundError:
                    continue
                time.sleep(min(1.0, self.grace_s / 4))
        self._thread = threading.Thread(target=self._touch, daemon=True)
        self._thread.start()
        return True

    def _take_over(self) -> bool:
        """Removes the lock if it is still stale; False when another waiter is
        doing so. Seeing a stale lock and removing it are two steps: without
        the guard, a waiter that saw the dead owner's lock could remove the
        fresh one another waiter had just created, and both would train. The
        guard (``.lock.takeover``, created exclusively) serialises the re-check
        and the removal. A guard left by a process that died within these few
        lines goes stale too and is removed after ``grace_s``; the removal of
        such a dead guard is the one step left unguarded, so two trainers need
        a death inside these lines and two waiters racing over it."""
        guard = self.path.with_name(".lock.takeover")
        try:
            os.close(os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            with contextlib.suppress(FileNotFoundError):
                if time.time() - guard.stat().st_mtime > self.grace_s:
                    guard.unlink()
            return False
        try:
            if time.time() - self.path.stat().st_mtime > self.grace_s:
                self.path.unlink()
        except FileNotFoundError:
            pass
        finally:
            guard.unlink()
        return True

    @staticmethod
    def held(folder: Path, grace_s: float) -> bool:
        """Whether a live process holds ``folder``'s lock (touched within ``grace_s``)."""
        try:
            return time.time() - (folder / ".lock").stat().st_mtime <= grace_s
        except FileNotFoundError:
            return False

    def _touch(self) -> None:
        while not self._stop.wait(max(0.5, self.grace_s / 4)):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def run_point(task: dict[str, Any]) -> dict[str, Any]:
    """Train and measure one (design, seed): the executor's task.

    ``task`` holds plain data only (the genome as a dict, the training
    configuration as a dict, paths), so it runs in another process or on a
    Ray node that sees the same paths. Idempotent: a finished point returns
    its ``result.json``; an interrupted one resumes its training state; a
    point another process is training is waited for (``_PointLock``).
    """
    out = Path(task["dir"])
    done = out / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    lock = _PointLock(out, task["grace_s"])
    if not lock.acquire(done):
        return json.loads(done.read_text())
    try:
        if done.is_file():
            return json.loads(done.read_text())
        return _train_and_measure(task, out, done)
    finally:
        lock.release()


def run_point_safe(task: dict[str, Any]) -> dict[str, Any]:
    """``run_point``, with a failure returned as ``{"error": ...}`` so that
    the driver fails that design's trial alone and goes on."""
    try:
        return run_point(task)
    except Exception as e:  # any failure of one design must not stop the study
        log.warning("design point %s failed: %s: %s", task["dir"], type(e).__name__, e)
        return {"error": f"{type(e).__name__}: {e}", "dir": task["dir"]}


def _train_and_measure(task: dict[str, Any], out: Path, done: Path) -> dict[str, Any]:
    from .checkpoint import load_checkpoint
    from .export import export_onnx
    from .train import run_training

    t0 = time.perf_counter()
    genome = Genome.from_dict(task["genome"])
    gpath = out / "genome.json"
    if not gpath.is_file():
        atomic_write_text(gpath, genome.to_json())
    tcfg = dataclasses.replace(from_dict(TrainConfig, task["train"]), model=str(gpath), seed=task["seed"])
    if task.get("minutes"):
        tcfg = dataclasses.replace(tcfg, epochs=_design_epochs(out.parent / "epochs.json", genome, tcfg, task))
    m = run_training(tcfg, out / "train", resume=True, progress=False)
    ck = load_checkpoint(out / "train" / "model")
    prof = profile(ck.genome, tcfg.image_size)
    onnx_path = out / "model.onnx"
    check = export_onnx(ck.model, onnx_path, tcfg.image_size)
    speed = ort_speed(onnx_path, tcfg.image_size, task.get("bench_threads"))
    result = {
        "name": genome.name, "key": task["key"], "design": task["design"], "seed": task["seed"],
        "genome": genome.to_dict(), "params": prof.params, "size_mb": prof.size_mb, "macs": prof.macs,
        **memory_figures(prof), "heldout_top1": m["heldout_top1"], "test_top1": m["test_top1"],
        "test_split": m["test_split"], "epochs": tcfg.epochs, "image_size": tcfg.image_size,
        "train_time_s": m["train_time_s"], **speed, "onnx_max_abs_diff": check["max_abs_diff"],
        "wall_s": time.perf_counter() - t0,
    }
    atomic_write_json(done, result)
    return result


def ort_speed(onnx_path: Path, image_size: int, threads: int | None) -> dict[str, Any]:
    """ONNX Runtime images/s at batch 32 and batch-1 latency (medians, the
    ``bench`` protocol) and whether other processes used the CPU meanwhile."""
    import numpy as np

    from .bench import CpuMonitor
    from .ort import images_per_second, session

    threads = threads or os.cpu_count() or 1
    sess = session(onnx_path, threads)
    x32 = np.random.default_rng(0).standard_normal((32, 3, image_size, image_size), dtype=np.float32)
    with CpuMonitor() as mon:
        img_s = images_per_second(sess, x32, runs=10, warmup=2, min_time=0.5)
        b1_ms = 1000 / images_per_second(sess, x32[:1], runs=20, warmup=3, min_time=0.5)
    return {"ort_b32_img_s": img_s, "ort_b1_ms": b1_ms, "fps": 1000 / b1_ms, "ort_threads": threads,
            "other_cpu_cores": mon.other_cores, "machine_busy": mon.busy}


# -- choosing -------------------------------------------------------------------------
def _sign(objective: str) -> tuple[str, int]:
    """(result field, +1 to maximise / -1 to minimise) of an objective."""
    return {"top1": ("heldout_top1", 1), "size": ("size_mb", -1), "macs": ("macs", -1),
            "latency": ("ort_b1_ms", -1)}[objective]


def pareto(points: Sequence[Mapping[str, Any]], objectives: Sequence[str]) -> list[str]:
    """Names of the points no other point beats on every objective (ties: both kept)."""
    keys = [_sign(o) for o in objectives]

    def vec(p: Mapping[str, Any]) -> tuple[float, ...]:
        return tuple(s * float(p[f]) for f, s in keys)

    vs = [vec(p) for p in points]
    front = []
    for i, p in enumerate(points):
        dominated = any(all(a >= b for a, b in zip(vs[j], vs[i])) and any(a > b for a, b in zip(vs[j], vs[i]))
                        for j in range(len(points)) if j != i)
        if not dominated:
            front.append(p["name"])
    return front


def seed_noise(points: Sequence[Mapping[str, Any]], heldout_images: int | None) -> tuple[float, str]:
    """The seed-to-seed noise of held-out top-1: the pooled standard deviation
    over points trained with several seeds, else the binomial standard error
    of the mean held-out accuracy on ``heldout_images`` images."""
    multi = [p for p in points if len(p["runs"]) >= 2]
    if multi:
        num = sum((len(p["runs"]) - 1) * statistics.variance([r["heldout_top1"] for r in p["runs"]]) for p in multi)
        den = sum(len(p["runs"]) - 1 for p in multi)
        return math.sqrt(num / den), f"pooled seed sd over {len(multi)} multi-seed points"
    acc = statistics.mean(p["heldout_top1"] for p in points) if points else 0.5
    n = max(1, heldout_images or 1)
    return math.sqrt(acc * (1 - acc) / n), f"binomial standard error on {n} held-out images (one seed per point)"


def saturation(curve: Sequence[tuple[Any, float]], noise: float) -> Any:
    """The playbook's saturation point (4.4): the smallest value after which
    held-out top-1 never rises more than ``noise`` above its own. ``curve`` is
    (value, top-1) in order of capacity."""
    for i, (v, acc) in enumerate(curve):
        if all(a <= acc + noise for _, a in curve[i + 1:]):
            return v
    return curve[-1][0] if curve else None


# -- the study ------------------------------------------------------------------------
def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ConfigError("explore needs Optuna: pip install 'squishednets[explore]' (optuna==5.0.0)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # We drive the study with ask and tell and keep its heartbeats ourselves
    # (``_Heartbeat``); Optuna warns about both, and marks heartbeats and
    # their retry callback experimental, on every call.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    return optuna


def _open_study(cfg: ExploreConfig, rd: RunDir) -> tuple[Any, Any]:
    optuna = _optuna()
    url = cfg.storage or f"sqlite:///{(rd.root / 'study.db').resolve()}"
    try:
        storage = optuna.storages.RDBStorage(
            url, heartbeat_interval=max(1, cfg.grace_s // 4), grace_period=cfg.grace_s,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=max(1, cfg.executor.retries)))
    except Exception as e:  # SQLAlchemy's many error types: a bad URL or an unreachable server
        raise ConfigError(f"cannot open the Optuna storage {url!r} ({type(e).__name__}: {e}); give a SQLAlchemy "
                          "URL such as sqlite:///study.db") from None
    if cfg.strategy == "nsga2":
        sampler = optuna.samplers.NSGAIISampler(population_size=cfg.population, seed=cfg.seed)
    else:
        sampler = optuna.samplers.RandomSampler(seed=cfg.seed)
    directions = ["maximize" if o == "top1" else "minimize" for o in cfg.objectives]
    study = optuna.create_study(study_name=cfg.study, storage=storage, sampler=sampler, directions=directions,
                                load_if_exists=True)
    if list(study.directions) != [optuna.study.StudyDirection.MAXIMIZE if d == "maximize"
                                  else optuna.study.StudyDirection.MINIMIZE for d in directions]:
        raise ConfigError(f"study {cfg.study!r} in {url} has other objectives; start a new --out with another "
                          "--study")
    return study, storage


def _grid_designs(cfg: ExploreConfig) -> list[dict[str, Any]]:
    """The one-axis sweeps: the base design, then each swept axis's values."""
    designs = [dict(BASE)]
    for axis in cfg.swept:
        designs += [full_design({axis: v}) for v in AXES[axis] if v != BASE[axis]]
    return designs


def _suggest(trial: Any, cfg: ExploreConfig) -> dict[str, Any]:
    return full_design({a: trial.suggest_categorical(a, list(AXES[a])) for a in cfg.swept})


def _static_check(cfg: ExploreConfig, num_classes: int, image_size: int) -> None:
    """Fail before any training when no design of the space can meet the
    closed-form constraints (memory, energy)."""
    if not any(getattr(cfg, k) is not None for k in ("sram_kb", "flash_kb", "mcu_sram_kb", "max_energy_mj")):
        return
    designs = _grid_designs(cfg)
    if cfg.strategy != "grid":  # a sample of the joint space the search draws from
        rng = random.Random(cfg.seed)
        designs += [full_design({a: rng.choice(AXES[a]) for a in cfg.swept}) for _ in range(500)]
    best: dict[str, float] = {}
    for d in designs:
        try:
            prof = profile(design_genome(d, num_classes, cfg.round_to), image_size)
        except (ConfigError, ValueError):
            continue
        point = {**memory_figures(prof), "energy_mj": energy_mj(prof, cfg.sram_kb or 8192)}
        if not violations(point, cfg):
            return
        for k, v in point.items():
            best[k] = min(best.get(k, math.inf), v)
    raise ConfigError(
        f"no design of the {cfg.strategy} space over {','.join(cfg.swept)} meets the constraints (smallest: "
        f"{best.get('params_plus_activations_kb', 0):.0f} KB fp32 params + activations, "
        f"{best.get('int8_flash_kb', 0):.0f} KB int8 weights, {best.get('int8_sram_kb', 0):.0f} KB int8 "
        f"activations, {best.get('energy_mj', 0):.3f} mJ); relax them or add axes that shrink (width, base_e)")


class _Heartbeat:
    """Records a heartbeat for the trials in flight (Optuna does this only
    inside ``study.optimize``; we drive the study with ask and tell)."""

    def __init__(self, storage: Any, interval: float):
        self.storage, self.interval = storage, interval
        self.trials: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def add(self, trial_id: int) -> None:
        # At once: a running trial with no heartbeat at all never goes stale.
        self.storage.record_heartbeat(trial_id)
        self.trials.add(trial_id)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for tid in list(self.trials):
                try:
                    self.storage.record_heartbeat(tid)
                except Exception:  # a finished trial: nothing to keep alive
                    self.trials.discard(tid)


@dataclass
class _Ctx:
    cfg: ExploreConfig
    rd: RunDir
    num_classes: int
    n_train: int
    progress: Any
    failures: int = 0  # in a row
    failed: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)  # by design key

    def task(self, design: dict[str, Any], seed: int) -> dict[str, Any]:
        key = design_key(design)
        c = self.cfg
        # Absolute paths: a Ray task on another node runs in another working folder.
        paths = {k: location(v) for k in ("data", "cache_dir", "teacher") if (v := getattr(c.train, k)) is not None}
        return {"dir": str(self.rd.path(f"points/{key}/s{seed}").resolve()), "key": key, "design": design,
                "seed": seed, "genome": design_genome(design, self.num_classes, c.round_to, c.train.batchnorm).to_dict(),
                "train": {**to_dict(c.train), **paths}, "minutes": c.minutes, "n_train": self.n_train,
                "bench_threads": c.bench_threads, "grace_s": c.grace_s}

    def run(self, ex: Any, tasks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Each distinct task once (a design asked twice trains once); results
        by point folder. Three failed points in a row stop the run with one line."""
        unique = list({t["dir"]: t for t in tasks}.values())
        out: dict[str, dict[str, Any]] = {}
        for i, res in ex.map_unordered(run_point_safe, unique):
            out[unique[i]["dir"]] = res
            if "error" in res:
                self.failed[unique[i]["key"]] = {"name": design_name(unique[i]["design"]), "error": res["error"]}
                self.failures += 1
                if self.failures >= 3:
                    raise SquishedError(f"three design points failed in a row, the last {res['dir']} with "
                                        f"{res['error']}; fix the cause and run the same command again")
            else:
                self.failures = 0
                self.progress(1)
        return out


def _values(results: list[dict[str, Any]], cfg: ExploreConfig) -> list[float]:
    return [statistics.mean(float(r[_sign(o)[0]]) for r in results) for o in cfg.objectives]


def _distributions(cfg: ExploreConfig) -> dict[str, Any]:
    optuna = _optuna()
    return {a: optuna.distributions.CategoricalDistribution(list(AXES[a])) for a in cfg.swept}


def _complete(study: Any) -> dict[str, Any]:
    """Finished designs by key (a design asked twice counts once)."""
    optuna = _optuna()
    done: dict[str, Any] = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        done.setdefault(t.user_attrs.get("key"), t)
    done.pop(None, None)
    return done


def _run_grid(study: Any, ctx: _Ctx, ex: Any) -> None:
    """The sweeps: each design not yet in the study is trained, then added as
    a finished trial (nothing is ever left running in the study: a killed run
    leaves only its points' state on disk, which the next run resumes)."""
    optuna = _optuna()
    cfg = ctx.cfg
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    failed: set[str] = set()  # this session's failures; the next run tries them again
    while True:
        done = _complete(study)
        todo = [d for d in _grid_designs(cfg) if design_key(d) not in done and design_key(d) not in failed]
        # A design another process (a second worker on this study) is training
        # is left to it; this one comes back for its trial when that is done.
        free = [d for d in todo if not any(_PointLock.held(Path(ctx.task(d, s)["dir"]), cfg.grace_s)
                                           for s in seeds)]
        if not todo:
            return
        if not free:
            time.sleep(min(5.0, cfg.grace_s / 4))
            continue
        batch = free[:ex.slots]
        tasks = [ctx.task(d, s) for d in batch for s in seeds]
        res = ctx.run(ex, tasks)
        done = _complete(study)
        for d in batch:
            got = [res[t["dir"]] for t in tasks if t["key"] == design_key(d)]
            if any("error" in r for r in got):
                failed.add(design_key(d))
                continue
            if design_key(d) in done:  # recorded by another process meanwhile
                continue
            study.add_trial(optuna.trial.create_trial(
                params={a: d[a] for a in cfg.swept}, distributions=_distributions(cfg), values=_values(got, cfg),
                user_attrs={"key": design_key(d), "name": design_name(d)}))


def _space_size(cfg: ExploreConfig) -> int:
    return math.prod(len(AXES[a]) for a in cfg.swept)


def _revive_dead(study: Any, cfg: ExploreConfig, ours: set[int]) -> None:
    """Running trials of a killed process that never got a heartbeat (killed
    between ask and its first heartbeat) never go stale in Optuna: after
    ``grace_s`` they are failed here, and an enqueued design is queued again."""
    optuna = _optuna()
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        started = t.datetime_start.timestamp() if t.datetime_start else now
        if t._trial_id in ours or "key" in t.user_attrs or now - started < cfg.grace_s:
            continue
        with contextlib.suppress(Exception):  # another process may have failed it first
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            fixed = t.system_attrs.get("fixed_params")
            if fixed:
                study.enqueue_trial(fixed)


def _run_search(study: Any, ctx: _Ctx, ex: Any, hb: _Heartbeat) -> None:
    """random / nsga2: ask, train, tell until ``trials`` designs are finished.
    Queued trials (a killed run's designs, retried) always run first."""
    optuna = _optuna()
    state = optuna.trial.TrialState
    cfg = ctx.cfg
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    asked = 0
    while True:
        optuna.storages.fail_stale_trials(study)
        _revive_dead(study, cfg, hb.trials)
        trials = study.get_trials(deepcopy=False)
        waiting = sum(t.state == state.WAITING for t in trials)
        elsewhere = sum(t.state == state.RUNNING and t._trial_id not in hb.trials for t in trials)
        done = _complete(study)
        todo = max(cfg.trials - len(done) - elsewhere, waiting)
        if todo <= 0 or asked > 20 * cfg.trials:  # the cap: a sampler that only repeats itself
            if elsewhere and asked <= 20 * cfg.trials:
                time.sleep(min(5.0, cfg.grace_s / 4))  # other processes' points, or a dead one going stale
                continue
            if todo > 0:
                log.warning("the sampler asked %d designs and repeated itself: %d distinct designs finished of "
                            "--trials %d; widen --axes for more", asked, len(done), cfg.trials)
            return
        # NSGA-II asks a whole generation at once, so the designs it draws do not
        # depend on how many workers there are; random draws the same sequence anyway.
        batch = []
        for _ in range(min(todo, cfg.population if cfg.strategy == "nsga2" else ex.slots)):
            t = study.ask()
            hb.add(t._trial_id)  # at once: Optuna's trial id (``number`` counts per study)
            asked += 1
            design = _suggest(t, cfg)
            t.set_user_attr("key", design_key(design))
            t.set_user_attr("name", design_name(design))
            batch.append((t, design))
        tasks = [ctx.task(d, s) for _, d in batch for s in seeds]
        res = ctx.run(ex, tasks)
        for t, d in batch:
            got = [res[x["dir"]] for x in tasks if x["key"] == design_key(d)]
            if any("error" in r for r in got):
                study.tell(t, state=state.FAIL)
            else:
                study.tell(t, _values(got, cfg))
            hb.trials.discard(t._trial_id)


# -- results --------------------------------------------------------------------------
def _points(ctx: _Ctx, study: Any) -> list[dict[str, Any]]:
    """Every finished design of this run folder (a design asked twice counts
    once), its runs, one per seed, read back from disk, and their means."""
    out, missing = [], []
    for key in _complete(study):
        runs = [json.loads(f.read_text()) for f in sorted(ctx.rd.path(f"points/{key}").glob("s*/result.json"))]
        if runs:
            out.append(_aggregate(runs, ctx.cfg.sram_kb or 8192))
        else:
            missing.append(key)
    if missing:
        _foreign(ctx, missing)
    return out


def _foreign(ctx: _Ctx, missing: list[str]) -> None:
    """A finished design of the study whose results are not in this folder:
    trained by a worker with another ``--out`` (or its folder was deleted)."""
    raise ConfigError(
        f"{len(missing)} finished design(s) of study {ctx.cfg.study!r} have no results in "
        f"{ctx.rd.root / 'points'} (e.g. {missing[0]}): every worker sharing a study needs the same --out, on a file "
        "system they all see; run this one with that --out")


def _check_study(ctx: _Ctx, study: Any) -> None:
    """Before any training: the study's finished designs must be this folder's."""
    missing = [k for k in _complete(study) if not any(ctx.rd.path(f"points/{k}").glob("s*/result.json"))]
    if missing:
        _foreign(ctx, missing)


_MEANS = ("heldout_top1", "test_top1", "ort_b32_img_s", "ort_b1_ms", "fps", "train_time_s")


def _aggregate(runs: list[dict[str, Any]], sram_kb: float) -> dict[str, Any]:
    runs = sorted(runs, key=lambda r: r["seed"])
    first = runs[0]
    p = {k: first[k] for k in ("name", "key", "design", "genome", "params", "size_mb", "macs", "peak_activation_kb",
                               "params_plus_activations_kb", "int8_flash_kb", "int8_sram_kb", "epochs", "image_size")}
    # Energy here, not in the point: it depends on the SRAM budget, which a re-run may change.
    p["energy_mj"] = energy_mj(profile(Genome.from_dict(first["genome"]), first["image_size"]), sram_kb)
    for k in _MEANS:
        p[k] = statistics.mean(r[k] for r in runs)
    p["heldout_top1_sd"] = statistics.stdev([r["heldout_top1"] for r in runs]) if len(runs) > 1 else None
    p["test_top1_sd"] = statistics.stdev([r["test_top1"] for r in runs]) if len(runs) > 1 else None
    p["seeds"] = [r["seed"] for r in runs]
    p["machine_busy"] = any(r.get("machine_busy") for r in runs)
    p["runs"] = [{k: r[k] for k in ("seed", "heldout_top1", "test_top1", "ort_b32_img_s", "ort_b1_ms",
                                    "train_time_s")} for r in runs]
    return p


def _fronts(points: list[dict[str, Any]], cfg: ExploreConfig) -> dict[str, list[str]]:
    """Every front the outputs show: over the objectives, held-out top-1
    against each cost alone, and over the designs meeting the constraints."""
    return {"pareto": pareto(points, cfg.objectives),
            **{o: pareto(points, ("top1", o)) for o in ("size", "macs", "latency")},
            "meeting_constraints": pareto([p for p in points if not violations(p, cfg)], cfg.objectives)}


def _front_seeds(ctx: _Ctx, study: Any, ex: Any, speeds: dict[str, dict[str, Any]],
                 bar: Any) -> list[dict[str, Any]]:
    """Train more seeds of the fronts' points until every point on a front
    shown (recomputed with the new means) has ``front_seeds`` of them. The
    speeds are the retimed ones: a design's speed does not depend on its seed."""
    cfg = ctx.cfg
    for _ in range(5):
        points = _with_speeds(_points(ctx, study), speeds)
        shown = set().union(*_fronts(points, cfg).values())
        tasks = [ctx.task(p["design"], cfg.seed + i) for p in points if p["name"] in shown
                 for i in range(cfg.front_seeds) if cfg.seed + i not in p["seeds"]]
        if not tasks:
            return points
        bar.total = (bar.total or 0) + len(tasks)
        bar.refresh()
        ctx.run(ex, tasks)
    log.warning("the Pareto fronts kept changing with more seeds; some front points may have fewer than %d",
                cfg.front_seeds)
    return _with_speeds(_points(ctx, study), speeds)


def _with_speeds(points: list[dict[str, Any]], speeds: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    for p in points:
        p.update(speeds.get(p["name"], {}))
    return points


def _retime(points: list[dict[str, Any]], ctx: _Ctx) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Every point's ONNX Runtime speed again, serially in this process, in
    interleaved rounds (medians): the points' own timings ran wherever and
    beside whatever their executor put them, so only these compare. Returns
    the speeds by design name and a summary of the timing."""
    cfg = ctx.cfg
    files = {p["name"]: f for p in points
             for f in sorted(ctx.rd.path(f"points/{p['key']}").glob("s*/model.onnx"))[:1]}
    got: dict[str, list[dict[str, Any]]] = {n: [] for n in files}
    for _ in range(cfg.timing_rounds):
        for p in points:
            if p["name"] in files:
                got[p["name"]].append(ort_speed(files[p["name"]], p["image_size"], cfg.bench_threads))
                ctx.progress(1)
    speeds = {}
    for name, rounds in got.items():
        b1 = statistics.median(r["ort_b1_ms"] for r in rounds)
        speeds[name] = {"ort_b32_img_s": statistics.median(r["ort_b32_img_s"] for r in rounds), "ort_b1_ms": b1,
                        "fps": 1000 / b1, "machine_busy": any(r["machine_busy"] for r in rounds)}
    busy = [r["other_cpu_cores"] for rs in got.values() for r in rs if r["other_cpu_cores"] is not None]
    return speeds, {"rounds": cfg.timing_rounds, "threads": cfg.bench_threads or os.cpu_count(),
                    "points": len(files), "other_cpu_cores": max(busy) if busy else None,
                    "machine_busy": bool(busy) and max(busy) > 0.2}


def _sweeps(points: list[dict[str, Any]], cfg: ExploreConfig, noise: float) -> dict[str, Any]:
    """Each swept axis's curve (the points with every other axis at the base
    design) and its saturation point."""
    out: dict[str, Any] = {}
    for axis in cfg.swept:
        on = [p for p in points if all(p["design"][a] == BASE[a] for a in AXES if a != axis)]
        order = {v: i for i, v in enumerate(AXES[axis])}
        on.sort(key=lambda p: order.get(p["design"][axis], -1))
        if len(on) < 2:
            continue
        curve = [(p["design"][axis], p["heldout_top1"]) for p in on]
        sat = None if axis in CATEGORICAL else saturation(curve, noise)
        out[axis] = {"values": [v for v, _ in curve], "heldout_top1": [a for _, a in curve],
                     "heldout_top1_sd": [p["heldout_top1_sd"] for p in on],
                     "test_top1": [p["test_top1"] for p in on], "size_mb": [p["size_mb"] for p in on],
                     "names": [p["name"] for p in on], "saturation": sat, "paper": PAPER_SATURATION.get(axis)}
    return out


def explore(cfg: ExploreConfig, out: str | Path, progress: bool = True,
            say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the exploration in ``out`` and write ``explore.json``,
    ``explore.md``, ``explore.html`` (and ``designs/`` with ``--top``)."""
    from tqdm import tqdm

    from .data import load_splits

    t0 = time.perf_counter()
    _optuna()
    if cfg.strategy != "grid" and _space_size(cfg) < cfg.trials:
        raise ConfigError(f"the space over {','.join(cfg.swept)} has only {_space_size(cfg)} designs, fewer than "
                          f"--trials {cfg.trials}; lower --trials, add --axes, or use --strategy grid")
    classes = check_dataset(cfg.train.data, cfg.train.cache_dir)
    tc = cfg.train
    _static_check(cfg, len(classes), tc.image_size)
    # Decoded once here, so that every worker finds the cache (and the sizes of the sets are known).
    splits = load_splits(tc.data, tc.image_size, tc.holdout, tc.split_seed, tc.cache_dir, progress=progress)
    rd = RunDir.open(out, cfg, "explore")
    study, storage = _open_study(cfg, rd)
    total = len(_grid_designs(cfg)) if cfg.strategy == "grid" else cfg.trials
    bar = tqdm(total=total * cfg.seeds, desc="explore", unit="point", disable=not progress, dynamic_ncols=True,
               initial=min(total, len(_complete(study))) * cfg.seeds)
    ctx = _Ctx(cfg, rd, len(classes), len(splits.train), bar.update)
    say(f"exploring {cfg.strategy} over {','.join(cfg.swept)}: {total} designs x {cfg.seeds} seed(s), "
        f"{cfg.minutes and f'{cfg.minutes:g} min' or f'{tc.epochs} epochs'} each at {tc.image_size} px; "
        f"study {cfg.study!r}")
    _check_study(ctx, study)
    with make_executor(cfg.executor) as ex, _Heartbeat(storage, max(1, cfg.grace_s // 4)) as hb:
        say(f"      on {ex.name}")
        if cfg.strategy == "grid":
            _run_grid(study, ctx, ex)
        else:
            _run_search(study, ctx, ex, hb)
        bar.close()
        points = _points(ctx, study)
        if not points:
            raise ConfigError(f"no design point finished in {out}; see the warnings above")
        # Timed before the front seeds: the latency front and the constraints need the speeds.
        say(f"      timing every point in ONNX Runtime here, {cfg.timing_rounds} interleaved round(s)")
        bar = tqdm(total=len(points) * cfg.timing_rounds, desc="timing", unit="point", disable=not progress,
                   dynamic_ncols=True)
        ctx.progress = bar.update
        speeds, timing = _retime(points, ctx)
        bar.close()
        say(f"      {cfg.front_seeds} seeds of every point on a front")
        bar = tqdm(total=0, desc="front seeds", unit="point", disable=not progress, dynamic_ncols=True)
        ctx.progress = bar.update
        points = _front_seeds(ctx, study, ex, speeds, bar)
        bar.close()
    noise, noise_source = seed_noise(points, len(splits.heldout))
    fronts = _fronts(points, cfg)
    front = fronts.pop("pareto")
    done = {p["key"] for p in points}
    failed = [{"key": k, **f} for k, f in ctx.failed.items() if k not in done]
    for p in points:
        p["pareto"] = p["name"] in front
        p["violations"] = violations(p, cfg)
        p["meets_constraints"] = not p["violations"]
    doc = {
        "strategy": cfg.strategy, "axes": list(cfg.swept), "objectives": list(cfg.objectives),
        "selected_by": SELECTED_BY, "config": to_dict(cfg), "data": tc.data, "classes": classes,
        "image_size": tc.image_size, "heldout_images": len(splits.heldout), "test_images": len(splits.test),
        "test_split": splits.test_name, "constraints": _constraints(cfg), "energy_pj": ENERGY_PJ,
        "energy_sram_kb": cfg.sram_kb or 8192,
        "base": BASE, "seed_noise": noise, "seed_noise_source": noise_source,
        "saturation_rule": "the smallest value after which held-out top-1 never rises more than the seed noise",
        "points": sorted(points, key=lambda p: -p["heldout_top1"]), "pareto": front, "fronts": fronts,
        "meets_constraints": [p["name"] for p in points if p["meets_constraints"]],
        "sweeps": _sweeps(points, cfg, noise), "executor": ex.name, "timing": timing, "failed": failed,
        "wall_s_this_session": time.perf_counter() - t0,
    }
    doc["saturation"] = {a: s["saturation"] for a, s in doc["sweeps"].items()}
    doc["files"] = _write_outputs(doc, rd.root, cfg)
    rd.finish("explore", {"points": len(points), "pareto": front})
    return doc


def _best(doc: dict[str, Any], k: int) -> list[dict[str, Any]]:
    """The best ``k`` designs by held-out top-1 among those meeting the
    constraints, front points first."""
    ok = [p for p in doc["points"] if p["meets_constraints"]]
    return sorted(ok, key=lambda p: (not p["pareto"], -p["heldout_top1"]))[:k]


def _write_outputs(doc: dict[str, Any], root: Path, cfg: ExploreConfig) -> dict[str, str]:
    files = {"json": root / "explore.json", "markdown": root / "explore.md", "html": root / "explore.html"}
    if cfg.top:
        for old in (root / "designs").glob("*.json"):  # an earlier --top's, perhaps no longer the best
            old.unlink()
        for p in _best(doc, cfg.top):
            files[f"design:{p['name']}"] = root / "designs" / f"{p['name']}.json"
            atomic_write_text(files[f"design:{p['name']}"], json.dumps(p["genome"], indent=2))
    figs = _figures(doc)
    for name, b64 in figs.items():
        import base64

        files[name] = root / f"{name}.png"
        atomic_write_bytes(files[name], base64.b64decode(b64))
    paths = {k: str(v) for k, v in files.items()}
    doc["files"] = paths
    atomic_write_text(files["markdown"], markdown(doc))
    atomic_write_text(files["html"], _page(doc, figs))
    atomic_write_json(files["json"], doc)
    return paths


# -- tables and pictures --------------------------------------------------------------
_COLUMNS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("design", lambda p: p["name"]),
    ("changed from v1.1", lambda p: ", ".join(f"{k}={v}" for k, v in p["design"].items() if v != BASE[k]) or "—"),
    ("size MB", lambda p: f"{p['size_mb']:.3f}"),
    ("MMACs", lambda p: f"{p['macs'] / 1e6:.1f}"),
    ("peak act KB", lambda p: f"{p['peak_activation_kb']:.0f}"),
    ("held-out top-1", lambda p: f"{p['heldout_top1'] * 100:.1f}%"
     + (f" ± {p['heldout_top1_sd'] * 100:.1f}" if p["heldout_top1_sd"] is not None else "")),
    ("test top-1", lambda p: f"{p['test_top1'] * 100:.1f}%"),
    ("seeds", lambda p: str(len(p["seeds"]))),
    ("ORT img/s b32", lambda p: f"{p['ort_b32_img_s']:.0f}"),
    ("b1 ms", lambda p: f"{p['ort_b1_ms']:.2f}"),
    ("mJ/frame", lambda p: f"{p['energy_mj']:.3f}"),
    ("front", lambda p: "yes" if p["pareto"] else ""),
    ("meets", lambda p: "yes" if p["meets_constraints"] else "; ".join(p["violations"])),
]


def markdown(doc: dict[str, Any]) -> str:
    lines = [f"# Design-space exploration ({doc['strategy']}: {', '.join(doc['axes'])})", "",
             f"{len(doc['points'])} design points on {doc['data']} at {doc['image_size']} px; chosen by held-out "
             f"top-1 ({doc['heldout_images']} images), test top-1 ({doc['test_split']}, {doc['test_images']} "
             f"images) reported only. Seed noise {doc['seed_noise'] * 100:.2f} points ({doc['seed_noise_source']}). "
             f"Speed: ONNX Runtime here, {doc['timing']['rounds']} interleaved round(s), medians. Energy per frame "
             f"is an estimate from counts: {doc['energy_pj']} pJ per MAC and per 32-bit SRAM or DRAM access "
             f"(Horowitz 2014, 45 nm), SRAM when parameters + activations fit {doc['energy_sram_kb']:g} KB "
             "(--sram-kb; off: the playbook's 8192).",
             "", "| " + " | ".join(h for h, _ in _COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    lines += ["| " + " | ".join(fn(p) for _, fn in _COLUMNS) + " |" for p in doc["points"]]
    if doc["sweeps"]:
        lines += ["", "## Saturation points", "", f"Rule: {doc['saturation_rule']}.", "",
                  "| axis | values | held-out top-1 | saturation | SqueezeNet paper (ImageNet top-5) |",
                  "|---|---|---|---|---|"]
        for axis, s in doc["sweeps"].items():
            paper = s["paper"]
            lines.append(f"| {axis} | {', '.join(map(str, s['values']))} | "
                         f"{', '.join(f'{a * 100:.1f}' for a in s['heldout_top1'])} | "
                         f"{'— (categorical)' if s['saturation'] is None else s['saturation']} | "
                         + (f"{paper['value']} ({paper['top5'] * 100:.1f}%)" if paper else "—") + " |")
    if doc["constraints"]:
        lines += ["", f"Meeting {', '.join(f'{k} {v:g}' for k, v in doc['constraints'].items())}: "
                  f"{', '.join(doc['meets_constraints']) or 'none'}; their Pareto front: "
                  f"{', '.join(doc['fronts']['meeting_constraints']) or 'none'}."]
    if doc["failed"]:
        lines += ["", "## Failed design points (the same command tries them again)", ""]
        lines += [f"- {f['name']} ({f['key']}): {f['error']}" for f in doc["failed"]]
    return "\n".join(lines) + "\n"


def _figures(doc: dict[str, Any]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report import figure_png

    figs = {}
    pts = doc["points"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    panels = (("size", "size_mb", "size (MB)", 1), ("macs", "macs", "MACs (M)", 1e-6),
              ("latency", "ort_b1_ms", "batch-1 latency in ONNX Runtime (ms)", 1))
    for ax, (obj, field, label, scale) in zip(axes, panels):
        front = set(doc["fronts"][obj])  # held-out top-1 against this panel's cost alone
        ax.scatter([p[field] * scale for p in pts], [p["heldout_top1"] * 100 for p in pts], color="0.6", s=18,
                   label="design point")
        fp = sorted((p for p in pts if p["name"] in front), key=lambda p: p[field])
        ax.step([p[field] * scale for p in fp], [p["heldout_top1"] * 100 for p in fp], where="post", color="C3")
        ax.scatter([p[field] * scale for p in fp], [p["heldout_top1"] * 100 for p in fp], color="C3", marker="*",
                   s=90, label="Pareto front", zorder=3)
        ok = [p for p in pts if p["meets_constraints"] and doc["constraints"]]
        if ok:
            ax.scatter([p[field] * scale for p in ok], [p["heldout_top1"] * 100 for p in ok], facecolors="none",
                       edgecolors="C2", s=160, label="meets the constraints")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("held-out top-1 (%)")
        ax.legend(fontsize=8)
    fig.suptitle("Held-out top-1 against size, MACs and latency")
    figs["explore_pareto"] = figure_png(fig)
    sweeps = doc["sweeps"]
    if sweeps:
        # At most 4 panels a row: every axis's sweep stays readable on a page.
        cols = min(4, len(sweeps))
        rows = -(-len(sweeps) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 4 * rows), squeeze=False)
        for ax in axes.flat[len(sweeps):]:
            ax.set_visible(False)
        for ax, (axis, s) in zip(axes.flat, sweeps.items()):
            xs = list(range(len(s["values"])))
            err = [0 if e is None else e * 100 for e in s["heldout_top1_sd"]]
            ax.errorbar(xs, [a * 100 for a in s["heldout_top1"]], yerr=err, marker="o", capsize=3,
                        label="held-out top-1")
            ax.plot(xs, [a * 100 for a in s["test_top1"]], marker=".", linestyle=":", color="0.5",
                    label="test top-1 (reported)")
            if s["saturation"] is not None:
                ax.axvline(s["values"].index(s["saturation"]), color="C3", linestyle="--",
                           label=f"saturation: {s['saturation']}")
            if s["paper"]:
                ax.set_title(f"{axis} (SqueezeNet paper on ImageNet: {s['paper']['value']})")
            else:
                ax.set_title(axis)
            ax.set_xticks(xs, [str(v) for v in s["values"]])
            ax.set_xlabel(axis)
            ax.set_ylabel("top-1 (%)")
            ax.legend(fontsize=8)
        fig.tight_layout()
        figs["explore_sweeps"] = figure_png(fig)
    return figs


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>SquishedNets design-space exploration</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.82em; margin: 0.5em 0 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 2px 6px; text-align: right; }} td {{ white-space: nowrap; }}
td:first-child, th:first-child {{ text-align: left; }} img {{ max-width: 100%; }}
</style></head><body>
<h1>Design-space exploration</h1>
{body}
</body></html>
"""


def _table(rows: list[dict[str, Any]], table_id: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h, _ in _COLUMNS)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(fn(p))}</td>" for _, fn in _COLUMNS) + "</tr>" for p in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>'


def _page(doc: dict[str, Any], figs: dict[str, str]) -> str:
    cons = ", ".join(f"{k} {v:g}" for k, v in doc["constraints"].items()) or "none"
    intro = (f"{len(doc['points'])} design points ({doc['strategy']} over {', '.join(doc['axes'])}) on "
             f"{doc['data']} at {doc['image_size']} px, ran {doc['executor']}. Choices use held-out top-1; test "
             f"top-1 is reported only. Seed noise {doc['seed_noise'] * 100:.2f} points ({doc['seed_noise_source']}). "
             f"Constraints: {cons}. Energy is an estimate from counts: {doc['energy_pj']} pJ per MAC and per "
             "32-bit SRAM/DRAM access (Horowitz 2014, 45 nm).")
    meets = [p for p in doc["points"] if p["meets_constraints"]]
    imgs = "".join(f'<figure><img id="{k}" src="data:image/png;base64,{v}" alt="{k}"></figure>' for k, v in figs.items())
    sat = "".join(f"<li>{html.escape(a)}: {html.escape(str(s['saturation']))}"
                  + (f" (SqueezeNet paper on ImageNet: {s['paper']['value']})" if s["paper"] else "") + "</li>"
                  for a, s in doc["sweeps"].items())
    body = (f"<p>{html.escape(intro)}</p>{imgs}<h2>Saturation points</h2><p>{html.escape(doc['saturation_rule'])}"
            f"</p><ul>{sat}</ul><h2>Designs meeting the constraints ({len(meets)})</h2>"
            + _table(meets, "meets") + "<h2>Every design point</h2>" + _table(doc["points"], "points"))
    return _PAGE.format(body=body)


def summary(doc: dict[str, Any]) -> str:
    """The command's text output."""
    lines = [f"{len(doc['points'])} design points; Pareto front ({', '.join(doc['objectives'])}): "
             f"{', '.join(doc['pareto'])}"]
    for a, s in doc["sweeps"].items():
        paper = f" (SqueezeNet paper, ImageNet: {s['paper']['value']})" if s["paper"] else ""
        lines.append(f"saturation of {a}: {s['saturation']}{paper}")
    if doc["constraints"]:
        lines.append(f"meeting {', '.join(f'{k} {v:g}' for k, v in doc['constraints'].items())}: "
                     f"{', '.join(doc['meets_constraints']) or 'none'}")
        lines.append(f"Pareto front among them: {', '.join(doc['fronts']['meeting_constraints']) or 'none'}")
    for f in doc["failed"]:
        lines.append(f"FAILED {f['name']}: {f['error']} (the same command tries it again)")
    lines += [f"{k}: {v}" for k, v in doc["files"].items()]
    return "\n".join(lines)
