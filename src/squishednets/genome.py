"""The architecture as data: SqueezeNet genomes.

A genome is a frozen, JSON-serialisable description of a SqueezeNet-family
network: a stem convolution, a list of Fire modules (squeeze, expand1x1,
expand3x3 widths), max-pool positions, dropout, the number of classes and
whether BatchNorm follows each convolution. ``model.build`` turns it into an
``nn.Module``; synthesis (SquishedNets paper, section 3) produces smaller
genomes from bigger ones.

``Genome.units`` lists the genome's convolutions (conv1, each Fire's
squeeze / expand1x1 / expand3x3, conv10) with their channels, kernels,
groups and, for an image size, their pixels: the one source of layer names
(display names such as ``fire2.squeeze``, and the module paths of
``model.build``'s network such as ``fires.0.squeeze``) for the cost model in
``metrics``, synthesis and the report.

Two genome-wide options factorise the Fire modules (small-DNN playbook,
sections 5.6-5.7); both are off by default, so a genome without them is the
dense SqueezeNet it always was:

- ``depthwise``: each Fire's expand3x3 branch is a 3x3 depthwise convolution
  over the squeeze output (one filter per channel, the unit
  ``fireN.expand3x3_dw``) followed by a 1x1 pointwise convolution to the
  expand3x3 width (the unit ``fireN.expand3x3``), as in MobileNets (5.6);
- ``groups``: the Fire's 1x1 convolutions (squeeze, expand1x1 and, with
  ``depthwise``, the pointwise one) are split into that many groups, and a
  channel shuffle follows the squeeze so that the grouped expands read every
  group of it, as in ShuffleNet (5.7). conv1, conv10 and a dense 3x3 expand
  are never grouped.

Also here: the registry of named genomes (SqueezeNet v1.0 and v1.1 as
published, torchvision's layout), the few-class modification of section 2 of
the SquishedNets paper (conv10 becomes N 1x1 filters), SqueezeNet's
metaparameter generator (base_e, incr_e, pct3x3, freq, SR; section 5 of the
SqueezeNet paper and section 5.3-5.4 of the small-DNN playbook), the placement
of its pools (``pool_positions``, the playbook's section 5.5) and the two
width-rounding rules (``make_divisible`` for designed widths, ``round_width``
for the widths synthesis gives offspring).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import GenomeError

__all__ = [
    "FORMAT_VERSION",
    "StemSpec",
    "FireSpec",
    "Genome",
    "Unit",
    "conv_out",
    "pool_out",
    "make_divisible",
    "round_width",
    "register",
    "get_genome",
    "list_genomes",
    "squeezenet_design",
    "POOL_STRATEGIES",
    "pool_positions",
    "load_genome_file",
    "round_widths",
]

FORMAT_VERSION = 1


def make_divisible(value: float, divisor: int = 1, min_value: int | None = None) -> int:
    """Round a designed channel count to a multiple of ``divisor`` (timm's
    rule): to nearest, ties up, at least ``min_value`` (``divisor`` by
    default), and never more than 10% below ``value``.

    The width multiplier, the metaparameter generator and ``round_widths``
    use it. Synthesis uses ``round_width`` instead: a survivor count is not a
    design, and there rounding down by up to half a divisor (ties to even) is
    what keeps offspring on their size target. The two rules differ at ties
    and where the 10% limit bites (104 -> 112 here, 96 there with divisor
    16), so neither can call the other without changing widths; both keep
    "multiples of ``divisor``" the one switch.
    """
    if divisor <= 1:
        return max(int(min_value or 1), int(round(value)))
    min_value = divisor if min_value is None else min_value
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return int(new)


def round_width(n: int, divisor: int = 1, min_width: int = 1, max_width: int | None = None) -> int:
    """The width synthesis gives a layer in which ``n`` filters survived.

    At least ``min_width`` (or ``max_width``, if smaller); with ``divisor`` >
    1 the nearest multiple of it, ties to the even multiple (Python's
    ``round``), but never below the smallest multiple >= ``min_width``;
    finally within [1, ``max_width``], the parent's width. Unlike
    ``make_divisible`` it may round down a whole half divisor (a thin layer
    with 9 survivors keeps 8 of them at divisor 8).
    """
    target = max(n, min_width if max_width is None else min(min_width, max_width))
    if divisor > 1:
        floor_mult = -(-max(1, min_width) // divisor) * divisor
        target = max(floor_mult, int(round(target / divisor)) * divisor)
    if max_width is not None:
        target = min(max_width, target)
    return max(1, target)


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output pixels (per side) of a convolution."""
    return (size + 2 * padding - kernel) // stride + 1


