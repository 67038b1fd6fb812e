"""The architecture as data: SqueezeNet genomes.

A genome is a frozen, JSON-serialisable description of a SqueezeNet-family
network: a stem convolution, a list of Fire modules (squeeze, expand1x1,
expand3x3 widths), max-pool positions, dropout, the number of classes and
whether BatchNorm follows each convolution. ``model.build`` turns it into an
``nn.Module``; synthesis (SquishedNets paper, section 3) produces smaller
genomes from bigger ones.

Also here: the registry of named genomes (SqueezeNet v1.0 and v1.1 as
published, torchvision's layout), the few-class modification of section 2 of
the SquishedNets paper (conv10 becomes N 1x1 filters), and SqueezeNet's
metaparameter generator (base_e, incr_e, pct3x3, freq, SR; section 5 of the
SqueezeNet paper and section 5.3-5.4 of the small-DNN playbook).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import GenomeError

__all__ = [
    "FORMAT_VERSION",
    "StemSpec",
    "FireSpec",
    "Genome",
    "make_divisible",
    "register",
    "get_genome",
    "list_genomes",
    "squeezenet_design",
    "load_genome_file",
    "round_widths",
]

FORMAT_VERSION = 1


def make_divisible(value: float, divisor: int = 1, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor`` (timm's helper).

    Every channel count that the code invents goes through here, so that
    "multiples of 8" is one switch. Rounds to nearest but never drops more
    than 10% below ``value``.
    """
    if divisor <= 1:
        return max(int(min_value or 1), int(round(value)))
    min_value = divisor if min_value is None else min_value
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return int(new)


