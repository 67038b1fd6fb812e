"""The ``analyze`` command: each layer's role, in figures and pictures, and
what evolution did to each layer.

It measures a checkpoint with ``analysis.analyze_model`` (see that module
for every figure and its definition) on held-out images by default, and
draws, in one HTML page and as PNG files: conv1's filters, activation maps
of chosen layers and class-activation maps from conv10 (the classifier: a
map per class; Captum's ``LayerGradCam``, which for conv10 followed by
global average pooling is that class's map, Zhou et al. 2016) over real
images, per-layer bars and sensitivity curves. This answers the questions
of the research note on SqueezeNet's layer roles
(``squeezenet-layer-roles.txt``) for the SquishedNets ancestor.

Given an evolve run (or a ``run`` folder), it analyses the ancestor and
sets the filters each generation kept per layer (the report's heat map)
beside each layer's importance, with Spearman's rank correlation between the
ancestor's importance and the share of filters the final generation kept.
"""

from __future__ import annotations

import base64
import html
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .analysis import (DEFINITIONS, Analysis, AnalyzeConfig, LayerAnalysis, analyze_model, spearman, spearman_p,
                       unit_conv)
from .checkpoint import Checkpoint, load_checkpoint, resolve_checkpoint
from .config import to_dict
from .data import load_split, load_splits, normalize_batch, test_split_name
from .errors import CheckpointError, ConfigError, DataError
from .io import atomic_write_bytes, atomic_write_json, atomic_write_text
from .model import SqueezeNet, fold_batchnorm
from .records import LINEAGE_FILE, Lineage
from .report import draw_filters_kept, figure_png, filters_kept
from .train import TrainConfig, set_threads, train_config_of

__all__ = ["Target", "resolve_target", "analysis_images", "lineage_comparison", "analyze_target", "summary"]

log = logging.getLogger(__name__)
EXTRA_HINT = "install it with pip install -e '.[analyze]' (or bash scripts/setup.sh analyze), or pass --no-pictures"


@dataclass(frozen=True)
class Target:
    """What ``analyze TARGET`` resolved to: the checkpoint it analyses, the
    evolve folder when there is a lineage, and the default output folder."""

    checkpoint: Path
    evolve: Path | None
    out: Path


def resolve_target(target: str | Path) -> Target:
    """A checkpoint or training run folder, an evolve folder (``lineage.json``:
    its generation 0) or a ``run`` folder (``evolve/lineage.json``, else the
    ``ancestor`` checkpoint alone while evolution has not finished)."""
    p = Path(target)
    for evolve in (p, p / "evolve"):
        if (evolve / LINEAGE_FILE).is_file():
            lineage = Lineage.load(evolve)
            return Target(resolve_checkpoint(evolve / lineage.generations[0].path), evolve, p / "analyze")
    if (p / "ancestor").is_dir():
        log.warning("%s has no evolve/lineage.json yet: analysing the ancestor alone", p)
        return Target(resolve_checkpoint(p / "ancestor"), None, p / "analyze")
    ck = resolve_checkpoint(p)
    return Target(ck, None, (p if ck != p else p.parent) / "analyze")


def analysis_images(ck: Checkpoint, cfg: AnalyzeConfig,
                    progress: bool = False) -> tuple[torch.Tensor, torch.Tensor, list[str], str, str, int]:
    """(uint8 images, labels, classes, split, data folder, size): up to
    ``cfg.images`` of the part held out of the checkpoint's training folder
    (its holdout and split seed), or of the test split, a seeded subset."""
    try:
        tcfg, classes = train_config_of(ck)
    except CheckpointError:  # no training record (a bare design): the data and size must be given
        if cfg.data is None or cfg.image_size is None:
            raise ConfigError(f"{ck.path} records no training data or size; pass --data and --image-size") from None
        tcfg, classes = TrainConfig(data=cfg.data, image_size=cfg.image_size), None  # the default held-out split
    root, size = cfg.data or tcfg.data, cfg.image_size or tcfg.image_size
    holdout, split_seed = tcfg.holdout, tcfg.split_seed
    if cfg.split == "heldout":
        if not holdout:
            raise DataError(f"{ck.path} was trained with no held-out part, so there are no held-out images; "
                            "pass --split test to analyse on the test split (reported only)")
        s = load_splits(root, size, holdout, split_seed, cfg.cache_dir, progress=progress).heldout
    else:
        s = load_split(root, test_split_name(root, cfg.cache_dir), size, cfg.cache_dir, progress=progress)
    if classes is not None and s.classes != classes:
        raise DataError(f"the data's classes {s.classes[:3]}... differ from the checkpoint's {classes[:3]}...; "
                        "pass --data with the same class folders")
    if len(s) == 0:
        raise DataError(f"the {cfg.split} split of {root} holds no images; pass --data with images")
    if len(s) < cfg.folds:
        # Error bars come from disjoint folds: an empty fold would make them NaN.
        raise DataError(f"the {cfg.split} split of {root} holds {len(s)} images, fewer than --folds {cfg.folds}; "
                        f"pass --folds {max(2, len(s))} or more images")
    idx = torch.arange(len(s))
    if len(s) > cfg.images:
        idx = torch.randperm(len(s), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.images].sort().values
    return s.images[idx], s.labels[idx], s.classes, cfg.split, str(root), size


