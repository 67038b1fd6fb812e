"""Shared helpers for benchmark scripts: machine facts and JSON output."""

from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path

# $SQUISHEDNETS_RESULTS redirects the output (a trial run of a script must
# not overwrite the committed results).
RESULTS = Path(os.environ.get("SQUISHEDNETS_RESULTS") or Path(__file__).resolve().parent / "results")


def machine() -> dict:
    from squishednets.bench import machine_info

    return machine_info()


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        **payload,
    }
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)
    return path