def pool_out(size: int, kernel: int = 3, stride: int = 2) -> int:
    """PyTorch's max-pool output size with ceil_mode=True and no padding."""
    out = math.ceil((size - kernel) / stride) + 1
    if (out - 1) * stride >= size:
        out -= 1
    return out


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


_FIRE_ROLES = ("squeeze", "expand1x1", "expand3x3")


def _fire_name(i: int) -> str:
    """Display name of Fire module ``i`` (0-based): fire2..fire9 as in the SqueezeNet paper."""
    return f"fire{i + 2}"


@dataclass(frozen=True)
class Unit:
    """One convolution of a genome (see ``Genome.units``).

    ``name`` is the display name: ``conv1``, ``fire2.squeeze``,
    ``fire2.expand1x1``, ``fire2.expand3x3``, ..., ``conv10``, the Fire
    modules numbered fire2..fire9 as in the SqueezeNet paper. ``module`` is
    the unit's path in ``model.build``'s network (``conv1``,
    ``fires.0.squeeze``, ``conv10``): it prefixes the unit's state-dict
    entries and keys synthesis's per-unit dicts. ``stage`` counts like
    ``Genome.pool_after``: 0 for conv1, i for the i-th Fire module, one past
    the last Fire for conv10. ``inputs`` are the modules whose outputs,
    concatenated in this order, the unit reads (none for conv1: the image).
    ``in_hw`` and ``out_hw`` are pixels per side, ``None`` without an image
    size. ``groups`` is the convolution's: 1 for a dense one, the genome's
    ``groups`` for a grouped 1x1 one, ``cin`` for a depthwise one.

    In a ``depthwise`` genome the expand3x3 branch is two units:
    ``fireN.expand3x3_dw`` (kind "depthwise", 3x3, ``cout`` = ``cin`` =
    the squeeze width) and ``fireN.expand3x3`` (kind "expand3x3", the 1x1
    pointwise convolution to the branch's width, reading the depthwise unit).
    """

    name: str
    module: str
    # "conv" (conv1), "squeeze", "expand1x1", "depthwise", "expand3x3" or "classifier" (conv10)
    kind: str
    stage: int
    cin: int
    cout: int
    kernel: int
    stride: int
    padding: int
    inputs: tuple[str, ...]
    in_hw: int | None = None
    out_hw: int | None = None
    groups: int = 1

    @property
    def removable(self) -> bool:
        """Whether synthesis may remove filters: not conv10's (the classes),
        nor a depthwise unit's, which has one filter per squeeze channel and
        so the squeeze's width."""
        return self.kind not in ("classifier", "depthwise")

    @property
    def conv_unit(self) -> bool:
        """Whether ``model.build`` makes it a ``ConvUnit`` (convolution,
        optional BatchNorm, ReLU): every unit but conv10, a plain convolution."""
        return self.kind != "classifier"