# -- across a lineage ----------------------------------------------------------------
def lineage_comparison(evolve: Path, analysis: Analysis, seed: int = 0) -> dict[str, Any]:
    """Filters kept per layer per generation, the final generation's kept
    share beside the ancestor's importance per removable layer, and their
    Spearman correlation (with a permutation p-value)."""
    lineage = Lineage.load(evolve)
    gens = lineage.generations
    kept = filters_kept(evolve, gens)
    rows = []
    for la in analysis.layers:
        widths = kept.get(la.layer)
        if la.kind == "classifier" or not widths or not widths[0]:
            continue  # conv10's filters are the classes: evolution never removes them
        final = widths[-1] or 0  # a layer a generation lost entirely kept nothing
        rows.append({"layer": la.layer, "ancestor_filters": widths[0], "final_filters": final,
                     "kept_fraction": final / widths[0], "importance": la.ablation_drop,
                     "importance_se": la.ablation_drop_se, "apoz": la.apoz, "dead_weight_share": la.dead_weight_share})
    imp, frac = [r["importance"] for r in rows], [r["kept_fraction"] for r in rows]
    apoz = [r["apoz"] for r in rows]
    return {
        "evolve": str(evolve), "generations": [g.generation for g in gens],
        "size_mb": [g.size_mb for g in gens], "heldout_top1": [g.heldout_top1 for g in gens],
        "final_generation": gens[-1].generation, "filters_kept": kept, "layers": rows,
        "importance": "the ancestor's ablation_drop: mean held-out top-1 drop over the ablated fractions",
        "spearman_importance_vs_kept": spearman(imp, frac), "spearman_p": spearman_p(imp, frac, seed=seed),
        "spearman_apoz_vs_kept": spearman(apoz, frac), "spearman_layers": len(rows),
    }


# -- pictures ----------------------------------------------------------------------------
def _check_extras() -> None:
    try:  # the pictures' optional extra, checked before minutes of measuring
        import captum  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"analyze draws its pictures with {e.name}, which is not installed; {EXTRA_HINT}") from None


def _plot_stem(plt: Any, weight: torch.Tensor) -> str:
    """conv1's filters as small images, each scaled to its own range (their
    scales differ by orders of magnitude once BN is folded in)."""
    w = weight.detach().float()
    cols = min(8, len(w))
    rows = -(-len(w) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9, rows * 0.9 + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for f, ax in zip(w, axes.flat):
        img = f.permute(1, 2, 0) if f.shape[0] == 3 else f.mean(0, keepdim=True).permute(1, 2, 0)
        img = (img - img.min()) / (img.max() - img.min() + 1e-12)
        ax.imshow(img.numpy().squeeze(), cmap=None if img.shape[-1] == 3 else "gray", interpolation="nearest")
    fig.suptitle("conv1 filters (BN folded, each scaled to its own range)", fontsize=9)
    return figure_png(fig)


def _show(ax: Any, image_u8: torch.Tensor, title: str | None = None) -> None:
    ax.imshow(image_u8.permute(1, 2, 0).numpy())
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=7)


