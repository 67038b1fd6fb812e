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


# The short version of the main job that benchmarks/peers.py and
# benchmarks/explore_goal.py share (the default 60 + 15 x 12 epochs would take
# peers trained from scratch about 15 hours per seed on 2 cores): the ancestor
# trained ANCESTOR_EPOCHS, each of the 15 generations GENERATION_EPOCHS. Both
# scripts keep a lineage per seed in RUNS/seed{S}/{ancestor,evolve}, so the
# SqueezeNet v1.1 lineages one trains the other reuses.
ANCESTOR_EPOCHS = 30
GENERATION_EPOCHS = 4


def lineage(seed: int, root: Path, anc_epochs: int, gen_epochs: int, threads: int | None,
            model: str = "squeezenet1_1"):
    """Train (or resume) ``model`` as the ancestor and evolve it with the main
    job's evolution, at ``anc_epochs`` / ``gen_epochs``; the Lineage."""
    import dataclasses

    from squishednets.evolve import evolve
    from squishednets.pipeline import RunConfig
    from squishednets.train import run_training

    cfg = RunConfig()
    anc = dataclasses.replace(cfg.ancestor, model=model, seed=seed, epochs=anc_epochs, threads=threads)
    m = run_training(anc, root / "ancestor", resume=True, progress=sys.stderr.isatty())
    print(f"{root}: ancestor held-out {m['heldout_top1']:.4f} test {m['test_top1']:.4f}", flush=True)
    ev = dataclasses.replace(cfg.evolve, seed=seed, train=dataclasses.replace(cfg.evolve.train, epochs=gen_epochs,
                                                                                threads=threads))
    lin = evolve(root / "ancestor" / "model", root / "evolve", ev, progress=sys.stderr.isatty())
    print(f"{root}: final {lin.generations[-1].size_mb:.3f} MB test {lin.generations[-1].test_top1:.4f}", flush=True)
    return lin
