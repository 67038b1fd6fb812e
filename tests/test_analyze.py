"""Layer analysis: the metrics on hand-built networks with known answers,
per-layer costs that sum to the closed-form totals, the command on tiny
checkpoints and lineages, and the HTML page in a real browser."""

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import make_folder
from squishednets.analysis import (AnalyzeConfig, _Moments, activation_stats, analyze_model, effective_rank,
                                   matrix_effective_rank, receptive_fields, spearman, spearman_p, stage_chain)
from squishednets.analyze import analyze_target, resolve_target
from squishednets.checkpoint import load_checkpoint, save_checkpoint
from squishednets.cli import main
from squishednets.errors import ConfigError, DataError
from squishednets.genome import FireSpec, Genome, StemSpec, get_genome, squeezenet_design
from squishednets.metrics import profile
from squishednets.model import build, fold_batchnorm
from squishednets.records import GenerationRecord, Lineage
from squishednets.train import TrainConfig, checkpoint_config

SIZE = 32
FAST = dict(folds=2, profile_runs=2, profile_batch=2, threads=1, batch_size=16)


@pytest.fixture(autouse=True)
def _one_thread():
    # Hundreds of forward passes on tiny tensors: with two threads on a busy
    # two-core machine, OpenMP's waiting makes each convolution 30x slower.
    torch.set_num_threads(1)


def _hand_built() -> torch.nn.Module:
    """conv1 (4 filters, filter 0 dead: zero weights, negative bias), fire2
    whose squeeze is the 4x4 identity, fire3 with as many inputs as outputs
    (so it can be bypassed), 3 classes, no BatchNorm."""
    g = Genome(name="hand", num_classes=3, stem=StemSpec(4, 3, 2, 1),
               fires=(FireSpec(4, 4, 4), FireSpec(4, 4, 4)), pool_after=(0,))
    torch.manual_seed(0)
    model = build(g).eval()
    with torch.no_grad():
        model.conv1.conv.weight[0] = 0
        model.conv1.conv.bias[0] = -1.0
        model.fires[0].squeeze.conv.weight.copy_(torch.eye(4)[:, :, None, None])
        model.fires[0].squeeze.conv.bias.zero_()
        model.conv10.weight.normal_(0, 0.5)
    return model


def _images(n: int, classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=g),
            torch.arange(n) % classes)


def test_effective_rank_definition():
    assert effective_rank(np.ones(7)) == pytest.approx(7)
    assert matrix_effective_rank(np.eye(5)) == pytest.approx(5)  # an identity has full effective rank
    assert matrix_effective_rank(np.outer(np.arange(1, 5), np.arange(1, 4))) == pytest.approx(1, abs=1e-6)
    assert effective_rank(np.zeros(3)) == 0.0
    m = _Moments(6)  # independent channels of equal variance carry information in every channel
    m.add(torch.randn(40, 6, 8, 8, generator=torch.Generator().manual_seed(0)))
    assert m.summary()["effective_rank"] > 5.8


def test_spearman_known_values_and_ties():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1)
    # Pearson on mid-ranks, worked by hand: ranks of y are 1, 2, 3.5, 5, 3.5.
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(0.8207826816681234)
    assert spearman([1, 2], [1, 2]) is None and spearman([1, 1, 1], [1, 2, 3]) is None
    assert spearman_p(range(12), range(12)) < 0.001
    assert spearman_p([1, 2, 3, 4, 5], [2, 1, 4, 3, 5], seed=1) > 0.05


def test_receptive_fields_and_resolution_of_squeezenet11():
    rf = receptive_fields(get_genome("squeezenet1_1", 10))
    assert rf["conv1"] == (3, 2)
    assert rf["fire2.squeeze"] == (7, 4) and rf["fire2.expand1x1"] == (7, 4) and rf["fire2.expand3x3"] == (15, 4)
    assert rf["fire3.squeeze"] == (15, 4) and rf["fire4.squeeze"] == (31, 8)
    assert rf["fire9.expand3x3"] == (207, 16) and rf["conv10"] == (207, 16)


