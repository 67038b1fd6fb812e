"""Tasks for test_executor: module-level (other processes find them by name)
and light (no torch), so that a worker starts in about a second."""

import os
import random
import signal
from pathlib import Path

from squishednets.io import atomic_write_json, read_json_object


def noise_sum(seed: int) -> float:
    r = random.Random(seed)
    return sum(r.gauss(0, 1) for _ in range(1000))


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("three is not allowed")
    return x


def die_once(task: dict) -> dict:
    """Idempotent like a real task: returns its result file if there is one.
    The first time (remembered by a marker file), item 0 dies before writing
    its result and item 1 after writing it, when the retry must find the file."""
    d, i = Path(task["dir"]), task["i"]
    out = d / f"result_{i}.json"
    if out.exists():
        return read_json_object(out, ValueError, "")
    marker = d / f"died_{i}"
    if i == 0 and not marker.exists():
        marker.touch()
        os._exit(1)
    res = {"i": i, "value": noise_sum(i)}
    atomic_write_json(out, res)
    with open(d / "written.log", "a") as fh:
        fh.write(f"{i}\n")
    if i == 1 and not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return res


def always_die(task: dict) -> None:
    with open(Path(task["dir"]) / "attempts.log", "a") as fh:
        fh.write("x\n")
    os.kill(os.getpid(), signal.SIGKILL)
