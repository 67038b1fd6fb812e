"""The SquishedNets paper's Table 1 for any evolve run, as Markdown, CSV, JSON
and one self-contained HTML page with plots.

Table 1 of the paper lists four networks taken at four generations of one
evolutionary synthesis: name, model size, reduction in size against
SqueezeNet v1.1 and against AlexNet, images/s at batch 32 and top-1. Our
table has the ancestor and our SquishedNet-1…4 in those columns, then the
paper's four rows quoted as printed (``PAPER_TABLE1``). The two are measured
on different things: the paper's on ImageNet-10 at 224 px on an Nvidia Jetson
TX1, ours on the run's data at its image size on this machine's CPU; every row
says which (``source``, ``data``, ``resolution``, ``device``).

The lineage is read through ``records.Lineage``. Two accuracies travel with
each generation: held-out top-1 (a part of the training folder held out)
chooses, test top-1 (val or ``test/``) is reported only and never chooses.

Choosing SquishedNet-1…4 follows ``CHOICE_RULE``.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import html
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .checkpoint import GENOME, resolve_checkpoint
from .errors import SquishedError
from .genome import load_genome_file
from .io import atomic_write_bytes, atomic_write_json, atomic_write_text
from .metrics import ALEXNET_MB, SQUEEZENET11_MB
from .records import LINEAGE_FILE, SELECTED_BY, GenerationRecord, Lineage

__all__ = ["run_root", "compare_dir", "compare_section", "PaperRow", "PAPER_TABLE1", "PAPER_SETTING", "SELECTION_LINE", "TableRow", "pareto_front",
           "choose_squishednets", "build_table", "filters_kept", "draw_filters_kept", "figure_png", "write_report"]

# How the report names SquishedNet-1…4 (shown on the page as written here).
CHOICE_RULE = ("Among the evolved generations (the ancestor excluded), keep the Pareto-optimal ones (no other "
               "generation is both no larger and no less accurate on held-out top-1, and better in one); then, for "
               "four sizes spaced evenly in log scale from the largest to the smallest Pareto member, take the "
               "nearest member not taken yet. With four or fewer Pareto members, all are taken.")


@dataclass(frozen=True)
class PaperRow:
    """One row of the paper's Table 1, every figure as printed."""

    name: str
    size: str
    reduction_vs_squeezenet11: str
    reduction_vs_alexnet: str
    img_s_b32: str
    top1: str


# The SquishedNets paper, Table 1, as printed (not recomputed from the sizes:
# 4.94 MB / 2.4 MB would be 2.06×, the paper prints 2.04×).
PAPER_TABLE1 = (
    PaperRow("SquishedNet-1", "2.4MB", "2.04×", "100×", "156.09", "81.2%"),
    PaperRow("SquishedNet-2", "2.0MB", "2.45×", "120×", "174.86", "79.6%"),
    PaperRow("SquishedNet-3", "1.3MB", "3.77×", "184×", "225.35", "78.6%"),
    PaperRow("SquishedNet-4", "0.95MB", "5.17×", "253×", "256.00", "77.0%"),
)
# Where the paper's figures come from (its section 4).
PAPER_SETTING = {"source": "paper", "data": "ImageNet-10", "resolution": 224, "device": "Nvidia Jetson TX1"}
SELECTION_LINE = "SquishedNet-1…4 chosen by held-out top-1; test top-1 reported only."
_HELDOUT_MEANS = "top-1 on the part held out of the training folder: chooses SquishedNet-1…4"
_TEST_MEANS = "top-1 on the run's val (or test/) split: reported only, never chooses"