@dataclass(frozen=True)
class Genome:
    """A SqueezeNet-family architecture.

    ``pool_after`` lists where 3x3/2 max-pools sit: 0 means after conv1,
    i >= 1 means after the i-th Fire module (fire2 is i = 1, as in the
    paper's numbering fire2..fire9).

    ``groups`` and ``depthwise`` factorise the Fire modules (see the module
    docstring): every width a grouped convolution reads or writes must be a
    multiple of ``groups``.
    """

    name: str
    num_classes: int
    stem: StemSpec
    fires: tuple[FireSpec, ...]
    pool_after: tuple[int, ...]
    dropout: float = 0.5
    batchnorm: bool = False
    in_channels: int = 3
    groups: int = 1
    depthwise: bool = False
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
        if not isinstance(self.depthwise, bool):
            raise GenomeError(f"genome: depthwise must be true or false, got {self.depthwise!r}")
        _check_int("genome", "groups", self.groups, 1)
        if self.groups > 1:
            self._check_group_widths()

    def _check_group_widths(self) -> None:
        """A grouped convolution splits its inputs and its filters into
        ``groups`` equal parts (and the shuffle after a squeeze its outputs)."""
        g = self.groups
        for u in self.units():
            if u.groups == 1 or u.kind == "depthwise":
                continue
            for what, c in (("reads", u.cin), ("has", u.cout)):
                if c % g:
                    raise GenomeError(
                        f"genome: groups={g} splits {u.name} into {g} groups, but it {what} {c} channels, not a "
                        f"multiple of {g}; make every width a multiple of {g} (squeezenet_design(groups={g}) "
                        f"rounds them; round_widths(dense, {g}).replace(groups={g}) rounds a dense genome's)")

    # -- derived --------------------------------------------------------------
    def fire_in_channels(self, i: int) -> int:
        """Input channels of Fire module ``i`` (0-based)."""
        return self.stem.filters if i == 0 else self.fires[i - 1].out_channels

    @property
    def final_channels(self) -> int:
        """Channels entering conv10."""
        return self.fires[-1].out_channels

    def widths(self) -> list[int]:
        """Every removable width in order: conv1, then (squeeze, e1, e3) per
        Fire, 0 for an empty expand branch (the lineage's format)."""
        out = [self.stem.filters]
        for f in self.fires:
            out += [f.squeeze, f.expand1x1, f.expand3x3]
        return out

    def units(self, image_size: int | None = None) -> tuple[Unit, ...]:
        """Every convolution in network order: conv1, each Fire's squeeze,
        expand1x1 and expand3x3 (an empty expand branch has no unit; with
        ``depthwise`` the 3x3 branch is expand3x3_dw then expand3x3), conv10.

        With ``image_size`` each unit also carries its input and output
        pixels (3x3/2 max-pools, ceil mode, after the ``pool_after``
        positions); an image too small for a layer is a ValueError naming it.
        """
        if image_size is not None and image_size < 1:
            raise ValueError("image_size must be >= 1")
        hw = image_size
        units: list[Unit] = []

        def add(name: str, module: str, kind: str, stage: int, cin: int, cout: int, kernel: int, stride: int,
                inputs: tuple[str, ...], padding: int = 0, groups: int = 1) -> None:
            out_hw = None if hw is None else conv_out(hw, kernel, stride, padding)
            if out_hw is not None and out_hw < 1:
                raise ValueError(f"input {image_size}px is too small: {name} would have no output pixels")
            units.append(Unit(name, module, kind, stage, cin, cout, kernel, stride, padding, inputs, hw, out_hw,
                              groups))

        def after(stage: int) -> None:
            nonlocal hw
            hw = units[-1].out_hw
            if hw is not None and stage in self.pool_after:
                hw = pool_out(hw)
                if hw < 1:
                    raise ValueError(f"input {image_size}px is too small for the pooling after position {stage}")

        st = self.stem
        add("conv1", "conv1", "conv", 0, self.in_channels, st.filters, st.kernel, st.stride, (), st.padding)
        after(0)
        prev: tuple[str, ...] = ("conv1",)
        g = self.groups
        for i, f in enumerate(self.fires):
            tag, path, stage = _fire_name(i), f"fires.{i}", i + 1
            add(f"{tag}.squeeze", f"{path}.squeeze", "squeeze", stage, self.fire_in_channels(i), f.squeeze, 1, 1,
                prev, groups=g)
            sq = (f"{path}.squeeze",)  # with groups > 1 the expands read it channel-shuffled
            if f.expand1x1:
                add(f"{tag}.expand1x1", f"{path}.expand1x1", "expand1x1", stage, f.squeeze, f.expand1x1, 1, 1, sq,
                    groups=g)
            if f.expand3x3 and self.depthwise:  # pads by 1, so the branch keeps the squeeze's pixels
                add(f"{tag}.expand3x3_dw", f"{path}.expand3x3_dw", "depthwise", stage, f.squeeze, f.squeeze, 3, 1,
                    sq, padding=1, groups=f.squeeze)
                add(f"{tag}.expand3x3", f"{path}.expand3x3", "expand3x3", stage, f.squeeze, f.expand3x3, 1, 1,
                    (f"{path}.expand3x3_dw",), groups=g)
            elif f.expand3x3:
                add(f"{tag}.expand3x3", f"{path}.expand3x3", "expand3x3", stage, f.squeeze, f.expand3x3, 3, 1, sq,
                    padding=1)
            prev = tuple(f"{path}.{role}" for role in ("expand1x1", "expand3x3") if getattr(f, role))
            after(stage)
        add("conv10", "conv10", "classifier", len(self.fires) + 1, self.final_channels, self.num_classes, 1, 1, prev)
        return tuple(units)

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

    def with_unit_widths(self, widths: Mapping[str, int]) -> "Genome":
        """This genome with the removable units named in ``widths`` (by
        ``Unit.module``) given those widths; other units keep theirs and an
        empty expand branch stays empty."""
        units = {u.module: u for u in self.units() if u.removable}
        unknown = sorted(set(widths) - set(units))
        if unknown:
            raise GenomeError(f"widths: no removable unit {unknown}; the units are {list(units)}")
        new = self.widths()
        for module, width in widths.items():
            u = units[module]
            new[0 if u.stage == 0 else 3 * u.stage - 2 + _FIRE_ROLES.index(u.kind)] = int(width)
        return self.with_widths(new)

    def with_classes(self, num_classes: int) -> "Genome":
        """The few-class modification (SquishedNets paper, section 2): conv10
        becomes ``num_classes`` 1x1 filters; nothing else changes."""
        return dataclasses.replace(self, num_classes=num_classes)

    def replace(self, **changes: Any) -> "Genome":
        return dataclasses.replace(self, **changes)

    def scaled(self, multiplier: float, divisor: int = 1) -> "Genome":
        """Width multiplier: every conv width times ``multiplier`` (rounded with
        ``make_divisible`` to multiples of ``divisor`` and of ``groups``);
        conv10 keeps ``num_classes`` filters."""
        if multiplier <= 0:
            raise GenomeError(f"width multiplier must be > 0, got {multiplier}")
        divisor = math.lcm(divisor, self.groups)

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
            "groups": self.groups,
            "depthwise": self.depthwise,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Genome":
        """The inverse of ``to_dict``. Keys with defaults may be missing: a
        genome written before ``groups`` and ``depthwise`` existed is dense."""
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
                    raise GenomeError(f"fires[{i}] ({_fire_name(i)}): {str(e).removeprefix('fire: ')}") from None
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


