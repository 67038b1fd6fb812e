"""Shared helpers for benchmark scripts: machine facts and JSON output.

Every JSON records the command line that produced it, the date, the machine
(CPU, its vector flags, library versions) and the flags again at the top
level, since they decide both the fp32 ceiling and int8 accuracy.
"""

from __future__ import annotations

import datetime
import os
import shlex
import statistics
import sys
from pathlib import Path

# $SQUISHEDNETS_RESULTS redirects the output (a trial run of a script must
# not overwrite the committed results).
RESULTS = Path(os.environ.get("SQUISHEDNETS_RESULTS") or Path(__file__).resolve().parent / "results")


def machine() -> dict:
    from squishednets.bench import machine_info

    return machine_info()


def command_line(argv: list[str] | None = None, cwd: str | Path | None = None) -> str:
    """The command that ran this script, as one would type it again: the
    interpreter as ``python`` and the script relative to the working folder
    (``python benchmarks/x.py --run runs/main4``), so no machine's paths
    end up in committed results."""
    argv = list(sys.argv if argv is None else argv)
    cwd = Path(cwd or os.getcwd()).resolve()
    if argv:
        script = Path(argv[0])
        if script.is_absolute():
            try:
                argv[0] = str(script.resolve().relative_to(cwd))
            except ValueError:
                pass  # outside the working folder: the path is the only way to name it
    return shlex.join(["python", *argv])


def stats(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value) and count: how every claim over seeds is quoted."""
    return {"mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def write_result(name: str, payload: dict) -> Path:
    from squishednets.io import atomic_write_json

    info = machine()
    payload = {
        "command": command_line(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": info,
        "cpu_flags": info["cpu_flags"],
        **payload,
    }
    path = RESULTS / f"{name}.json"
    atomic_write_json(path, payload)
    return path