@dataclass(frozen=True)
class TableRow:
    """One row of our Table 1. ``resolution`` is the square input side in
    pixels; for the paper's rows the numbers are its printed ones, and
    ``printed`` holds them verbatim."""

    name: str
    source: str
    data: str
    resolution: int
    device: str
    generation: int | None
    size_mb: float
    reduction_vs_squeezenet11: float
    reduction_vs_alexnet: float
    img_s_b32: float | None
    heldout_top1: float | None
    test_top1: float | None
    selected_by: str | None
    params: int | None = None
    macs: int | None = None
    printed: PaperRow | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class _Bench:
    """What the report uses of ``RUN/bench.json`` (``bench.bench_target``)."""

    models: dict[int, dict[str, Any]]
    cpu: str | None
    threads: int | None
    image_size: int | None

    @classmethod
    def from_doc(cls, doc: dict[str, Any] | None) -> "_Bench":
        if not doc:
            return cls({}, None, None, None)
        models = {m["generation"]: m for m in doc["models"] if m.get("generation") is not None}
        return cls(models, (doc.get("machine") or {}).get("cpu"), doc.get("threads"), doc.get("image_size"))

    def figure(self, generation: int, key: str) -> float | None:
        return self.models.get(generation, {}).get(key)

    def device(self, resolution: int) -> str:
        """Where the speeds come from; says so when they were timed at
        another input size than the run's ``resolution``."""
        if self.cpu is None:
            return "this machine's CPU (not benchmarked)"
        how = ["ONNX Runtime"] + ([f"{self.threads} threads"] if self.threads else [])
        if self.image_size and self.image_size != resolution:
            how.append(f"timed at {self.image_size} px")
        return f"{self.cpu} ({', '.join(how)})"


# -- choosing -------------------------------------------------------------------
def pareto_front(entries: Sequence[GenerationRecord]) -> list[GenerationRecord]:
    """Entries no other entry beats on both size (smaller) and held-out top-1
    (higher), largest first. Test top-1 plays no part."""

    def beats(o: GenerationRecord, e: GenerationRecord) -> bool:
        return (o.size_mb <= e.size_mb and o.heldout_top1 >= e.heldout_top1
                and (o.size_mb < e.size_mb or o.heldout_top1 > e.heldout_top1))

    front = [e for e in entries if not any(beats(o, e) for o in entries if o is not e)]
    return sorted(front, key=lambda e: (-e.size_mb, e.generation))


def choose_squishednets(generations: Sequence[GenerationRecord], n: int = 4) -> list[GenerationRecord]:
    """SquishedNet-1…n of a lineage's generations, largest first (the rule is
    in the module docstring)."""
    front = pareto_front([g for g in generations if g.generation > 0])
    if len(front) <= n:
        return front
    hi, lo = math.log(front[0].size_mb), math.log(front[-1].size_mb)
    chosen: list[GenerationRecord] = []
    for i in range(n):
        t = hi + (lo - hi) * i / (n - 1)
        chosen.append(min((e for e in front if e not in chosen), key=lambda e: abs(math.log(e.size_mb) - t)))
    return sorted(chosen, key=lambda e: (-e.size_mb, e.generation))


# -- the table ------------------------------------------------------------------
def _number(printed: str) -> float:
    return float(printed.rstrip("MB×%"))


def _paper_rows() -> list[TableRow]:
    return [TableRow(name=f"{p.name} (paper)", **PAPER_SETTING, generation=None, size_mb=_number(p.size),
                     reduction_vs_squeezenet11=_number(p.reduction_vs_squeezenet11),
                     reduction_vs_alexnet=_number(p.reduction_vs_alexnet), img_s_b32=_number(p.img_s_b32),
                     heldout_top1=None, test_top1=_number(p.top1) / 100, selected_by=None, printed=p)
            for p in PAPER_TABLE1]


def _data_name(lineage: Lineage) -> str:
    return Path(str(lineage.config["data"])).name or str(lineage.config["data"])


