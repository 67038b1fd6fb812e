"""One benchmark runner: size, MACs, memory, speed and efficiency of a network.

The SquishedNets paper's Table 1 judges a network by size, reduction against
SqueezeNet v1.1 and AlexNet, images/s at batch 32 and top-1. We measure the
same on the machine at hand, plus batch-1 latency, peak activation memory,
parameters + activations against the playbook's on-chip budget (section
4.4: 8192 KB), and efficiency: 2 x MACs x images/s over the machine's fp32
matmul rate, measured in the same run. Timings are medians of repeated runs
after a warm-up (timm's benchmark.py); every result records the threads,
CPU, library versions and whether other processes used the CPU meanwhile.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .metrics import ALEXNET_MB, SQUEEZENET11_MB, profile

__all__ = ["machine_info", "CpuMonitor", "time_fn", "matmul_gflops", "BenchConfig", "bench_model", "merge_rounds",
           "bench_target"]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
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


def matmul_gflops(n: int = 1024, runs: int = 10) -> float:
    """The fp32 matmul rate of this machine with the current thread count."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    with torch.no_grad():
        t = statistics.median(time_fn(lambda: torch.mm(a, b), runs=runs, warmup=2))
    return 2 * n ** 3 / t / 1e9


@dataclass
class BenchConfig:
    image_size: int = 224
    batch: int = 32
    runs: int = 20  # at least this many timed calls per figure...
    warmup: int = 3
    min_time: float = 1.0  # ...and at least this many seconds, so fast models get enough samples
    threads: int = 0
    budget_kb: int = 8192
    backends: tuple[str, ...] = ("eager", "channels_last", "ort")
    # Several models are timed in this many interleaved rounds (every model
    # once per round) and each figure is the median over rounds: the host's
    # speed drifts by tens of percent over minutes, and interleaving spreads a
    # slow minute over all models instead of landing on one.
    rounds: int = 1


def _ort_session(onnx_path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])


def bench_model(model: torch.nn.Module, cfg: BenchConfig, onnx_path: str | Path | None = None,
                matmul_rate: float | None = None) -> dict[str, Any]:
    """Static metrics plus timings of ``model`` (a SqueezeNet from ``build``)."""
    from .export import export_onnx
    from .model import fold_batchnorm

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
        with CpuMonitor() as mon:
            matmul_rate = matmul_gflops()
        if mon.other_cores is not None:
            other.append(mon.other_cores)
    res["matmul_gflops"] = matmul_rate

    def record(prefix: str, run32: Callable[[], Any], run1: Callable[[], Any]) -> None:
        with CpuMonitor() as mon:
            t32 = statistics.median(time_fn(run32, cfg.runs, cfg.warmup, cfg.min_time))
            t1 = statistics.median(time_fn(run1, cfg.runs, cfg.warmup, cfg.min_time))
        if mon.other_cores is not None:
            other.append(mon.other_cores)
        res[f"{prefix}_b{cfg.batch}_img_s"] = cfg.batch / t32
        res[f"{prefix}_b1_ms"] = t1 * 1000
        res[f"{prefix}_efficiency"] = 2 * prof.macs * (cfg.batch / t32) / (matmul_rate * 1e9)

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
            sess = _ort_session(path, threads)
            name = sess.get_inputs()[0].name
            a32, a1 = x32.numpy(), x1.numpy()
            record("ort", lambda: sess.run(None, {name: a32}), lambda: sess.run(None, {name: a1}))
    res["other_cpu_cores"] = max(other) if other else None
    res["machine_busy"] = None if not other else max(other) > 0.2
    return res


_TIMED = ("_img_s", "_ms", "_efficiency")


def merge_rounds(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One model's ``bench_model`` results from several rounds as one: timed
    figures are medians over rounds (each round's images/s kept beside them),
    static ones are the first round's, and the machine counts as busy if it
    was in any round."""
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
    return out


def bench_target(target: str | Path, cfg: BenchConfig, classes: int = 10, out_json: str | Path | None = None,
                 progress: bool = False) -> dict[str, Any]:
    """Benchmark a registered genome, a checkpoint or every generation of an
    evolve run (whose results then also go to ``RUN/bench.json``)."""
    import json

    from .checkpoint import load_checkpoint
    from .errors import SquishedError
    from .genome import get_genome, list_genomes
    from .io import atomic_write_json
    from .model import build

    threads = cfg.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    items: list[tuple[str, int | None, Any, float | None]] = []
    p = Path(str(target))
    is_run = (p / "lineage.json").exists()
    if str(target) in list_genomes():
        items.append((str(target), None, build(get_genome(str(target), num_classes=classes)).eval(), None))
    elif is_run:
        for e in json.loads((p / "lineage.json").read_text())["generations"]:
            ck = load_checkpoint(p / e["path"])
            items.append((e["name"] if e["generation"] else f"{e['name']} (ancestor)", e["generation"], ck.model,
                          e.get("top1")))
    elif p.exists():
        ck = load_checkpoint(p)
        items.append((ck.genome.name, ck.metrics.get("generation"), ck.model, ck.metrics.get("top1")))
    else:
        raise SquishedError(f"'{target}' is neither a registered genome, a checkpoint nor an evolve run folder")
    with CpuMonitor() as mon:
        rate = statistics.median([matmul_gflops() for _ in range(5)])
    rounds = max(1, cfg.rounds)
    per_model: list[list[dict[str, Any]]] = [[] for _ in items]
    jobs = [(r, i) for r in range(rounds) for i in range(len(items))]  # round by round: interleaved
    it: Any = jobs
    if progress:
        from tqdm import tqdm

        it = tqdm(jobs, desc="benchmarking" + (f" ({rounds} rounds)" if rounds > 1 else ""), unit="model",
                  leave=False)
    for _, i in it:
        per_model[i].append(bench_model(items[i][2], cfg, matmul_rate=rate))
    models = [{"name": name, "generation": gen, "top1": top1, **merge_rounds(per_model[i])}
              for i, (name, gen, _, top1) in enumerate(items)]
    result = {"machine": machine_info(), "threads": threads, "matmul_gflops": rate,
              "matmul_other_cpu_cores": mon.other_cores, "image_size": cfg.image_size, "batch": cfg.batch,
              "runs": cfg.runs, "rounds": rounds, "models": models,
              "machine_busy": any(m.get("machine_busy") for m in models) or bool(mon.busy)}
    if out_json is None and is_run:
        out_json = p / "bench.json"
    if out_json is not None:
        atomic_write_json(out_json, result)
    return result