def _map_layers(analysis: Analysis) -> list[LayerAnalysis]:
    """conv1, the first squeeze and the widest-seeing expand of the middle and last Fires."""
    fires = [la for la in analysis.layers if la.kind.startswith("expand")]
    last_of = {la.stage: la for la in fires}  # expand3x3 follows expand1x1 in a stage
    stages = sorted(last_of)
    picks = [analysis.layers[0], next(la for la in analysis.layers if la.kind == "squeeze")]
    picks += [last_of[stages[len(stages) // 2]], last_of[stages[-1]]]
    return list(dict.fromkeys(picks))


@torch.no_grad()
def _plot_maps(plt: Any, model: SqueezeNet, analysis: Analysis, images: torch.Tensor) -> str:
    """Each chosen layer's mean activation over its channels, at its own
    resolution: what each stage still sees of the image."""
    layers = _map_layers(analysis)
    units = {u.name: u for u in model.genome.units()}
    maps: dict[str, torch.Tensor] = {}
    handles = [model.get_submodule(units[la.layer].module).register_forward_hook(
        lambda _m, _i, out, name=la.layer: maps.__setitem__(name, out.mean(1))) for la in layers]
    try:
        model(normalize_batch(images))
    finally:
        for h in handles:
            h.remove()
    fig, axes = plt.subplots(len(images), len(layers) + 1, figsize=(1.8 * (len(layers) + 1), 1.8 * len(images)),
                             squeeze=False)
    for r, img in enumerate(images):
        _show(axes[r, 0], img, "image" if r == 0 else None)
        for c, la in enumerate(layers, 1):
            axes[r, c].imshow(maps[la.layer][r].numpy(), cmap="magma", interpolation="nearest")
            axes[r, c].axis("off")
            if r == 0:
                axes[r, c].set_title(f"{la.layer}\n{la.out_hw}px, RF {la.receptive_field}", fontsize=7)
    return figure_png(fig)


def _plot_cams(plt: Any, model: SqueezeNet, images: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> str:
    """Class-activation maps of the predicted and the true class, from conv10, over the images."""
    from captum.attr import LayerAttribution, LayerGradCam  # optional extra: only the pictures need it

    x = normalize_batch(images)
    with torch.no_grad():
        pred = model(x).argmax(1)
    cam = LayerGradCam(model, model.conv10)
    fig, axes = plt.subplots(len(images), 3, figsize=(6, 2 * len(images)), squeeze=False)
    for c, (target, what) in enumerate(((pred, "predicted"), (labels, "true")), 1):
        attr = cam.attribute(x, target=target, relu_attributions=True)
        up = LayerAttribution.interpolate(attr, tuple(images.shape[-2:]), "bilinear").detach()[:, 0]
        for r in range(len(images)):
            _show(axes[r, c], images[r], f"{what}: {classes[int(target[r])]}")
            axes[r, c].imshow(up[r].numpy(), cmap="jet", alpha=0.45)
    for r in range(len(images)):
        _show(axes[r, 0], images[r], f"image ({classes[int(labels[r])]})")
    fig.suptitle("conv10 class-activation maps (Captum LayerGradCam)", fontsize=9)
    return figure_png(fig)


def _plot_bars(plt: Any, analysis: Analysis) -> str:
    layers = analysis.layers
    names = [la.layer for la in layers]
    panels = (("share of params", [la.param_share for la in layers], None),
              ("share of MACs", [la.mac_share for la in layers], None),
              ("share of ORT time", [la.time_share or 0 for la in layers], None),
              ("importance: top-1 drop", [la.ablation_drop for la in layers], [la.ablation_drop_se for la in layers]))
    fig, axes = plt.subplots(1, 4, figsize=(13, 0.22 * len(names) + 1.5), sharey=True)
    for ax, (title, values, err) in zip(axes, panels):
        ax.barh(range(len(names)), values, xerr=err, color="tab:blue" if err is None else "tab:red")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_yticks(range(len(names)))
    axes[0].set_yticklabels(names, fontsize=7)
    axes[0].invert_yaxis()
    return figure_png(fig)


def _plot_sensitivity(plt: Any, analysis: Analysis) -> str:
    kinds = list(dict.fromkeys(la.kind for la in analysis.layers))
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.6 * len(kinds), 3.4), sharey=True, squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for la in (la for la in analysis.layers if la.kind == kind):
            xs = [0.0] + [s.fraction for s in la.sensitivity]
            ys = [analysis.top1 * 100] + [s.top1 * 100 for s in la.sensitivity]
            ax.errorbar(xs, ys, yerr=[0.0] + [s.drop_se * 100 for s in la.sensitivity], marker="o", ms=3,
                        capsize=2, label=la.layer)
        ax.set_title(kind, fontsize=9)
        ax.set_xlabel("fraction of filters zeroed (weakest first)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    axes[0, 0].set_ylabel(f"{analysis.split} top-1 (%)")
    return figure_png(fig)


def _plot_lineage(plt: Any, evolve: Path, analysis: Analysis, lineage: dict[str, Any]) -> str:
    """The report's heat map beside each layer's importance in the ancestor."""
    kept = lineage["filters_kept"]
    gens = Lineage.load(evolve).generations
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(max(6.4, 0.32 * len(gens) + 2.5) + 3.5, 0.2 * len(kept) + 1.8),
                                 gridspec_kw={"width_ratios": [3, 1]})
    draw_filters_kept(fig, ax, gens, kept)
    drops = {la.layer: la for la in analysis.layers}
    names = list(kept)
    bx.barh(range(len(names)), [drops[n].ablation_drop if n in drops else 0 for n in names],
            xerr=[drops[n].ablation_drop_se if n in drops else 0 for n in names], color="tab:red")
    bx.set_ylim(ax.get_ylim())
    bx.set_yticks([])
    bx.set_title("ancestor importance\n(top-1 drop)", fontsize=9)
    rho = lineage["spearman_importance_vs_kept"]
    fig.suptitle(f"Spearman(importance, kept at gen {lineage['final_generation']}) = "
                 f"{'n/a' if rho is None else format(rho, '.2f')}", fontsize=9)
    return figure_png(fig)


def _pictures(model: SqueezeNet, analysis: Analysis, images: torch.Tensor, labels: torch.Tensor,
              classes: list[str], target: Target, lineage: dict[str, Any] | None) -> dict[str, str]:
    import matplotlib  # optional at import time: only the pictures need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = {"stem_filters": _plot_stem(plt, unit_conv(model, model.genome.units()[0]).weight),
            "activation_maps": _plot_maps(plt, model, analysis, images),
            "class_activation_maps": _plot_cams(plt, model, images, labels, classes),
            "layer_bars": _plot_bars(plt, analysis), "sensitivity": _plot_sensitivity(plt, analysis)}
    if lineage is not None and target.evolve is not None:
        figs["lineage"] = _plot_lineage(plt, target.evolve, analysis, lineage)
    return figs


def _picture_images(images: torch.Tensor, labels: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images of as many different classes as there are, the first of each."""
    first = {}
    for i, y in enumerate(labels.tolist()):
        first.setdefault(y, i)
    taken = set(first.values())
    idx = (list(first.values()) + [i for i in range(len(labels)) if i not in taken])[:n]
    return images[idx], labels[idx]


# -- the page ----------------------------------------------------------------------------
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>SquishedNets analysis: {title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.82em; margin: 0.5em 0 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 2px 6px; text-align: right; }} td {{ white-space: nowrap; }}
td:first-child, th:first-child {{ text-align: left; }}
figure {{ margin: 1em 0; }} img {{ max-width: 100%; }} dt {{ font-weight: 600; }}
</style></head>
<body data-images-ok="pending">
<h1>Layer roles: {title}</h1>
{body}
<script>
// Records how many pictures decoded, for readers and for the browser test.
window.addEventListener("load", function () {{ var all = Array.from(document.images);
  var ok = all.filter(function (i) {{ return i.complete && i.naturalWidth > 0; }});
  document.body.setAttribute("data-images-ok", ok.length + "/" + all.length); }});
</script>
</body></html>
"""

_CAPTIONS = {
    "stem_filters": "conv1's filters (the stem), BN folded",
    "activation_maps": "Mean activation of chosen layers over real held-out images, at each layer's resolution",
    "class_activation_maps": "conv10 class-activation maps (conv10 is the classifier: one map per class)",
    "layer_bars": "Per layer: share of parameters, MACs, ONNX Runtime time, and importance (mean top-1 drop, "
                  "with its standard error over the folds)",
    "sensitivity": "Sensitivity: top-1 against the fraction of a layer's filters zeroed, weakest L1 first",
    "lineage": "Filters kept per layer per generation, beside each layer's importance in the ancestor",
}


def _f(v: Any, spec: str = ".3f", scale: float = 1.0) -> str:
    return "—" if v is None else format(v * scale, spec)


def _table(headers: list[str], rows: list[list[str]], table_id: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>'


_LAYER_COLUMNS: list[tuple[str, Any]] = [
    ("layer", lambda la: la.layer), ("in→out", lambda la: f"{la.cin}→{la.cout}"),
    ("k/s", lambda la: f"{la.kernel}/{la.stride}"), ("out px", lambda la: str(la.out_hw)),
    ("RF px", lambda la: str(la.receptive_field)), ("params", lambda la: f"{la.params:,}"),
    ("MACs", lambda la: f"{la.macs:,}"), ("act KB", lambda la: f"{la.activation_kb:.1f}"),
    ("params %", lambda la: _f(la.param_share, ".1f", 100)), ("MACs %", lambda la: _f(la.mac_share, ".1f", 100)),
    ("time %", lambda la: _f(la.time_share, ".1f", 100)), ("L1 median", lambda la: _f(la.l1_quantiles[2], ".3g")),
    ("near-dead %", lambda la: _f(la.dead_weight_share, ".0f", 100)),
    ("W eff. rank", lambda la: f"{la.weight_effective_rank:.1f}/{la.weight_rank_limit}"),
    ("3x3 strength %", lambda la: _f(la.strength_3x3_share, ".0f", 100)),
    ("3x3 output %", lambda la: _f(la.output_3x3_share, ".0f", 100)),
    ("APoZ", lambda la: f"{la.apoz:.2f}"), ("mean", lambda la: f"{la.act_mean:.3g}"),
    ("var", lambda la: f"{la.act_var:.3g}"), ("act eff. rank", lambda la: f"{la.effective_rank:.1f}"),
    ("input eff. rank", lambda la: _f(la.input_effective_rank, ".1f")),
    ("drop % ± se", lambda la: f"{la.ablation_drop * 100:.1f} ± {la.ablation_drop_se * 100:.1f}"),
    ("one-filter drop % (mean, max)", lambda la: "—" if la.filter_drops is None else
     f"{np.mean(la.filter_drops) * 100:.2f}, {max(la.filter_drops) * 100:.1f}"),
]


def _fires_table(analysis: Analysis) -> str:
    rows = [[fa.fire, str(fa.squeeze), f"{fa.input_effective_rank:.1f}", f"{fa.squeeze_effective_rank:.1f}",
             _f(fa.squeeze_rank_use, ".2f"), fa.role, _f(fa.strength_3x3_share, ".0f", 100),
             _f(fa.output_3x3_share, ".0f", 100),
             "—" if fa.bypass_drop is None else f"{fa.bypass_drop * 100:.1f} ± {fa.bypass_drop_se * 100:.1f}"]
            for fa in analysis.fires]
    return _table(["Fire", "squeeze filters", "input eff. rank", "squeeze eff. rank", "rank use", "role",
                   "3x3 strength %", "3x3 output %", "bypass drop % ± se"], rows, "fires")


def _lineage_html(lineage: dict[str, Any] | None) -> str:
    if lineage is None:
        return ""
    rows = [[r["layer"], str(r["ancestor_filters"]), str(r["final_filters"]), f"{r['kept_fraction'] * 100:.0f}",
             f"{r['importance'] * 100:.1f} ± {r['importance_se'] * 100:.1f}", f"{r['apoz']:.2f}"]
            for r in lineage["layers"]]
    rho, p = lineage["spearman_importance_vs_kept"], lineage["spearman_p"]
    line = (f"Spearman rank correlation between the ancestor's importance and the share of filters generation "
            f"{lineage['final_generation']} kept, over {lineage['spearman_layers']} layers: "
            f"{_f(rho, '.2f')} (permutation p = {_f(p, '.3g')}); APoZ against kept: "
            f"{_f(lineage['spearman_apoz_vs_kept'], '.2f')}.")
    return (f"<h2>What evolution did to each layer</h2><p id=\"spearman\">{html.escape(line)}</p>"
            + _table(["layer", "ancestor filters", "final filters", "kept %", "importance % ± se", "APoZ"], rows,
                     "lineage"))


def _page(doc: dict[str, Any], analysis: Analysis, lineage: dict[str, Any] | None, figs: dict[str, str]) -> str:
    split = "held-out" if analysis.split == "heldout" else "test (reported only)"
    intro = (f"{analysis.genome} at {analysis.image_size} px, {analysis.images} {split} images of "
             f"{doc['data']} (top-1 {analysis.top1 * 100:.1f}% before any ablation); ONNX Runtime times at batch "
             f"{analysis.ort_batch} on this CPU ({analysis.ort_ms_per_batch:.1f} ms per batch); "
             f"analysis took {doc['wall_s']:.0f} s.")
    defs = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in DEFINITIONS.items())
    rows = [[fn(la) for _, fn in _LAYER_COLUMNS] for la in analysis.layers]
    figures = "\n".join(f'<figure><img id="{k}" alt="{html.escape(_CAPTIONS[k])}" src="data:image/png;base64,{v}">'
                        f"<figcaption>{html.escape(_CAPTIONS[k])}</figcaption></figure>" for k, v in figs.items())
    body = (f"<p>{html.escape(intro)}</p><h2>Every layer</h2>"
            + _table([h for h, _ in _LAYER_COLUMNS], rows, "layers") + "<h2>Fire modules</h2>"
            + _fires_table(analysis) + _lineage_html(lineage) + f"<h2>Pictures</h2>{figures}"
            + f"<h2>Definitions</h2><dl>{defs}</dl>")
    return _PAGE.format(title=html.escape(f"{analysis.genome} ({doc['checkpoint']})"), body=body)


# -- the command ----------------------------------------------------------------------------
def analyze_target(target: str | Path, cfg: AnalyzeConfig, out: str | Path | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Analyse ``target`` (see ``resolve_target``) and write ``analysis.json``
    (every figure), and with ``cfg.pictures`` the PNGs and ``analysis.html``,
    to ``out`` (default: TARGET/analyze, or beside a checkpoint folder).
    Returns the JSON document with the paths written."""
    t0 = time.perf_counter()
    tgt = resolve_target(target)
    if cfg.pictures:
        _check_extras()
    set_threads(cfg.threads)
    ck = load_checkpoint(tgt.checkpoint)
    images, labels, classes, split, root, _ = analysis_images(ck, cfg, progress)
    analysis = analyze_model(ck.model, images, labels, cfg, split, progress)
    lineage = lineage_comparison(tgt.evolve, analysis, cfg.seed) if tgt.evolve is not None else None
    out = Path(out) if out else tgt.out
    doc = {"target": str(target), "checkpoint": str(tgt.checkpoint), "data": root, "classes": classes,
           "config": to_dict(cfg), **analysis.to_dict(), "lineage": lineage}
    figs: dict[str, str] = {}
    if cfg.pictures:
        pics = _picture_images(images, labels, cfg.picture_images)
        figs = _pictures(fold_batchnorm(ck.model).eval(), analysis, *pics, classes, tgt, lineage)
    doc["wall_s"] = time.perf_counter() - t0
    files = {"json": out / "analysis.json"}
    if cfg.pictures:
        for name, b64 in figs.items():  # also as files, for READMEs and slides
            files[name] = out / f"{name}.png"
            atomic_write_bytes(files[name], base64.b64decode(b64))
        files["html"] = out / "analysis.html"
        atomic_write_text(files["html"], _page(doc, analysis, lineage, figs))
    doc["files"] = {k: str(v) for k, v in files.items()}
    atomic_write_json(files["json"], doc)
    return doc


def summary(doc: dict[str, Any]) -> str:
    """The command's text output: one line per layer, the Fires, the lineage's correlation."""
    lines = [f"{doc['genome']} at {doc['image_size']} px on {doc['images']} {doc['split']} images: top-1 "
             f"{doc['top1'] * 100:.1f}%; {doc['wall_s']:.0f} s",
             f"{'layer':<18}{'params%':>8}{'MACs%':>7}{'time%':>7}{'APoZ':>6}{'erank':>7}{'3x3%':>6}{'drop%':>7}"
             f"{'±':>5}"]
    for la in doc["layers"]:
        lines.append(f"{la['layer']:<18}{la['param_share'] * 100:>8.1f}{la['mac_share'] * 100:>7.1f}"
                     f"{_f(la['time_share'], '.1f', 100):>7}{la['apoz']:>6.2f}{la['effective_rank']:>7.1f}"
                     f"{_f(la['strength_3x3_share'], '.0f', 100):>6}{la['ablation_drop'] * 100:>7.1f}"
                     f"{la['ablation_drop_se'] * 100:>5.1f}")
    lines += [f"{fa['fire']}: squeeze {fa['squeeze']} vs input effective rank {fa['input_effective_rank']:.1f}: "
              f"{fa['role']}" for fa in doc["fires"]]
    lin = doc.get("lineage")
    if lin:
        lines.append(f"Spearman(importance, kept at gen {lin['final_generation']}) = "
                     f"{_f(lin['spearman_importance_vs_kept'], '.2f')} over {lin['spearman_layers']} layers "
                     f"(permutation p {_f(lin['spearman_p'], '.3g')})")
    lines += [f"{k}: {v}" for k, v in doc["files"].items() if k in ("json", "html")]
    return "\n".join(lines)
