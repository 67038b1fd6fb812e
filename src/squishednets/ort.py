"""ONNX Runtime on this CPU: the one session factory and the CPU's vector flags.

The export check, the int8 accuracy and speed figures and the benchmark all
run the graph through ``session``, so a number in one JSON file is measured
on the same optimised graph, with the same threading, as a number in another
(the paper's Table 1 speeds are ONNX Runtime images/s at batch 32).
``cpu_flags`` says which kernels ONNX Runtime picks here: the AVX2 or
AVX-512 fp32 ones, and for int8 whether VNNI spares u8s8 products the
16-bit saturation of older x86 instructions.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

__all__ = ["CPU_FLAGS", "cpu_flags", "session", "images_per_second"]

# The vector-unit flags that set the fp32 peak (AVX2/AVX-512 with FMA) and
# how int8 convolutions behave (VNNI, 512- or 256-bit, avoids saturation).
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "fma")


def cpu_flags(cpuinfo: str | None = None) -> dict[str, bool]:
    """Which of ``CPU_FLAGS`` the CPU has, from the ``flags`` line of
    ``/proc/cpuinfo`` (or the text given); all False where it lists none
    (another OS or a non-x86 CPU)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    have: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            have = set(line.split(":", 1)[1].split())
            break
    return {f: f in have for f in CPU_FLAGS}


def session(path: str | Path, threads: int = 0, profile: str | Path | None = None):
    """An ``onnxruntime.InferenceSession`` for ``path`` on the CPU with
    ``threads`` intra-op threads (0: ONNX Runtime's default, one per core).
    With ``profile`` (a file prefix) ONNX Runtime's profiler records every
    node's time; ``end_profiling()`` returns the JSON file's path."""
    so = ort.SessionOptions()
    if profile is not None:
        so.enable_profiling = True
        so.profile_file_prefix = str(profile)
    # Intra-op threads are the parallelism we measure and report: the thread
    # count of the run, as torch gets through torch.set_num_threads.
    so.intra_op_num_threads = threads
    # These networks are a chain of convolutions with nothing to run side by
    # side; parallel execution would only add an inter-op pool competing with
    # the intra-op threads for the same cores and make timings noisier.
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    # All optimisations (Conv+ReLU fusion, the NCHWc layout) are what a
    # deployment gets, so the check and the benchmark run that same graph.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only: ORT warns about harmless initializer details
    # An explicit provider list: a GPU build would otherwise pick CUDA and
    # the CPU figures would silently stop being CPU figures.
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def images_per_second(sess, x: np.ndarray, runs: int = 10, warmup: int = 2, min_time: float = 0.5) -> float:
    """Images/s of ``sess`` on batch ``x``: the median of at least ``runs``
    timed calls (and ``min_time`` seconds) after ``warmup`` untimed ones, the
    protocol of ``bench.time_fn``."""
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(warmup):
        sess.run(None, feed)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < runs or time.perf_counter() - start < min_time:
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    return len(x) / statistics.median(times)