def test_receptive_fields_of_a_depthwise_branch():
    """The depthwise 3x3 widens the field as a dense 3x3 would; its pointwise 1x1 keeps it."""
    rf = receptive_fields(get_genome("squeezenet1_1", 10).replace(depthwise=True, groups=2))
    assert rf["fire2.squeeze"] == (7, 4)
    assert rf["fire2.expand3x3_dw"] == rf["fire2.expand3x3"] == (15, 4) and rf["fire2.expand1x1"] == (7, 4)
    assert rf["fire9.expand3x3"] == (207, 16) and rf["conv10"] == (207, 16)


def test_stage_chain_is_the_forward_pass():
    model = fold_batchnorm(build(get_genome("squeezenet1_1", 5).scaled(0.125).replace(batchnorm=True)))
    x = torch.randn(3, 3, SIZE, SIZE)
    y = x
    for fn in stage_chain(model):
        y = fn(y)
    assert torch.equal(y, model(x))


def test_metrics_on_a_hand_built_network():
    model = _hand_built()
    images, labels = _images(24)
    cfg = AnalyzeConfig(images=24, per_filter_max=8, fractions=(0.25, 1.0), **FAST)
    acts = activation_stats(model, model.genome.units(SIZE), images, 16)
    assert acts["conv1"]["channel_apoz"][0] == 1.0  # the dead filter never fires
    a = analyze_model(model, images, labels, cfg)
    conv1, squeeze = a.layer("conv1"), a.layer("fire2.squeeze")
    assert conv1.filter_drops[0] == 0.0 and conv1.filter_drops_se[0] == 0.0  # ... and removing it changes nothing
    assert conv1.dead_channel_share >= 0.25 and conv1.dead_weight_share >= 0.25
    assert squeeze.weight_effective_rank == pytest.approx(4) and squeeze.weight_rank_limit == 4
    assert [s.fraction for s in squeeze.sensitivity] == [0.25, 1.0]
    assert a.layer("fire2.expand1x1").strength_3x3_share == a.layer("fire2.expand3x3").strength_3x3_share
    fires = {f.fire: f for f in a.fires}
    assert fires["fire2"].bypass_drop is None and fires["fire3"].bypass_drop is not None  # 4 -> 8 channels vs 8 -> 8
    json.dumps(a.to_dict())


def test_per_layer_costs_sum_to_the_closed_form_totals():
    genome = get_genome("squeezenet1_1", 3).scaled(0.125).replace(batchnorm=True)
    images, labels = _images(8)
    a = analyze_model(build(genome).eval(), images, labels, AnalyzeConfig(images=8, per_filter_max=None, **FAST))
    prof = profile(genome, SIZE)
    assert sum(la.params for la in a.layers) == prof.params
    assert sum(la.macs for la in a.layers) == prof.macs
    assert sum(la.param_share for la in a.layers) == pytest.approx(1)
    # Every convolution, conv10 included, is found in ONNX Runtime's profile.
    assert all(la.time_ms is not None and la.time_ms >= 0 for la in a.layers)
    assert 0 < sum(la.time_share for la in a.layers) <= 1
    assert [la.layer for la in a.layers] == [u.name for u in genome.units()]


@pytest.mark.parametrize("genome", [
    squeezenet_design(pct3x3=1.0, width_multiplier=0.125, num_classes=3, batchnorm=True, name="all3x3"),
    squeezenet_design(pct3x3=0.0, sr=0.25, width_multiplier=0.125, num_classes=5, name="all1x1"),
    get_genome("squeezenet1_0", 4).scaled(0.1),
    squeezenet_design(width_multiplier=0.125, num_classes=3, groups=2, depthwise=True, batchnorm=True,
                      pool_strategy="even", name="grouped_depthwise"),
], ids=lambda g: g.name)
def test_any_genome(genome):
    images, labels = _images(6, genome.num_classes)
    a = analyze_model(build(genome).eval(), images, labels, AnalyzeConfig(images=6, per_filter_max=None, **FAST))
    assert [la.layer for la in a.layers] == [u.name for u in genome.units()]
    shares = {la.strength_3x3_share for la in a.layers if la.kind.startswith("expand")}
    if genome.name in ("all3x3", "all1x1"):
        assert shares == ({1.0} if genome.name == "all3x3" else {0.0})
    else:  # both kinds present: each Fire splits its strength between them
        assert all(0 < x < 1 for x in shares)
    assert len(a.fires) == len(genome.fires)


