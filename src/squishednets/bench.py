"""One benchmark runner: size, MACs, memory, speed and efficiency of a network.

The SquishedNets paper's Table 1 judges a network by size, reduction against
SqueezeNet v1.1 and AlexNet, images/s at batch 32 and top-1. We measure the
same on the machine at hand, plus batch-1 latency, peak activation memory,
parameters + activations against the playbook's on-chip budget (section
4.4: 8192 KB), and efficiency: the network's rate, 2 x MACs x images/s, as a
share of a ceiling measured in the same run with the same threads (the best
fp32 GEMM rate over several sizes, raised to any rate a network reached, so
no share exceeds 100%) and of the theoretical peak where the CPU says what
it is. Timings are medians of repeated runs after a warm-up (timm's
benchmark.py); every result records the threads, CPU and its vector flags,
library versions and whether other processes used the CPU meanwhile.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnxruntime
import torch
from tqdm import tqdm

from .checkpoint import load_checkpoint, resolve_genome
from .config import option
from .errors import ConfigError
from .export import export_onnx
from .io import atomic_write_json
from .metrics import ALEXNET_MB, SQUEEZENET11_MB, profile
from .model import build, fold_batchnorm
from .ort import CPU_FLAGS, cpu_flags, session
from .records import LINEAGE_FILE, Lineage

__all__ = ["machine_info", "CPU_FLAGS", "cpu_flags", "clock_mhz", "theoretical_peak_gflops", "CpuMonitor", "time_fn",
           "GEMM_SIZES", "GemmCeiling", "gemm_ceiling", "matmul_gflops", "BenchConfig", "bench_model", "merge_rounds",
           "bench_target"]

_MAX_FREQ = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _cpu_model() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def clock_mhz(cpuinfo: str | None = None, max_freq: Path = _MAX_FREQ) -> float | None:
    """The CPU clock in MHz: cpufreq's maximum (the turbo clock) where the
    kernel exposes it, else the highest ``cpu MHz`` of ``/proc/cpuinfo`` (in
    virtual machines often the base clock), else None."""
    try:
        return int(max_freq.read_text().strip()) / 1000  # the file holds kHz
    except (OSError, ValueError):
        pass
    mhz = []
    for line in (_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        if line.startswith("cpu MHz"):
            try:
                mhz.append(float(line.split(":", 1)[1]))
            except ValueError:
                pass
    return max(mhz) if mhz else None


def theoretical_peak_gflops(flags: dict[str, bool], mhz: float | None, threads: int) -> float | None:
    """fp32 FMA peak: FLOP per cycle per FMA unit x 2 units x clock x threads;
    None where the vector width or the clock is unknown."""
    # One fused multiply-add is 2 FLOP per lane: an AVX-512 unit does 16 fp32
    # lanes (32 FLOP/cycle), an AVX2 one 8 (16 FLOP/cycle).
    if flags.get("avx512f"):
        per_unit = 32
    elif flags.get("avx2") and flags.get("fma"):
        per_unit = 16
    else:
        return None
    if not mhz:
        return None
    # Assumption: 2 FMA units per core, as on Intel cores since Haswell and
    # AMD cores since Zen 2. Parts with one AVX-512 unit, Zen 1 and Zen 4
    # (narrower units), and threads sharing a core (SMT) reach less: the
    # figure is an upper bound, never an underestimate of the hardware.
    return per_unit * 2 * mhz / 1000 * threads


def machine_info() -> dict[str, Any]:
    """The CPU, its vector flags, the core count and library versions."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    info["onnxruntime"] = onnxruntime.__version__
    return info


