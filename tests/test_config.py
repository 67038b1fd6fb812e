import argparse
import dataclasses
import json

import pytest

from squishednets.config import add_options, flag_values, from_dict, resolve, resume_diff, to_dict
from squishednets.errors import ConfigError
from squishednets.evolve import EvolveConfig
from squishednets.pipeline import PRESETS, RUN_FLAGS, RUN_SKIP, RunConfig
from squishednets.train import TrainConfig


def _parse(cls, argv, **kw):
    p = argparse.ArgumentParser()
    add_options(p, cls, **kw)
    return flag_values(p.parse_args(argv))


def test_round_trip_through_json():
    cfg = RunConfig()
    assert from_dict(RunConfig, json.loads(json.dumps(to_dict(cfg)))) == cfg


def test_unknown_and_mistyped_keys_are_errors():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['ancestor.epoch'\]"):
        from_dict(RunConfig, {"ancestor": {"epoch": 3}})
    with pytest.raises(ConfigError, match="'epochs' must be an integer"):
        from_dict(TrainConfig, {"epochs": "many"})
    with pytest.raises(ConfigError, match="'epochs' cannot be off"):
        from_dict(TrainConfig, {"epochs": None})


def test_flags_are_generated_with_aliases_that_set_several_fields():
    flags = _parse(RunConfig, ["--threads", "3", "--seed", "7", "--evolve-train-epochs", "4", "--lr", "0.2"],
                   aliases=RUN_FLAGS, skip=RUN_SKIP)
    cfg = resolve(RunConfig, flags=flags)
    assert cfg.ancestor.threads == cfg.evolve.train.threads == cfg.bench.threads == 3
    assert cfg.ancestor.seed == cfg.evolve.seed == 7 and cfg.evolve.train.epochs == 4 and cfg.ancestor.lr == 0.2


def test_off_turns_an_option_off_and_not_given_keeps_the_default():
    cfg = resolve(RunConfig, flags=_parse(RunConfig, ["--target-macs-reduction", "off"], aliases=RUN_FLAGS))
    assert cfg.evolve.target_macs_reduction is None
    assert resolve(RunConfig, flags=_parse(RunConfig, [], aliases=RUN_FLAGS)) == RunConfig()


def test_file_then_preset_then_flags(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"ancestor": {"epochs": 7, "image_size": 96, "lr": 0.3}}))
    flags = _parse(RunConfig, ["--lr", "0.05"], aliases=RUN_FLAGS)
    cfg = resolve(RunConfig, f, preset=PRESETS["paper"], flags=flags)
    # The file sets epochs and lr, the preset overrides epochs and size, the flag overrides lr.
    assert (cfg.ancestor.epochs, cfg.ancestor.image_size, cfg.ancestor.lr) == (90, 224, 0.05)


def test_each_default_lives_in_one_place():
    # The offspring's recipe is EvolveConfig's; the main job only sets its targets.
    assert RunConfig().evolve.train == EvolveConfig().train
    assert RunConfig().ancestor == TrainConfig()


def test_resume_diff_names_what_must_match_and_ignores_what_may_change():
    old = to_dict(RunConfig())
    new = dataclasses.replace(RunConfig(), ancestor=TrainConfig(threads=1, device="cpu", epochs=3))
    assert resume_diff(RunConfig, old, new) == ["ancestor.epochs"]