def _checkpoint(path, data, genome, holdout=0.34):
    torch.manual_seed(0)
    cfg = TrainConfig(data=str(data), image_size=SIZE, holdout=holdout)
    return save_checkpoint(path, build(genome), config=checkpoint_config(cfg, ["a", "b", "c"]))


@pytest.fixture(scope="module")
def lineage_run(tmp_path_factory):
    """An evolve folder of three shrinking generations (untrained weights) whose ancestor records tiny data."""
    root = tmp_path_factory.mktemp("analyze")
    data = make_folder(root / "data", size=SIZE)
    ancestor = get_genome("squeezenet1_1", 3).scaled(0.125).replace(batchnorm=True)
    run, records = root / "ev", []
    for g, f in enumerate((1.0, 0.75, 0.6)):  # 0.6: layers keep unequal shares once rounded
        genome = ancestor.with_widths([max(1, round(w * f)) for w in ancestor.widths()])
        _checkpoint(run / f"gen_{g:02d}" / "model", data, genome)
        prof = profile(genome, SIZE)
        records.append(GenerationRecord(
            generation=g, name=genome.name, path=f"gen_{g:02d}/model", params=prof.params, size_mb=prof.size_mb,
            macs=prof.macs, widths=genome.widths(), heldout_top1=0.5, test_top1=0.5, test_top5=None,
            nonzero_params=prof.params, sparse_bytes=None, wall_s=1.0))
    Lineage(config={"data": str(data), "image_size": SIZE}, generations=records).save(run)
    return run