def _check_int(where: str, name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise GenomeError(f"{where}: {name} must be an integer, got {value!r}")
    if value < minimum:
        raise GenomeError(f"{where}: {name} must be >= {minimum}, got {value}")


@dataclass(frozen=True)
class StemSpec:
    """The first convolution (conv1)."""

    filters: int
    kernel: int
    stride: int
    padding: int = 0

    def __post_init__(self) -> None:
        _check_int("stem", "filters", self.filters, 1)
        _check_int("stem", "kernel", self.kernel, 1)
        _check_int("stem", "stride", self.stride, 1)
        _check_int("stem", "padding", self.padding, 0)


@dataclass(frozen=True)
class FireSpec:
    """One Fire module: a 1x1 squeeze layer feeding 1x1 and 3x3 expand layers
    whose outputs are concatenated (SqueezeNet paper, section 3.2)."""

    squeeze: int
    expand1x1: int
    expand3x3: int

    def __post_init__(self) -> None:
        _check_int("fire", "squeeze", self.squeeze, 1)
        # One expand branch may be empty (pct3x3 = 0 or 1), never both.
        _check_int("fire", "expand1x1", self.expand1x1, 0)
        _check_int("fire", "expand3x3", self.expand3x3, 0)
        if self.expand1x1 + self.expand3x3 < 1:
            raise GenomeError("fire: expand1x1 + expand3x3 must be >= 1")

    @property
    def out_channels(self) -> int:
        return self.expand1x1 + self.expand3x3


@dataclass(frozen=True)
class Genome:
    """A SqueezeNet-family architecture.

    ``pool_after`` lists where 3x3/2 max-pools sit: 0 means after conv1,
    i >= 1 means after the i-th Fire module (fire2 is i = 1, as in the
    paper's numbering fire2..fire9).
    """

    name: str
    num_classes: int
    stem: StemSpec
    fires: tuple[FireSpec, ...]
    pool_after: tuple[int, ...]
    dropout: float = 0.5
    batchnorm: bool = False
    in_channels: int = 3
    version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.version != FORMAT_VERSION:
            raise GenomeError(
                f"genome format version {self.version!r} is not supported (this build reads version "
                f"{FORMAT_VERSION}); re-create the genome with this version of squishednets"
            )
        if not isinstance(self.name, str) or not self.name:
            raise GenomeError("genome: name must be a non-empty string")
        _check_int("genome", "num_classes", self.num_classes, 2)
        _check_int("genome", "in_channels", self.in_channels, 1)
        if not isinstance(self.stem, StemSpec):
            raise GenomeError("genome: stem must be a StemSpec")
        if not isinstance(self.fires, tuple) or not all(isinstance(f, FireSpec) for f in self.fires):
            raise GenomeError("genome: fires must be a tuple of FireSpec")
        if len(self.fires) < 1:
            raise GenomeError("genome: at least one Fire module is required")
        if not isinstance(self.pool_after, tuple):
            raise GenomeError("genome: pool_after must be a tuple of positions")
        for p in self.pool_after:
            _check_int("genome", "pool_after position", p, 0)
            if p > len(self.fires):
                raise GenomeError(
                    f"genome: pool_after position {p} is past the last Fire module ({len(self.fires)})"
                )
        if len(set(self.pool_after)) != len(self.pool_after):
            raise GenomeError(f"genome: pool_after has duplicate positions {list(self.pool_after)}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= float(self.dropout) < 1.0:
            raise GenomeError(f"genome: dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.batchnorm, bool):
            raise GenomeError(f"genome: batchnorm must be true or false, got {self.batchnorm!r}")

    # -- derived --------------------------------------------------------------
    def fire_in_channels(self, i: int) -> int:
        """Input channels of Fire module ``i`` (0-based)."""
        return self.stem.filters if i == 0 else self.fires[i - 1].out_channels

    @property
    def final_channels(self) -> int:
        """Channels entering conv10."""
        return self.fires[-1].out_channels

    def widths(self) -> list[int]:
        """Every removable width in order: conv1, then (squeeze, e1, e3) per Fire."""
        out = [self.stem.filters]
        for f in self.fires:
            out += [f.squeeze, f.expand1x1, f.expand3x3]
        return out

    # -- edits ----------------------------------------------------------------
    def with_widths(self, widths: list[int]) -> "Genome":
        """The inverse of ``widths``: this genome with every removable width
        replaced (a lineage.json entry's widths rebuild its architecture)."""
        if len(widths) != 1 + 3 * len(self.fires):
            raise GenomeError(f"widths: expected {1 + 3 * len(self.fires)} numbers (conv1, then squeeze, expand1x1, "
                              f"expand3x3 per Fire), got {len(widths)}")
        return dataclasses.replace(
            self,
            stem=dataclasses.replace(self.stem, filters=int(widths[0])),
            fires=tuple(FireSpec(*(int(c) for c in widths[1 + 3 * i: 4 + 3 * i])) for i in range(len(self.fires))),
        )

    def with_classes(self, num_classes: int) -> "Genome":
        """The few-class modification (SquishedNets paper, section 2): conv10
        becomes ``num_classes`` 1x1 filters; nothing else changes."""
        return dataclasses.replace(self, num_classes=num_classes)

    def replace(self, **changes: Any) -> "Genome":
        return dataclasses.replace(self, **changes)

    def scaled(self, multiplier: float, divisor: int = 1) -> "Genome":
        """Width multiplier: every conv width times ``multiplier`` (rounded with
        ``make_divisible``); conv10 keeps ``num_classes`` filters."""
        if multiplier <= 0:
            raise GenomeError(f"width multiplier must be > 0, got {multiplier}")

        def r(c: int) -> int:
            return 0 if c == 0 else make_divisible(c * multiplier, divisor)

        return dataclasses.replace(
            self,
            name=f"{self.name}_x{multiplier:g}",
            stem=dataclasses.replace(self.stem, filters=r(self.stem.filters)),
            fires=tuple(FireSpec(r(f.squeeze), r(f.expand1x1), r(f.expand3x3)) for f in self.fires),
        )

    # -- serialisation --------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "name": self.name,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "stem": dataclasses.asdict(self.stem),
            "fires": [dataclasses.asdict(f) for f in self.fires],
            "pool_after": list(self.pool_after),
            "dropout": self.dropout,
            "batchnorm": self.batchnorm,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Genome":
        if not isinstance(d, dict):
            raise GenomeError("genome JSON must be an object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise GenomeError(f"genome has unknown key(s) {unknown}; allowed keys are {sorted(known)}")
        if "version" not in d:
            raise GenomeError(f"genome has no 'version' key; add \"version\": {FORMAT_VERSION}")
        for req in ("name", "num_classes", "stem", "fires", "pool_after"):
            if req not in d:
                raise GenomeError(f"genome is missing the required key '{req}'")
        try:
            stem = d["stem"]
            if not isinstance(stem, dict):
                raise GenomeError("genome: stem must be an object")
            _reject_unknown("stem", stem, StemSpec)
            fires = d["fires"]
            if not isinstance(fires, list):
                raise GenomeError("genome: fires must be a list")
            for i, f in enumerate(fires):
                if not isinstance(f, dict):
                    raise GenomeError(f"genome: fires[{i}] must be an object")
                _reject_unknown(f"fires[{i}]", f, FireSpec)
            fire_specs = []
            for i, f in enumerate(fires):
                try:
                    fire_specs.append(FireSpec(**f))
                except GenomeError as e:
                    raise GenomeError(f"fires[{i}] (fire{i + 2}): {str(e).removeprefix('fire: ')}") from None
            pool_after = d["pool_after"]
            if not isinstance(pool_after, list):
                raise GenomeError("genome: pool_after must be a list of positions")
            kwargs = {k: v for k, v in d.items() if k not in ("stem", "fires", "pool_after")}
            return cls(stem=StemSpec(**stem), fires=tuple(fire_specs), pool_after=tuple(pool_after), **kwargs)
        except TypeError as e:  # missing constructor arguments
            raise GenomeError(f"genome is incomplete: {e}") from None

    @classmethod
    def from_json(cls, text: str) -> "Genome":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise GenomeError(f"genome is not valid JSON: {e}") from None
        return cls.from_dict(d)


def _reject_unknown(where: str, d: dict[str, Any], kind: type) -> None:
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise GenomeError(f"genome {where} has unknown key(s) {unknown}; allowed keys are {sorted(known)}")


def load_genome_file(path: str | Path) -> Genome:
    p = Path(path)
    if not p.exists():
        raise GenomeError(f"genome file {p} does not exist")
    if not p.is_file():
        raise GenomeError(f"{p} is a folder, not a genome JSON file")
    try:
        return Genome.from_json(p.read_text())
    except GenomeError as e:
        raise GenomeError(f"{p}: {e}") from None


# -- registry -----------------------------------------------------------------
_REGISTRY: dict[str, Callable[[], Genome]] = {}


def register(name: str) -> Callable[[Callable[[], Genome]], Callable[[], Genome]]:
    """Register a named genome factory; duplicate names are refused."""

    def deco(fn: Callable[[], Genome]) -> Callable[[], Genome]:
        if name in _REGISTRY:
            raise ValueError(f"genome '{name}' is already registered")
        _REGISTRY[name] = fn
        return fn

    return deco


def list_genomes() -> list[str]:
    return sorted(_REGISTRY)


def get_genome(name: str, num_classes: int | None = None, batchnorm: bool | None = None) -> Genome:
    if name not in _REGISTRY:
        raise GenomeError(f"unknown genome '{name}'; known genomes are {', '.join(list_genomes())}")
    g = _REGISTRY[name]()
    if num_classes is not None:
        g = g.with_classes(num_classes)
    if batchnorm is not None:
        g = g.replace(batchnorm=batchnorm)
    return g


# Fire widths (squeeze, expand1x1, expand3x3) shared by v1.0 and v1.1: the
# two differ in conv1 and in where they pool (v1.1 downsamples earlier).
_SQUEEZENET_FIRES = tuple(FireSpec(*t) for t in (
    (16, 64, 64), (16, 64, 64), (32, 128, 128), (32, 128, 128),
    (48, 192, 192), (48, 192, 192), (64, 256, 256), (64, 256, 256),
))


@register("squeezenet1_0")
def squeezenet1_0() -> Genome:
    """SqueezeNet v1.0 (Iandola et al. 2016, Table 1): 1,248,424 parameters."""
    return Genome(
        name="squeezenet1_0",
        num_classes=1000,
        stem=StemSpec(filters=96, kernel=7, stride=2),
        fires=_SQUEEZENET_FIRES,
        pool_after=(0, 3, 7),
    )


@register("squeezenet1_1")
def squeezenet1_1() -> Genome:
    """SqueezeNet v1.1 (the SqueezeNet repository's v1.1): 2.4x less
    computation than v1.0, 1,235,496 parameters; the SquishedNets ancestor."""
    return Genome(
        name="squeezenet1_1",
        num_classes=1000,
        stem=StemSpec(filters=64, kernel=3, stride=2),
        fires=_SQUEEZENET_FIRES,
        pool_after=(0, 2, 4),
    )


def squeezenet_design(
    base_e: int = 128,
    incr_e: int = 128,
    pct3x3: float = 0.5,
    freq: int = 2,
    sr: float = 0.125,
    num_fires: int = 8,
    num_classes: int = 1000,
    stem: StemSpec | None = None,
    pool_after: tuple[int, ...] | None = None,
    divisor: int = 1,
    width_multiplier: float = 1.0,
    batchnorm: bool = False,
    name: str | None = None,
) -> Genome:
    """SqueezeNet's metaparameters (SqueezeNet paper, section 5.1).

    Fire module i (0-based) has e_i = base_e + incr_e * floor(i / freq)
    expand filters, of which pct3x3 are 3x3, and s_i = SR * e_i squeeze
    filters. The defaults give SqueezeNet v1.0's Fire widths. Without
    ``pool_after``, pooling follows v1.0: after conv1, the middle Fire module
    and the last one (downsampling late, the paper's strategy 3).
    """
    for nm, v in (("base_e", base_e), ("incr_e", incr_e), ("freq", freq), ("num_fires", num_fires)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise GenomeError(f"design: {nm} must be an integer, got {v!r}")
    if base_e < 1 or incr_e < 0 or freq < 1 or num_fires < 1:
        raise GenomeError("design: need base_e >= 1, incr_e >= 0, freq >= 1, num_fires >= 1")
    if not 0.0 <= pct3x3 <= 1.0:
        raise GenomeError(f"design: pct3x3 must be in [0, 1], got {pct3x3}")
    if not 0.0 < sr <= 1.0:
        raise GenomeError(f"design: SR (squeeze ratio) must be in (0, 1], got {sr}")
    fires = []
    for i in range(num_fires):
        e = (base_e + incr_e * (i // freq)) * width_multiplier
        e3 = 0 if pct3x3 == 0 else make_divisible(e * pct3x3, divisor)
        e1 = 0 if pct3x3 == 1 else make_divisible(e * (1 - pct3x3), divisor)
        s = make_divisible(sr * e, divisor)
        fires.append(FireSpec(s, e1, e3))
    if pool_after is None:
        pool_after = tuple(sorted({0, max(0, num_fires // 2 - 1), num_fires - 1}))
    stem = stem or StemSpec(filters=make_divisible(96 * width_multiplier, divisor), kernel=7, stride=2)
    if name is None:
        name = f"design_b{base_e}_i{incr_e}_p{pct3x3:g}_f{freq}_sr{sr:g}"
    return Genome(
        name=name,
        num_classes=num_classes,
        stem=stem,
        fires=tuple(fires),
        pool_after=tuple(pool_after),
        batchnorm=batchnorm,
    )


def round_widths(genome: Genome, divisor: int, min_width: int = 1) -> Genome:
    """Round every width of ``genome`` to a multiple of ``divisor`` (odd widths
    run slowly in ONNX Runtime); zero-width expand branches stay zero."""

    def r(c: int) -> int:
        return 0 if c == 0 else max(min_width, make_divisible(c, divisor))

    return genome.replace(
        stem=dataclasses.replace(genome.stem, filters=r(genome.stem.filters)),
        fires=tuple(FireSpec(r(f.squeeze), r(f.expand1x1), r(f.expand3x3)) for f in genome.fires),
    )

