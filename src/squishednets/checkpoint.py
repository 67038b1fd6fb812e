"""Checkpoints: genome JSON + safetensors weights + metrics + configuration.

A checkpoint is a folder. Loading rebuilds the network from its genome and
loads the weights strictly; nothing is ever unpickled (no ``torch.load``).
Writes are atomic (``io.atomic_dir``): an interrupted save leaves the
previous checkpoint intact. Optional ``masks.safetensors`` holds fixed
synapse masks of a sparse offspring (SquishedNets paper, section 3).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .errors import CheckpointError, GenomeError
from .genome import Genome, get_genome, list_genomes, load_genome_file
from .io import atomic_dir, recover_dir
from .model import SqueezeNet, build

__all__ = ["resolve_genome", "Checkpoint", "save_checkpoint", "load_checkpoint", "resolve_checkpoint", "is_checkpoint",
           "load_weights_into", "weights_digest", "read_metrics"]

GENOME, WEIGHTS, METRICS, CONFIG, MASKS = "genome.json", "weights.safetensors", "metrics.json", "config.json", "masks.safetensors"


@dataclass
class Checkpoint:
    path: Path
    genome: Genome
    model: SqueezeNet
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    masks: dict[str, torch.Tensor] | None = None


def _state_dict_cpu(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # contiguous() also turns channels_last tensors into the standard layout.
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def save_checkpoint(
    path: str | Path,
    model: SqueezeNet,
    metrics: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    masks: dict[str, torch.Tensor] | None = None,
) -> Path:
    path = Path(path)

    def fill(tmp: Path) -> None:
        (tmp / GENOME).write_text(model.genome.to_json() + "\n")
        save_file(_state_dict_cpu(model), str(tmp / WEIGHTS), metadata={"format": "squishednets"})
        if masks:
            save_file({k: v.to(torch.uint8).contiguous().cpu() for k, v in masks.items()}, str(tmp / MASKS))
        (tmp / METRICS).write_text(json.dumps(metrics or {}, indent=2) + "\n")
        (tmp / CONFIG).write_text(json.dumps(config or {}, indent=2) + "\n")

    atomic_dir(path, fill)
    return path


def weights_digest(path: str | Path) -> str:
    """A checkpoint's identity: the hash of its weights file, so that a moved
    checkpoint is the same one and other weights at the same path are not."""
    return hashlib.sha256((resolve_checkpoint(path) / WEIGHTS).read_bytes()).hexdigest()[:16]


def read_metrics(path: str | Path) -> dict[str, Any]:
    """A checkpoint's metrics without building its network."""
    return json.loads((resolve_checkpoint(path) / METRICS).read_text())


def is_checkpoint(path: str | Path) -> bool:
    p = Path(path)
    return (p / GENOME).is_file() and (p / WEIGHTS).is_file()


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a training run folder holding ``model/``."""
    p = Path(path)
    recover_dir(p)
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist; pass a checkpoint folder (genome.json + weights.safetensors)")
    if p.is_file():
        raise CheckpointError(f"{p} is a file; a checkpoint is a folder holding genome.json and weights.safetensors")
    if is_checkpoint(p):
        return p
    if is_checkpoint(p / "model"):
        return p / "model"
    raise CheckpointError(f"{p} holds no checkpoint (no genome.json + weights.safetensors); was the run finished?")


def load_weights_into(model: torch.nn.Module, weights: dict[str, torch.Tensor], where: str) -> None:
    """Strict load with a message that names the mismatch."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in weights.items()}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = [f"{k} is {got[k]} but the genome needs {expected[k]}" for k in expected if k in got and got[k] != expected[k]]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("; ".join(wrong[:3]) + (f" (and {len(wrong) - 3} more)" if len(wrong) > 3 else ""))
        if missing:
            parts.append(f"missing {missing[:3]}" + (f" and {len(missing) - 3} more" if len(missing) > 3 else ""))
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}" + (f" and {len(unexpected) - 3} more" if len(unexpected) > 3 else ""))
        raise CheckpointError(f"{where}: weights do not fit the genome: {'; '.join(parts)}; the checkpoint is inconsistent")
    model.load_state_dict(weights, strict=True)


def load_checkpoint(path: str | Path) -> Checkpoint:
    p = resolve_checkpoint(path)
    try:
        genome = Genome.from_json((p / GENOME).read_text())
    except GenomeError as e:
        raise CheckpointError(f"{p / GENOME}: {e}") from None
    try:
        weights = load_file(str(p / WEIGHTS))
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{p / WEIGHTS} is not a readable safetensors file ({e}); the checkpoint is damaged") from None
    model = build(genome)
    load_weights_into(model, weights, str(p))
    model.eval()

    def read(name: str) -> dict[str, Any]:
        f = p / name
        if not f.exists():
            return {}
        try:
            return json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{f} is not valid JSON ({e})") from None

    masks = None
    if (p / MASKS).exists():
        masks = {k: v.bool() for k, v in load_file(str(p / MASKS)).items()}
    return Checkpoint(p, genome, model, read(METRICS), read(CONFIG), masks)


def resolve_genome(target: str | Path, num_classes: int | None = None, batchnorm: bool | None = None) -> Genome:
    """The one name-or-path resolver: a registered genome name, a genome JSON
    file or a checkpoint (or training run) folder. ``num_classes`` adapts
    conv10; ``batchnorm`` applies to registered names (a file or checkpoint's
    genome is taken as written)."""
    name = str(target)
    if name in list_genomes():
        g = get_genome(name, batchnorm=batchnorm)
    else:
        p = Path(target)
        if p.is_dir():
            g = load_checkpoint(p).genome  # loads the weights too: a damaged checkpoint is named here
        elif p.is_file():
            g = load_genome_file(p)
        else:
            raise GenomeError(f"'{name}' is neither a registered genome ({', '.join(list_genomes())}), "
                              "a genome JSON file nor a checkpoint folder")
    return g.with_classes(num_classes) if num_classes else g
