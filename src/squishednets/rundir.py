"""The one owner of a run folder: its ``config.json``, the resume rule and
the finished stages.

Every long command (``train``, ``evolve``, ``run``) writes into a run folder
through :class:`RunDir`. Opening one either starts it (writing the resolved
configuration) or resumes it, with one rule: every field whose option says
``resume=True`` must equal the stored value, and a folder written under
another ``config_version`` or by another command is refused with a message
that names the fix. Paths stored in a run folder are relative to it, so the
folder can be moved and still resumes.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import resume_diff, to_dict
from .errors import ConfigError
from .io import atomic_dir, atomic_write_json, read_json_object

__all__ = ["RunDir", "CONFIG_VERSION", "CONFIG_FILE"]

# Bumped when the meaning of a stored configuration changes; older folders are
# refused, not reinterpreted.
CONFIG_VERSION = 2
CONFIG_FILE = "config.json"


@dataclass
class RunDir:
    """An open run folder of one ``kind`` (the command that owns it)."""

    root: Path
    kind: str
    config: Any
    extra: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, Any] = field(default_factory=dict)
    resumed: bool = False

    @classmethod
    def open(cls, path: str | Path, cfg: Any, kind: str, extra: dict[str, Any] | None = None,
             check_extra: tuple[str, ...] = ()) -> "RunDir":
        """Start or resume the run folder ``path`` for configuration ``cfg``.

        ``extra`` holds facts resolved outside the configuration (e.g. the
        ancestor's fingerprint); the keys in ``check_extra`` must match on resume.
        """
        root = Path(path)
        if root.exists() and not root.is_dir():
            raise ConfigError(f"{root} is a file; choose a folder for the run")
        extra = dict(extra or {})
        f = root / CONFIG_FILE
        stages: dict[str, Any] = {}
        resumed = f.exists()
        if resumed:
            old = _read(f)
            if old.get("kind") != kind or old.get("config_version") != CONFIG_VERSION:
                raise ConfigError(
                    f"{root} holds a '{old.get('kind')}' folder of config version {old.get('config_version')}; "
                    f"this '{kind}' needs version {CONFIG_VERSION}: choose a new folder (older runs are not reinterpreted)")
            diff = resume_diff(type(cfg), old.get("config", {}), cfg)
            diff += [k for k in check_extra if old.get("extra", {}).get(k) != extra.get(k)]
            if diff:
                raise ConfigError(f"{root} was started with other settings ({', '.join(diff)}); "
                                  "use the same options to resume or choose a new folder")
            stages = old.get("stages", {})
        elif root.exists() and any(root.iterdir()):
            raise ConfigError(f"{root} exists and is not a '{kind}' run folder; choose a new folder")
        rd = cls(root, kind, cfg, extra, stages, resumed)
        if resumed:
            rd._write()
        else:
            # A new folder appears by one rename with its config.json inside,
            # so a kill -9 while it is made never leaves a folder that is
            # neither empty nor a run folder (the same command starts it again).
            atomic_dir(root, lambda tmp: atomic_write_json(tmp / CONFIG_FILE, rd._doc()))
        return rd

    def _doc(self) -> dict[str, Any]:
        return {"config_version": CONFIG_VERSION, "kind": self.kind, "config": to_dict(self.config),
                "extra": self.extra, "stages": self.stages}

    def _write(self) -> None:
        atomic_write_json(self.root / CONFIG_FILE, self._doc())

    def rel(self, path: str | Path) -> str:
        """``path`` relative to the run folder (stored so the folder can move)."""
        return os.path.relpath(Path(path), self.root)

    def path(self, rel: str | Path) -> Path:
        return self.root / rel

    def done(self, stage: str) -> bool:
        return stage in self.stages

    def finish(self, stage: str, info: dict[str, Any]) -> None:
        """Record ``stage`` as finished with ``info`` (paths in it relative)."""
        self.stages[stage] = {**info, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self._write()


def _read(f: Path) -> dict[str, Any]:
    return read_json_object(f, ConfigError, "it is not a run configuration; choose a new folder")