def test_analyze_a_checkpoint_through_the_cli(lineage_run, tmp_path, capsys):
    ck = lineage_run / "gen_01" / "model"
    assert resolve_target(ck).out == lineage_run / "gen_01" / "analyze"
    args = ["analyze", str(ck), "--out", str(tmp_path / "a"), "--folds", "2", "--threads", "1", "--profile-runs",
            "1", "--picture-images", "2", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "fire2.squeeze" in out and "analysis.html" in out
    doc = json.loads((tmp_path / "a" / "analysis.json").read_text())
    assert doc["split"] == "heldout" and doc["images"] == 6 and doc["lineage"] is None
    assert {"apoz", "effective_rank", "strength_3x3_share", "ablation_drop", "time_share"} <= set(doc["layers"][0])
    for name in ("stem_filters", "activation_maps", "class_activation_maps", "layer_bars", "sensitivity"):
        assert (tmp_path / "a" / f"{name}.png").stat().st_size > 1000
    assert main(args + ["--json", "--no-pictures", "--out", str(tmp_path / "b")]) == 0
    assert json.loads(capsys.readouterr().out)["layers"][-1]["layer"] == "conv10"
    assert not (tmp_path / "b" / "analysis.html").exists()


def test_analyze_a_lineage(lineage_run, tmp_path):
    doc = analyze_target(lineage_run, AnalyzeConfig(per_filter_max=None, **FAST), tmp_path / "l", progress=False)
    lin = doc["lineage"]
    assert doc["checkpoint"] == str(lineage_run / "gen_00" / "model")
    assert lin["generations"] == [0, 1, 2] and lin["filters_kept"]["conv1"][0] == 8
    rows = lin["layers"]
    assert "conv10" not in [r["layer"] for r in rows] and lin["spearman_layers"] == len(rows)
    # Kept fractions paired with the right layers, from the two genomes themselves.
    first, last = (load_checkpoint(lineage_run / g.path).genome.units() for g in
                   (Lineage.load(lineage_run).generations[0], Lineage.load(lineage_run).generations[-1]))
    want = {a.name: b.cout / a.cout for a, b in zip(first, last) if a.kind != "classifier"}
    assert {r["layer"]: r["kept_fraction"] for r in rows} == pytest.approx(want)
    assert len(set(want.values())) > 1  # the test lineage shrinks layers unevenly: a mix-up would show
    expected = spearman([r["importance"] for r in rows], [r["kept_fraction"] for r in rows])
    assert lin["spearman_importance_vs_kept"] == expected
    assert (tmp_path / "l" / "lineage.png").exists()
    assert 'id="spearman"' in (tmp_path / "l" / "analysis.html").read_text()


def test_errors_name_the_problem_and_the_fix(lineage_run, tmp_path, monkeypatch, capsys):
    data = make_folder(tmp_path / "data", size=SIZE)
    ck = _checkpoint(tmp_path / "ck", data, get_genome("squeezenet1_1", 3).scaled(0.125), holdout=None)
    with pytest.raises(DataError, match="--split test"):
        analyze_target(ck, AnalyzeConfig(pictures=False, **FAST), tmp_path / "o", progress=False)
    monkeypatch.setitem(sys.modules, "captum", None)  # as if the analyze extra were not installed
    with pytest.raises(ConfigError, match=r"\[analyze\]"):
        analyze_target(ck, AnalyzeConfig(**FAST), tmp_path / "o", progress=False)
    assert main(["analyze", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    with pytest.raises(ConfigError, match="fractions"):
        AnalyzeConfig(fractions=(0.0,))
    bare = save_checkpoint(tmp_path / "bare", build(get_genome("squeezenet1_1", 3).scaled(0.125)))  # no training record
    with pytest.raises(ConfigError, match="--data and --image-size"):
        analyze_target(bare, AnalyzeConfig(pictures=False, **FAST), tmp_path / "o", progress=False)
    doc = analyze_target(bare, AnalyzeConfig(data=str(data), image_size=SIZE, pictures=False, **FAST), tmp_path / "o",
                         progress=False)
    assert doc["split"] == "heldout" and doc["images"] == 3  # TrainConfig's default held-out share of 18 images


@pytest.mark.slow
def test_analysis_page_renders_in_a_real_browser(lineage_run, tmp_path):
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        pytest.skip("no chromium on this machine (scripts/test.sh installs Debian's chromium)")
    doc = analyze_target(lineage_run, AnalyzeConfig(per_filter_max=None, **FAST), tmp_path / "l", progress=False)
    flags = ("--headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking "
             "--disable-component-update --disable-sync --virtual-time-budget=5000 --dump-dom").split()
    page = (tmp_path / "l" / "analysis.html").resolve().as_uri()
    dom = subprocess.run([exe, *flags, f"--user-data-dir={tmp_path / 'profile'}", page], capture_output=True,
                         text=True, timeout=120).stdout
    pictures = re.search(r'data-images-ok="(\d+)/(\d+)"', dom)
    assert pictures, "the page's load handler did not run"
    # Every PNG of the page decoded (the files beside them are analysis.json and analysis.html).
    assert pictures.group(1) == pictures.group(2) == str(len(doc["files"]) - 2)
    assert dom.count("<tr") >= 1 + len(doc["layers"]) and "Spearman" in dom
    assert "bottleneck" in dom or "redundant" in dom


def test_too_few_images_for_the_folds_and_too_small_images_are_one_line_errors(lineage_run, tmp_path, capsys):
    ck = str(lineage_run / "gen_00" / "model")
    base = ["analyze", ck, "--no-pictures", "--threads", "1", "--no-progress"]
    assert main(base + ["--folds", "50", "--out", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert "fewer than --folds 50" in err and err.count("\n") == 1 and not (tmp_path / "f").exists()
    assert main(base + ["--split", "test", "--image-size", "16", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "too small for this genome" in err and err.count("\n") == 1