def build_table(lineage: Lineage, bench: dict[str, Any] | None = None,
                speed_key: str = "ort_b32_img_s") -> list[TableRow]:
    """Rows of Table 1: our ancestor and SquishedNet-1…4, then the paper's.

    ``bench`` is the document ``bench.bench_target`` returns (and writes to
    ``RUN/bench.json``); without it the speed column is empty.
    """
    b = _Bench.from_doc(bench)
    chosen = choose_squishednets(lineage.generations)
    picks = [("Ancestor (gen 0)", lineage.generations[0])]
    picks += [(f"SquishedNet-{i + 1} (gen {g.generation})", g) for i, g in enumerate(chosen)]
    resolution = int(lineage.config["image_size"])
    ours = [TableRow(name=name, source="ours", data=_data_name(lineage), resolution=resolution,
                     device=b.device(resolution), generation=g.generation, size_mb=g.size_mb,
                     reduction_vs_squeezenet11=SQUEEZENET11_MB / g.size_mb,
                     reduction_vs_alexnet=ALEXNET_MB / g.size_mb, img_s_b32=b.figure(g.generation, speed_key),
                     heldout_top1=g.heldout_top1, test_top1=g.test_top1, selected_by=g.selected_by,
                     params=g.params, macs=g.macs)
            for name, g in picks]
    return ours + _paper_rows()


def _fmt(v: Any, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v * 100:.1f}%"


def _cells(r: TableRow) -> list[str]:
    """Model, measured on, size, both reductions, images/s, held-out and test top-1, as shown."""
    setting = f"{r.data}, {r.resolution} px, {r.device}"
    if r.printed is not None:
        p = r.printed
        return [r.name, setting, p.size, p.reduction_vs_squeezenet11, p.reduction_vs_alexnet, p.img_s_b32, "—",
                p.top1]
    return [r.name, setting, f"{r.size_mb:.3g}MB", f"{r.reduction_vs_squeezenet11:.2f}×",
            f"{r.reduction_vs_alexnet:.0f}×", _fmt(r.img_s_b32, ".1f"), _pct(r.heldout_top1), _pct(r.test_top1)]


_HEADER = ["Model", "Data, resolution, device", "Model size", "Reduction vs SqueezeNet v1.1", "Reduction vs AlexNet",
           "images/s (batch 32)", "held-out top-1", "test top-1"]


def _notes(rows: list[TableRow]) -> list[str]:
    ours = rows[0]
    return [
        SELECTION_LINE,
        f"Held-out top-1: {_HELDOUT_MEANS}. Test top-1: {_TEST_MEANS}.",
        f"Rows marked (paper) are quoted as printed in the SquishedNets paper's Table 1: ImageNet-10, 224 px, "
        f"Nvidia Jetson TX1; the paper gives one top-1 and does not say which split chose its networks. Ours are "
        f"on {ours.data} at {ours.resolution} px, timed on {ours.device}: another data set, resolution and "
        "device, so compare trends, not figures.",
    ]


def _markdown(title: str, rows: list[TableRow]) -> str:
    out = [f"Table 1 for {title}", "", "| " + " | ".join(_HEADER) + " |", "|---|---|" + "---:|" * 6]
    out += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(out + [""] + _notes(rows)) + "\n"


def _csv(rows: list[TableRow]) -> str:
    buf = io.StringIO()
    fields = [f.name for f in dataclasses.fields(TableRow) if f.name != "printed"]
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(r.to_dict() for r in rows)
    return buf.getvalue()


# -- filters kept per layer -------------------------------------------------------
def filters_kept(run: str | Path, generations: Sequence[GenerationRecord]) -> dict[str, list[int | None]]:
    """Filters per layer (named as the genome names its units) for each
    generation, read from each generation's checkpoint; ``None`` where a
    generation lacks a layer of the ancestor."""
    per_gen = [{u.name: u.cout for u in load_genome_file(resolve_checkpoint(Path(run) / g.path) / GENOME).units()}
               for g in generations]
    return {name: [w.get(name) for w in per_gen] for name in per_gen[0]}


