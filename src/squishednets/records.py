"""Typed, versioned records of an evolve run: one entry per generation and
one per offspring candidate, as ``RUN/lineage.json`` holds them.

Report, bench, export and compare read these dataclasses instead of loose
dicts. Two accuracy figures travel with every network (the three-set rule of
our evidence standard): ``heldout_top1``, on a stratified part held out of the
training folder, is the figure every choice is made by (fitness, the report's
SquishedNet-1…4, exported models); ``test_top1``, on val (or ``test/``), is
reported and never chooses anything. ``selected_by`` names the figure a
choice used.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CheckpointError
from .io import atomic_write_json, read_json_object
from .metrics import SQUEEZENET11_MB

__all__ = ["SCHEMA_VERSION", "SELECTED_BY", "Candidate", "GenerationRecord", "Lineage", "LINEAGE_FILE"]

SCHEMA_VERSION = 2
# The one figure choices are made by (see the module docstring).
SELECTED_BY = "heldout"
LINEAGE_FILE = "lineage.json"


def _from_dict(cls: type, d: dict[str, Any], where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise CheckpointError(f"{where} has unknown field(s) {unknown}; it was written by another version of "
                              "squishednets: re-run it with this one")
    try:
        return cls(**d)
    except TypeError as e:
        raise CheckpointError(f"{where} is incomplete ({e}); re-run it with this version of squishednets") from None


@dataclass(frozen=True)
class Candidate:
    """One trained offspring of a generation (the population's K)."""

    index: int
    heldout_top1: float
    size_mb: float
    params: int
    macs: int
    seed: int
    wall_s: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class GenerationRecord:
    """One generation of a lineage (generation 0 is the ancestor).

    ``path`` is the generation's checkpoint folder relative to the run folder,
    so a moved run folder still resolves it.
    """

    generation: int
    name: str
    path: str
    params: int
    size_mb: float
    macs: int
    widths: list[int]
    heldout_top1: float
    test_top1: float | None
    test_top5: float | None
    nonzero_params: int
    sparse_bytes: int | None
    wall_s: float
    seed: int | None = None
    parent: str | None = None
    env_factor: float | None = None
    sharpness: float | None = None
    mac_pressure: float | None = None
    target_size_mb: float | None = None
    target_macs: float | None = None
    synapse_factor: float | None = None
    constraints_met: bool | None = None
    selected: int | None = None
    selected_by: str = SELECTED_BY
    candidates: list[Candidate] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def reduction_vs_squeezenet11(self) -> float:
        return SQUEEZENET11_MB / self.size_mb

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["candidates"] = [c.to_dict() for c in self.candidates]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GenerationRecord":
        d = dict(d)
        d["candidates"] = [_from_dict(Candidate, c, "a lineage candidate") for c in d.get("candidates", [])]
        return _from_dict(cls, d, f"lineage entry {d.get('generation')}")


@dataclass(frozen=True)
class Lineage:
    """``RUN/lineage.json``: the run's resolved configuration and its generations."""

    config: dict[str, Any]
    generations: list[GenerationRecord]
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": self.schema_version, "config": self.config,
                "generations": [g.to_dict() for g in self.generations]}

    def save(self, run: str | Path) -> None:
        atomic_write_json(Path(run) / LINEAGE_FILE, self.to_dict())

    @classmethod
    def load(cls, run: str | Path) -> "Lineage":
        path = Path(run) / LINEAGE_FILE
        if not path.is_file():
            raise CheckpointError(f"{path} does not exist; pass an evolve run folder (it holds lineage.json)")
        d = read_json_object(path, CheckpointError, "re-run the evolve stage")
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise CheckpointError(f"{path} has schema version {version}, this squishednets reads {SCHEMA_VERSION}; "
                                  "re-run the evolve stage into a new folder with this version")
        return cls(config=d["config"], generations=[GenerationRecord.from_dict(g) for g in d["generations"]])

    def by_generation(self, g: int) -> GenerationRecord:
        return self.generations[g]