def _proc_stat_busy() -> float | None:
    """Seconds of CPU time used by everything on the machine (from /proc/stat)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    v = [int(x) for x in fields]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class CpuMonitor:
    """Measures how much CPU other processes used while we were timing: the
    machine's busy time minus this process's own CPU time."""

    def __enter__(self) -> "CpuMonitor":
        self.t0 = time.perf_counter()
        self.m0 = _proc_stat_busy()
        self.p0 = sum(os.times()[:4])
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall = time.perf_counter() - self.t0
        m1 = _proc_stat_busy()
        own = sum(os.times()[:4]) - self.p0
        self.other_cores = None if self.m0 is None or m1 is None else max(0.0, (m1 - self.m0 - own) / self.wall)

    @property
    def busy(self) -> bool | None:
        # More than a fifth of a core used by others is enough to bend timings.
        return None if self.other_cores is None else self.other_cores > 0.2


def time_fn(fn: Callable[[], Any], runs: int = 20, warmup: int = 3, min_time: float = 0.0) -> list[float]:
    """Seconds per call, ``runs`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    t_start = time.perf_counter()
    while len(times) < runs or (time.perf_counter() - t_start) < min_time:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


# Square GEMM sizes for the ceiling: BLAS libraries reach their best rate at
# different sizes on different CPUs (cache sizes, blocking), and 1024 alone
# is below it on many, so the ceiling is the best over several.
GEMM_SIZES = (1024, 1536, 2048, 3072)


@dataclass(frozen=True)
class GemmCeiling:
    """The best fp32 GEMM rate of this machine: overall and per size."""

    gflops: float
    sizes: tuple[int, ...]
    size_gflops: tuple[float, ...]
    threads: int
    other_cpu_cores: float | None = None


def gemm_ceiling(sizes: tuple[int, ...] = GEMM_SIZES, repeats: int = 3, threads: int = 0,
                 max_seconds: float = 4.0) -> GemmCeiling:
    """The best rate of ``torch.mm`` on square fp32 matrices over ``sizes``
    and ``repeats`` (after one warm-up call per size), with ``threads``
    threads (0: torch's current setting). A size stops repeating once it has
    used its share of ``max_seconds``, so slow machines stay quick."""
    prev = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    rates = []
    try:
        with CpuMonitor() as mon, torch.no_grad():
            for n in sizes:
                a, b = torch.randn(n, n), torch.randn(n, n)
                torch.mm(a, b)
                best, spent = math.inf, 0.0
                for _ in range(max(1, repeats)):
                    t = time.perf_counter()
                    torch.mm(a, b)
                    dt = time.perf_counter() - t
                    # A ceiling is the best the machine can do, so the fastest
                    # call counts, not the median: slower calls were disturbed.
                    best, spent = min(best, dt), spent + dt
                    if spent > max_seconds / len(sizes):
                        break
                rates.append(2 * n ** 3 / best / 1e9)
        used = torch.get_num_threads()
    finally:
        torch.set_num_threads(prev)
    return GemmCeiling(max(rates), tuple(sizes), tuple(rates), used, mon.other_cores)


def matmul_gflops(sizes: tuple[int, ...] = GEMM_SIZES, repeats: int = 3) -> float:
    """The best-GEMM ceiling of ``gemm_ceiling`` as one number, GFLOP/s."""
    return gemm_ceiling(sizes, repeats).gflops


_PREFIXES = ("eager", "cl", "ort")


def _observed(results: list[dict[str, Any]]) -> list[float]:
    return [r[f"{p}_gflops"] for r in results for p in _PREFIXES if isinstance(r.get(f"{p}_gflops"), float)]


def _apply_ceiling(results: list[dict[str, Any]], gemm_gflops: float, peak_gflops: float | None,
                   observed: list[float]) -> dict[str, Any]:
    """Set every result's efficiencies against one ceiling and return the
    ceiling's fields. A network faster than the best GEMM proves the GEMM
    rate is not the machine's ceiling (ONNX Runtime's kernels can beat
    torch's BLAS), so the ceiling is raised to the best observed rate and
    the fact flagged, rather than reporting more than 100%."""
    best = max(observed, default=0.0)
    ceiling = max(gemm_gflops, best)
    info: dict[str, Any] = {
        "gemm_ceiling_gflops": gemm_gflops,
        "ceiling_gflops": ceiling,
        "matmul_gflops": ceiling,  # the denominator of the efficiencies, under the key the CLI prints
        "ceiling_exceeded": best > gemm_gflops,
        "theoretical_peak_gflops": peak_gflops,
        "peak_exceeded": peak_gflops is not None and ceiling > peak_gflops,
    }
    # The same rule for the peak: a clock read below the real one shows up
    # as a rate above the peak.
    peak = None if peak_gflops is None else max(peak_gflops, ceiling)
    for r in results:
        r.update(info)
        for p in _PREFIXES:
            rate = r.get(f"{p}_gflops")
            if isinstance(rate, float):
                r[f"{p}_efficiency"] = rate / ceiling
                r[f"{p}_peak_efficiency"] = None if peak is None else rate / peak
    return info


_BACKENDS = ("eager", "channels_last", "ort")


@dataclass(frozen=True)
class BenchConfig:
    """How networks are timed; every result records these settings."""

    image_size: int = option(224, help="input size in px")
    batch: int = option(32, help="batch of the images/s figure (the paper's Table 1 uses 32)")
    runs: int = option(20, help="timed calls per figure, at least")
    warmup: int = option(3, help="untimed calls before timing")
    # Fast models finish ``runs`` calls in milliseconds, too few to be stable.
    min_time: float = option(1.0, help="seconds of timing per figure, at least")
    threads: int | None = option(None, help="CPU threads (off: every core)", resume=False)
    budget_kb: int = option(8192, help="on-chip budget for parameters + activations in KB (playbook 4.4)")
    backends: tuple[str, ...] = option(_BACKENDS, help="comma-separated: eager, channels_last, ort")
    # Several models are timed in this many interleaved rounds (every model
    # once per round) and each figure is the median over rounds: the host's
    # speed drifts by tens of percent over minutes, and interleaving spreads a
    # slow minute over all models instead of landing on one.
    rounds: int = option(1, help="interleaved timing rounds; each figure is the median over rounds")
    gemm_sizes: tuple[int, ...] = option(GEMM_SIZES, help="square fp32 GEMM sizes of the efficiency ceiling",
                                         resume=False)
    gemm_repeats: int = option(3, help="timed calls per GEMM size (the fastest counts)", resume=False)

    def __post_init__(self) -> None:
        for name in ("image_size", "batch", "runs", "rounds", "gemm_repeats"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0 or self.min_time < 0:
            raise ConfigError(f"warmup and min_time must be >= 0, got {self.warmup} and {self.min_time}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1 or off, got {self.threads}")
        unknown = sorted(set(self.backends) - set(_BACKENDS))
        if unknown or not self.backends:
            raise ConfigError(f"backends must be some of {', '.join(_BACKENDS)}, got {', '.join(self.backends) or 'none'}")
        if not self.gemm_sizes or min(self.gemm_sizes) < 1:
            raise ConfigError(f"gemm_sizes must be positive sizes, got {list(self.gemm_sizes)}")


def bench_model(model: torch.nn.Module, cfg: BenchConfig, onnx_path: str | Path | None = None,
                matmul_rate: float | GemmCeiling | None = None) -> dict[str, Any]:
    """Static metrics plus timings of ``model`` (a SqueezeNet from ``build``).
    ``matmul_rate`` is the best-GEMM ceiling in GFLOP/s (or a ``GemmCeiling``)
    when several models share one; by default it is measured here."""
    threads = cfg.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    genome = model.genome
    prof = profile(genome, cfg.image_size)
    folded = fold_batchnorm(model.cpu()).eval()
    res: dict[str, Any] = {
        "params": prof.params,
        "size_mb": prof.size_mb,
        "reduction_vs_squeezenet11": SQUEEZENET11_MB / prof.size_mb,
        "reduction_vs_alexnet": ALEXNET_MB / prof.size_mb,
        "macs": prof.macs,
        "peak_activation_bytes": prof.peak_activation_bytes,
        "params_plus_activations_kb": prof.on_chip_bytes() / 1024,
        "budget_kb": cfg.budget_kb,
        "fits_budget": prof.on_chip_bytes() / 1024 <= cfg.budget_kb,
        "image_size": cfg.image_size,
        "batch": cfg.batch,
        "threads": threads,
        "runs": cfg.runs,
    }
    x32 = torch.randn(cfg.batch, 3, cfg.image_size, cfg.image_size)
    x1 = torch.randn(1, 3, cfg.image_size, cfg.image_size)
    other: list[float] = []
    if matmul_rate is None:
        matmul_rate = gemm_ceiling(cfg.gemm_sizes, cfg.gemm_repeats, threads)
        if matmul_rate.other_cpu_cores is not None:
            other.append(matmul_rate.other_cpu_cores)
    gemm = matmul_rate.gflops if isinstance(matmul_rate, GemmCeiling) else float(matmul_rate)
    res["gemm_sizes"] = list(matmul_rate.sizes) if isinstance(matmul_rate, GemmCeiling) else None

    def record(prefix: str, run32: Callable[[], Any], run1: Callable[[], Any]) -> None:
        with CpuMonitor() as mon:
            t32 = statistics.median(time_fn(run32, cfg.runs, cfg.warmup, cfg.min_time))
            t1 = statistics.median(time_fn(run1, cfg.runs, cfg.warmup, cfg.min_time))
        if mon.other_cores is not None:
            other.append(mon.other_cores)
        res[f"{prefix}_b{cfg.batch}_img_s"] = cfg.batch / t32
        res[f"{prefix}_b1_ms"] = t1 * 1000
        res[f"{prefix}_gflops"] = 2 * prof.macs * (cfg.batch / t32) / 1e9

    with torch.inference_mode():
        if "eager" in cfg.backends:
            record("eager", lambda: folded(x32), lambda: folded(x1))
        if "channels_last" in cfg.backends:
            cl = fold_batchnorm(model.cpu()).eval().to(memory_format=torch.channels_last)
            x32c, x1c = x32.contiguous(memory_format=torch.channels_last), x1.contiguous(memory_format=torch.channels_last)
            record("cl", lambda: cl(x32c), lambda: cl(x1c))
    if "ort" in cfg.backends:
        with tempfile.TemporaryDirectory() as td:
            path = Path(onnx_path) if onnx_path else Path(td) / "model.onnx"
            if not onnx_path:
                export_onnx(model, path, image_size=cfg.image_size, check=False)
            res["onnx_bytes"] = path.stat().st_size
            sess = session(path, threads)
            name = sess.get_inputs()[0].name
            a32, a1 = x32.numpy(), x1.numpy()
            record("ort", lambda: sess.run(None, {name: a32}), lambda: sess.run(None, {name: a1}))
    _apply_ceiling([res], gemm, theoretical_peak_gflops(cpu_flags(), clock_mhz(), threads), _observed([res]))
    res["other_cpu_cores"] = max(other) if other else None
    res["machine_busy"] = None if not other else max(other) > 0.2
    return res


_TIMED = ("_img_s", "_ms", "_efficiency", "_gflops")


def merge_rounds(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One model's ``bench_model`` results from several rounds as one: timed
    figures are medians over rounds (each round's images/s kept beside them),
    static ones are the first round's, and the machine counts as busy if it
    was in any round. Efficiencies are then taken against one ceiling for
    all rounds: the best GEMM raised to the best rate any round reached."""
    out = dict(results[0])
    for k, v in results[0].items():
        if k.endswith(_TIMED) and isinstance(v, float):
            out[k] = statistics.median(r[k] for r in results)
            if k.endswith("_img_s"):
                out[f"{k}_rounds"] = [r[k] for r in results]
    others = [r["other_cpu_cores"] for r in results if r.get("other_cpu_cores") is not None]
    out["other_cpu_cores"] = max(others) if others else None
    out["machine_busy"] = None if not others else any(bool(r.get("machine_busy")) for r in results)
    out["rounds"] = len(results)
    if "gemm_ceiling_gflops" in out:
        _apply_ceiling([out], results[0]["gemm_ceiling_gflops"], results[0].get("theoretical_peak_gflops"),
                       _observed(results))
    return out


def bench_target(target: str | Path, cfg: BenchConfig, classes: int = 10, out_json: str | Path | None = None,
                 progress: bool = False) -> dict[str, Any]:
    """Benchmark a registered genome, a checkpoint or every generation of an
    evolve run (whose results then also go to ``RUN/bench.json``). Each
    model carries its held-out and test top-1 where they are known."""
    threads = cfg.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    # (name, generation, model, accuracy figures)
    items: list[tuple[str, int | None, Any, dict[str, Any]]] = []
    p = Path(str(target))
    is_run = (p / LINEAGE_FILE).exists()
    if is_run:
        for e in Lineage.load(p).generations:
            items.append((e.name if e.generation else f"{e.name} (ancestor)", e.generation,
                          load_checkpoint(p / e.path).model, {"heldout_top1": e.heldout_top1, "test_top1": e.test_top1}))
    elif p.is_dir():
        ck = load_checkpoint(p)
        items.append((ck.genome.name, None, ck.model, {k: ck.metrics.get(k) for k in ("heldout_top1", "test_top1")}))
    else:  # a registered name or a genome file: untrained weights time the same
        g = resolve_genome(target, num_classes=classes)
        items.append((g.name, None, build(g).eval(), {}))
    gemm = gemm_ceiling(cfg.gemm_sizes, cfg.gemm_repeats, threads)
    flags, mhz = cpu_flags(), clock_mhz()
    rounds = cfg.rounds
    per_model: list[list[dict[str, Any]]] = [[] for _ in items]
    jobs = [(r, i) for r in range(rounds) for i in range(len(items))]  # round by round: interleaved
    it: Any = jobs
    if progress:
        it = tqdm(jobs, desc="benchmarking" + (f" ({rounds} rounds)" if rounds > 1 else ""), unit="model",
                  leave=False)
    for _, i in it:
        per_model[i].append(bench_model(items[i][2], cfg, matmul_rate=gemm))
    models = [{"name": name, "generation": gen, **acc, **merge_rounds(per_model[i])}
              for i, (name, gen, _, acc) in enumerate(items)]
    # One ceiling for the whole run, so that efficiencies compare across models.
    ceiling = _apply_ceiling(models, gemm.gflops, theoretical_peak_gflops(flags, mhz, threads),
                             _observed([r for rs in per_model for r in rs]))
    gemm_busy = gemm.other_cpu_cores is not None and gemm.other_cpu_cores > 0.2
    result = {"machine": machine_info(), "threads": threads, **ceiling, "gemm_sizes": list(gemm.sizes),
              "gemm_size_gflops": list(gemm.size_gflops), "gemm_other_cpu_cores": gemm.other_cpu_cores,
              "cpu_flags": flags, "clock_mhz": mhz, "image_size": cfg.image_size, "batch": cfg.batch,
              "runs": cfg.runs, "rounds": rounds, "models": models,
              "machine_busy": any(m.get("machine_busy") for m in models) or gemm_busy}
    if out_json is None and is_run:
        out_json = p / "bench.json"
    if out_json is not None:
        atomic_write_json(out_json, result)
    return result