# -- plots ----------------------------------------------------------------------
def figure_png(fig: Any) -> str:
    """``fig`` as base64 PNG (for an HTML page; decoded again for the PNG files), closed."""
    import matplotlib.pyplot as plt  # heavy: imported only when a picture is drawn

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _finish(ax: Any, xlabel: str, ylabel: str, title: str, legend: bool = True, logx: bool = False) -> None:
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=8)


def _plot_top1(plt: Any, gens: list[GenerationRecord], chosen: list[GenerationRecord]) -> str:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot([g.size_mb for g in gens], [g.heldout_top1 * 100 for g in gens], "o-", color="tab:blue",
            label="our lineage, held-out top-1 (chooses)")
    tested = [g for g in gens if g.test_top1 is not None]
    ax.plot([g.size_mb for g in tested], [g.test_top1 * 100 for g in tested], "x", color="tab:green",
            label="our lineage, test top-1 (reported only)")
    for g in gens:
        ax.annotate(str(g.generation), (g.size_mb, g.heldout_top1 * 100), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.scatter([g.size_mb for g in chosen], [g.heldout_top1 * 100 for g in chosen], s=120, facecolors="none",
               edgecolors="tab:red", label="chosen SquishedNets")
    paper = _paper_rows()
    ax.plot([r.size_mb for r in paper], [r.test_top1 * 100 for r in paper], "s--", color="tab:gray",
            label="paper (ImageNet-10, 224 px)")
    _finish(ax, "model size (MB, fp32, log scale)", "top-1 (%)", "Top-1 against size", logx=True)
    return figure_png(fig)


def _plot_speed(plt: Any, gens: list[GenerationRecord], bench: _Bench) -> str:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    any_speed = False
    for key, label in (("ort_b32_img_s", "ONNX Runtime"), ("cl_b32_img_s", "PyTorch channels_last"),
                       ("eager_b32_img_s", "PyTorch eager")):
        pts = [(g.size_mb, bench.figure(g.generation, key)) for g in gens if bench.figure(g.generation, key)]
        if pts:
            any_speed = True
            ax.plot(*zip(*pts), "o-", label=label)
    _finish(ax, "model size (MB, log scale)", "images/s at batch 32 (this machine)",
            "Speed against size" + ("" if any_speed else " (not benchmarked)"), legend=any_speed, logx=True)
    return figure_png(fig)


def draw_filters_kept(fig: Any, ax: Any, gens: Sequence[GenerationRecord], kept: dict[str, list[int | None]]) -> None:
    """The heat map of ``filters_kept`` (fraction of the ancestor's filters,
    layers down, generations across) on ``ax``; ``analyze`` draws it beside
    each layer's importance."""
    names = list(kept)
    mat = np.array([[np.nan if w is None else w for w in kept[n]] for n in names], dtype=float)
    ancestor = mat[:, :1]
    # A layer the ancestor has no filters in (an empty expand branch) has nothing to keep: left blank.
    rel = np.divide(mat, ancestor, out=np.full_like(mat, np.nan), where=ancestor > 0)
    im = ax.imshow(rel, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=7)
    ax.set_xticks(range(len(gens)))
    ax.set_xticklabels([str(g.generation) for g in gens], fontsize=7)
    ax.set_xlabel("generation")
    ax.set_title("Filters kept per layer (fraction of the ancestor's)")
    fig.colorbar(im, ax=ax, fraction=0.03)


def _plot_heatmap(plt: Any, gens: list[GenerationRecord], kept: dict[str, list[int | None]]) -> str:
    fig, ax = plt.subplots(figsize=(max(6.4, 0.32 * len(gens) + 2.5), 0.2 * len(kept) + 1.8))
    draw_filters_kept(fig, ax, gens, kept)
    return figure_png(fig)


def _plot_training(plt: Any, gens: list[GenerationRecord]) -> str:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    cmap = plt.get_cmap("viridis")
    last = gens[-1].generation
    for g in gens:
        if g.history:
            ax.plot([r["epoch"] for r in g.history], [r["loss"] for r in g.history],
                    color=cmap(g.generation / max(1, last)),
                    label=f"gen {g.generation}" if g.generation in (0, last) else None)
    _finish(ax, "epoch (within its generation)", "training loss", "Training curves (colour: generation)")
    return figure_png(fig)


def _plots(lineage: Lineage, bench: _Bench, chosen: list[GenerationRecord],
           kept: dict[str, list[int | None]]) -> dict[str, str]:
    # matplotlib is heavy (about a second to import): only the pictures need it,
    # and the headless Agg backend must be chosen before pyplot is imported.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gens = lineage.generations
    return {"top1_vs_size": _plot_top1(plt, gens, chosen), "speed_vs_size": _plot_speed(plt, gens, bench),
            "filters_heatmap": _plot_heatmap(plt, gens, kept), "training_curves": _plot_training(plt, gens)}


# -- the HTML page ----------------------------------------------------------------
_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>SquishedNets report: {title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }}
th:first-child, td:first-child, td.setting {{ text-align: left; }}
tr.paper td {{ color: #777; font-style: italic; }}
tr.chosen td {{ font-weight: 600; }}
figure {{ display: inline-block; margin: 0.5em; }}
img {{ max-width: 100%; }}
.small {{ font-size: 0.85em; color: #555; }}
.warning {{ color: #a00; font-weight: 600; }}
</style></head>
<body data-images-ok="pending">
<h1>SquishedNets report: {title}</h1>
<h2>Table 1</h2>
<table id="table1"><thead><tr>{head}<th>MACs</th></tr></thead><tbody>
{rows}
</tbody></table>
{notes}
<p class="small">{rule}</p>
<h2>Every generation</h2>
<table id="lineage"><thead><tr><th>Generation</th><th>Size (MB)</th><th>Parameters</th><th>MACs</th>
<th>held-out top-1</th><th>test top-1</th><th>F(E)</th><th>k</th><th>MAC pressure</th>{sparse_head}
<th>images/s (ORT, b32)</th><th>latency b1 (ms)</th></tr></thead><tbody>
{lineage_rows}
</tbody></table>
{exports}
<h2>Plots</h2>
{figures}
{compare}
<script>
// Marks whether every picture decoded, for people and for the browser test.
window.addEventListener("load", function () {{
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) {{ return i.complete && i.naturalWidth > 0; }}).length;
  document.body.setAttribute("data-images-ok", ok + "/" + imgs.length);
}});
</script>
</body></html>
"""

_CAPTIONS = {"top1_vs_size": "Top-1 against size", "speed_vs_size": "images/s against size",
             "filters_heatmap": "Filters kept per layer across generations", "training_curves": "Training curves"}


def _table1_html(rows: list[TableRow]) -> str:
    def tr(r: TableRow) -> str:
        cls = "paper" if r.source == "paper" else "ours"
        opening = ["<td>", '<td class="setting">'] + ["<td>"] * 6
        tds = "".join(f"{o}{html.escape(c)}</td>" for o, c in zip(opening, _cells(r)))
        return f'<tr class="{cls}">{tds}<td>{_fmt(r.macs, ",")}</td></tr>'

    return "\n".join(tr(r) for r in rows)


def _lineage_html(lineage: Lineage, bench: _Bench, chosen: list[GenerationRecord]) -> tuple[str, str]:
    """The every-generation table's extra header cells and its rows. Synapse-level
    runs keep dense sizes as the headline, with the sparse figures beside them."""
    sparse = any(g.sparse_bytes is not None for g in lineage.generations)
    picked = {g.generation for g in chosen}

    def tr(g: GenerationRecord) -> str:
        sparse_cells = (f"<td>{g.nonzero_params:,}</td><td>{_fmt(g.sparse_bytes and g.sparse_bytes / 1e6, '.3f')}"
                        "</td>") if sparse else ""
        return (f'<tr class="{"chosen" if g.generation in picked else "gen"}"><td>{g.generation}</td>'
                f"<td>{g.size_mb:.3f}</td><td>{g.params:,}</td><td>{g.macs:,}</td>"
                f"<td>{g.heldout_top1 * 100:.2f}%</td><td>{_fmt(g.test_top1 and g.test_top1 * 100, '.2f')}</td>"
                f"<td>{_fmt(g.env_factor, '.3f')}</td><td>{_fmt(g.sharpness, '.3f')}</td>"
                f"<td>{_fmt(g.mac_pressure, '.2f')}</td>{sparse_cells}"
                f"<td>{_fmt(bench.figure(g.generation, 'ort_b32_img_s'), '.1f')}</td>"
                f"<td>{_fmt(bench.figure(g.generation, 'ort_b1_ms'), '.2f')}</td></tr>")

    head = "<th>Non-zero params</th><th>Sparse size (MB)</th>" if sparse else ""
    return head, "\n".join(tr(g) for g in lineage.generations)


def _exports_html(exports: Sequence[dict[str, Any]] | None) -> str:
    """The exported ONNX files: parity with PyTorch, and int8 where it was
    measured; an int8 model more than a point below fp32 is named here as in
    the export's warning line, so nobody ships it unawares."""
    if not exports:
        return ""
    cells = []
    for x in exports:
        real = x.get("real_max_abs_diff")
        int8 = [_fmt(x.get("int8_bytes") and x["int8_bytes"] / 1e6, ".3f"), _pct(x.get("fp32_test_top1")),
                _pct(x.get("int8_test_top1")), _fmt(x.get("int8_speedup"), ".2f") + ("×" if "int8_speedup" in x else ""),
                html.escape(x.get("int8_mode") or "—")]
        cells.append([html.escape(x["name"]), str(x["generation"]), _fmt(x["bytes"] / 1e6, ".3f"),
                      _fmt(x.get("max_abs_diff"), ".1e"), "—" if real is None else f"{real:.1e}",
                      _pct(x.get("real_top1_agreement")), *int8])
    rows = "\n".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in cells)
    warns = "".join(f'<p class="note warning">{html.escape(x["int8_warning"])} ({html.escape(x["name"])})</p>'
                    for x in exports if x.get("int8_warning"))
    head = ("Model", "Generation", "ONNX (MB)", "max |diff| noise", "max |diff| real", "top-1 agreement",
            "int8 ONNX (MB)", "fp32 test top-1 (ORT)", "int8 test top-1 (ORT)", "int8 speed-up (b32)", "int8 mode")
    return ('<h2>Exports</h2>\n<table id="exports"><thead><tr>' + "".join(f"<th>{h}</th>" for h in head)
            + f"</tr></thead><tbody>\n{rows}\n</tbody></table>\n{warns}")


def _page(title: str, rows: list[TableRow], lineage: Lineage, bench: _Bench, chosen: list[GenerationRecord],
          figs: dict[str, str], exports: Sequence[dict[str, Any]] | None = None, compare: str = "") -> str:
    sparse_head, lineage_rows = _lineage_html(lineage, bench, chosen)
    figures = "\n".join(
        f'<figure><img id="{k}" alt="{_CAPTIONS[k]}" src="data:image/png;base64,{v}"><figcaption>{_CAPTIONS[k]}'
        "</figcaption></figure>" for k, v in figs.items())
    return _HTML.format(
        title=html.escape(title), head="".join(f"<th>{html.escape(h)}</th>" for h in _HEADER),
        rows=_table1_html(rows), notes="\n".join(f'<p class="note">{html.escape(n)}</p>' for n in _notes(rows)),
        rule=html.escape(_rule()), sparse_head=sparse_head, lineage_rows=lineage_rows, figures=figures,
        exports=_exports_html(exports), compare=compare)


# -- writing ------------------------------------------------------------------------
def _rule() -> str:
    return CHOICE_RULE


def _load(run: Path) -> tuple[Lineage, dict[str, Any] | None]:
    if not (run / LINEAGE_FILE).is_file():
        raise SquishedError(f"{run} has no lineage.json; pass an evolve run folder (or run 'squishednets evolve' "
                            "first)")
    lineage = Lineage.load(run)
    if len(lineage.generations) < 2:
        raise SquishedError(f"{run} has no evolved generation yet; let 'squishednets evolve' finish one first")
    bench_path = run / "bench.json"
    return lineage, json.loads(bench_path.read_text()) if bench_path.is_file() else None


def _json_doc(title: str, lineage: Lineage, rows: list[TableRow], kept: dict[str, list[int | None]]) -> dict[str, Any]:
    ours = rows[0]
    return {
        "title": title, "table": "SquishedNets paper, Table 1",
        "selected_by": SELECTED_BY, "selection": SELECTION_LINE,
        "heldout_top1": _HELDOUT_MEANS, "test_top1": _TEST_MEANS, "rule": _rule(),
        "ours": {"source": "ours", "data": str(lineage.config["data"]), "resolution": ours.resolution,
                 "device": ours.device},
        "paper": PAPER_SETTING, "notes": _notes(rows),
        "chosen_generations": [r.generation for r in rows if r.source == "ours"][1:],
        "rows": [r.to_dict() for r in rows],
        "filters_kept": {"generations": [g.generation for g in lineage.generations], "layers": kept},
    }


def compare_section(run: str | Path) -> str:
    """The section ``squishednets compare`` wrote for this evolve folder, or ""."""
    f = compare_dir(run) / "section.html"
    return f.read_text() if f.is_file() else ""


def run_root(run: str | Path) -> Path | None:
    """The ``squishednets run`` folder whose ``evolve/`` is ``run``, or None."""
    run = Path(run).resolve()
    cfg = run.parent / "config.json"
    if run.name != "evolve" or not cfg.is_file():
        return None
    try:
        return run.parent if json.loads(cfg.read_text()).get("kind") == "run" else None
    except ValueError:
        return None


def compare_dir(run: str | Path) -> Path:
    """Where ``squishednets compare`` writes by default for an evolve folder:
    beside it in a run folder (``RUN/compare``), else inside it."""
    return (run_root(run) or Path(run).resolve()) / "compare"


def write_report(run: str | Path, out: str | Path | None = None,
                 exports: Sequence[dict[str, Any]] | None = None) -> dict[str, Path]:
    """Write table1.md, table1.csv, table1.json, the plots as PNG and
    report.html for an evolve run folder (``out`` defaults to ``RUN/report``);
    ``RUN/bench.json``, when there, fills the speed column, and ``exports``
    (the main job's export.json entries) add the exported files, with int8
    accuracy and any int8 warning when it was measured. A comparison with the
    alternatives (``squishednets compare``), when there, is added as a section."""
    run = Path(run)
    lineage, bench_doc = _load(run)
    bench = _Bench.from_doc(bench_doc)
    out = Path(out) if out else run / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows = build_table(lineage, bench_doc)
    chosen = choose_squishednets(lineage.generations)
    kept = filters_kept(run, lineage.generations)
    atomic_write_text(out / "table1.md", _markdown(run.name, rows))
    atomic_write_text(out / "table1.csv", _csv(rows))
    atomic_write_json(out / "table1.json", _json_doc(run.name, lineage, rows, kept))
    figs = _plots(lineage, bench, chosen, kept)
    for name, b64 in figs.items():  # also as files, for READMEs and slides
        atomic_write_bytes(out / f"{name}.png", base64.b64decode(b64))
    atomic_write_text(out / "report.html", _page(run.name, rows, lineage, bench, chosen, figs, exports,
                                                 compare_section(run)))
    return {"markdown": out / "table1.md", "csv": out / "table1.csv", "json": out / "table1.json",
            "html": out / "report.html"}