POOL_STRATEGIES = ("early", "even", "late")


def pool_positions(strategy: str, num_fires: int) -> tuple[int, ...]:
    """Where SqueezeNet's three 3x3/2 max-pools go (``Genome.pool_after``)
    for ``num_fires`` Fire modules: downsampling placement, the small-DNN
    playbook's section 5.5, which found that downsampling too early hurts
    accuracy, too late costs compute, and evenly spaced pools suit SqueezeNet.

    Every strategy pools after conv1, as both published versions do (conv1
    runs at the image's resolution); n = ``num_fires``:

    - "early": after Fire n//4 and n//2: (0, 2, 4) for 8 Fires, v1.1's
      placement;
    - "even": the n Fires and conv10 after the first pool split into three
      equal runs at each resolution, pools after Fire round((n+1)/3) and
      round(2(n+1)/3): (0, 3, 6) for 8 Fires;
    - "late": after Fire n//2 - 1 and the last Fire but one: (0, 3, 7) for 8
      Fires, v1.0's placement and ``squeezenet_design``'s default.

    Positions that coincide with few Fire modules (fewer than 4 for "early"
    and "late", fewer than 2 for "even") merge: such a design pools fewer
    times.
    """
    _check_int("pool_positions", "num_fires", num_fires, 1)
    n = num_fires
    if strategy == "early":
        raw = (0, n // 4, n // 2)
    elif strategy == "even":  # k(n+1)/3 is never a tie, so (k(n+1) + 1) // 3 rounds it to nearest
        raw = (0, (n + 2) // 3, (2 * n + 3) // 3)
    elif strategy == "late":
        raw = (0, n // 2 - 1, n - 1)
    else:
        raise GenomeError(f"pool strategy must be one of {', '.join(POOL_STRATEGIES)}, got {strategy!r}")
    return tuple(sorted({max(0, p) for p in raw}))


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
    *,
    stem_filters: int | None = None,
    stem_kernel: int | None = None,
    stem_stride: int | None = None,
    stem_padding: int | None = None,
    pool_strategy: str | None = None,
    groups: int = 1,
    depthwise: bool = False,
) -> Genome:
    """SqueezeNet's metaparameters (SqueezeNet paper, section 5.1), and the
    design-space axes of the small-DNN playbook (sections 5.3-5.7).

    Fire module i (0-based) has e_i = base_e + incr_e * floor(i / freq)
    expand filters, of which pct3x3 are 3x3, and s_i = SR * e_i squeeze
    filters. The defaults give SqueezeNet v1.0's Fire widths.

    The stem is ``stem`` as given, or built from ``stem_filters`` (default
    96, v1.0's, scaled by ``width_multiplier`` like every width),
    ``stem_kernel`` (7), ``stem_stride`` (2) and ``stem_padding`` (0, as
    SqueezeNet; kernel // 2 keeps the image's size at stride 1); not both.

    Pools sit at ``pool_after``, or where ``pool_strategy`` ("early", "even"
    or "late", see ``pool_positions``) puts them; not both. Without either,
    pooling follows v1.0: "late" (the paper's strategy 3).

    ``groups`` and ``depthwise`` are the genome's (playbook 5.7 and 5.6):
    every width is then rounded to a multiple of lcm(``divisor``,
    ``groups``), so that each grouped convolution splits evenly.
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
    _check_int("design", "groups", groups, 1)
    divisor = math.lcm(divisor, groups)  # one rounding rule for every width a grouped convolution touches
    fires = []
    for i in range(num_fires):
        e = (base_e + incr_e * (i // freq)) * width_multiplier
        e3 = 0 if pct3x3 == 0 else make_divisible(e * pct3x3, divisor)
        e1 = 0 if pct3x3 == 1 else make_divisible(e * (1 - pct3x3), divisor)
        s = make_divisible(sr * e, divisor)
        fires.append(FireSpec(s, e1, e3))
    stem = _design_stem(stem, stem_filters, stem_kernel, stem_stride, stem_padding, width_multiplier, divisor)
    if name is None:
        name = f"design_b{base_e}_i{incr_e}_p{pct3x3:g}_f{freq}_sr{sr:g}"
        name += (f"_g{groups}" if groups > 1 else "") + ("_dw" if depthwise else "")
    return Genome(
        name=name,
        num_classes=num_classes,
        stem=stem,
        fires=tuple(fires),
        pool_after=_design_pools(pool_after, pool_strategy, num_fires),
        batchnorm=batchnorm,
        groups=groups,
        depthwise=depthwise,
    )


def _design_stem(stem: StemSpec | None, filters: int | None, kernel: int | None, stride: int | None,
                 padding: int | None, width_multiplier: float, divisor: int) -> StemSpec:
    """``squeezenet_design``'s conv1: ``stem`` or the keyword arguments, v1.0's where they are not given."""
    parts = {"stem_filters": filters, "stem_kernel": kernel, "stem_stride": stride, "stem_padding": padding}
    given = [k for k, v in parts.items() if v is not None]
    if stem is not None:
        if given:
            raise GenomeError(f"design: give stem or {', '.join(given)}, not both")
        return stem
    if filters is not None:
        _check_int("design", "stem_filters", filters, 1)
    return StemSpec(filters=make_divisible((96 if filters is None else filters) * width_multiplier, divisor),
                    kernel=7 if kernel is None else kernel, stride=2 if stride is None else stride,
                    padding=0 if padding is None else padding)


def _design_pools(pool_after: tuple[int, ...] | None, strategy: str | None, num_fires: int) -> tuple[int, ...]:
    if pool_after is not None and strategy is not None:
        raise GenomeError(f"design: give pool_after {list(pool_after)} or pool_strategy {strategy!r}, not both")
    if pool_after is not None:
        return tuple(pool_after)
    return pool_positions(strategy or "late", num_fires)


def round_widths(genome: Genome, divisor: int, min_width: int = 1) -> Genome:
    """Round every width of ``genome`` to a multiple of ``divisor`` (and of
    the genome's ``groups``) with ``make_divisible`` (odd widths run slowly in
    ONNX Runtime), at least ``min_width``; zero-width expand branches stay
    zero."""
    divisor = math.lcm(divisor, genome.groups)

    def r(c: int) -> int:
        return 0 if c == 0 else max(min_width, make_divisible(c, divisor))

    return genome.replace(
        stem=dataclasses.replace(genome.stem, filters=r(genome.stem.filters)),
        fires=tuple(FireSpec(r(f.squeeze), r(f.expand1x1), r(f.expand3x3)) for f in genome.fires),
    )

