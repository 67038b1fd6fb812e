"""Table 1 of the SquishedNets paper for any lineage, as Markdown, CSV, JSON
and one self-contained HTML page with plots.

Columns follow the paper: name, model size, reduction vs SqueezeNet v1.1
(4.94 MB) and vs AlexNet (61,100,840 parameters, 244.4 MB), images/s at
batch 32, top-1. The paper's four SquishedNets sit beside ours, marked as
theirs (ImageNet-10, 224 px, Jetson TX1).

Choosing SquishedNet-1..4: among the evolved generations (the ancestor
excluded), keep the Pareto-optimal ones (no other generation is both
smaller and at least as accurate); then, for four sizes spaced evenly in log
scale from the largest to the smallest Pareto member, take the nearest
member not taken yet. With fewer than four Pareto members, all are taken.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from pathlib import Path
from typing import Any

from .errors import SquishedError
from .io import atomic_write_bytes, atomic_write_json, atomic_write_text
from .metrics import ALEXNET_MB, SQUEEZENET11_MB

__all__ = ["PAPER_TABLE1", "pareto_front", "choose_squishednets", "build_table", "write_report"]

# Table 1 of the paper: (name, size MB, images/s on a Jetson TX1 at batch 32, top-1 on ImageNet-10).
PAPER_TABLE1 = [
    ("SquishedNet-1", 2.4, 156.09, 0.812),
    ("SquishedNet-2", 2.0, 174.86, 0.796),
    ("SquishedNet-3", 1.3, 225.35, 0.786),
    ("SquishedNet-4", 0.95, 256.00, 0.770),
]


def pareto_front(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entries no other entry beats on both size (smaller) and top-1 (higher)."""
    front = []
    for e in entries:
        dominated = any(
            o is not e and o["size_mb"] <= e["size_mb"] and o["top1"] >= e["top1"]
            and (o["size_mb"] < e["size_mb"] or o["top1"] > e["top1"])
            for o in entries
        )
        if not dominated:
            front.append(e)
    return sorted(front, key=lambda e: -e["size_mb"])


def choose_squishednets(lineage: list[dict[str, Any]], n: int = 4) -> list[dict[str, Any]]:
    """SquishedNet-1..n: Pareto-optimal generations spread over the size range
    (see the module docstring for the rule)."""
    evolved = [e for e in lineage if e["generation"] > 0 and e.get("top1") is not None]
    front = pareto_front(evolved)
    if len(front) <= n:
        return front
    hi, lo = math.log(front[0]["size_mb"]), math.log(front[-1]["size_mb"])
    chosen: list[dict[str, Any]] = []
    for i in range(n):
        t = hi + (lo - hi) * i / (n - 1)
        best = min((e for e in front if e not in chosen), key=lambda e: abs(math.log(e["size_mb"]) - t))
        chosen.append(best)
    return sorted(chosen, key=lambda e: -e["size_mb"])


def build_table(lineage: list[dict[str, Any]], bench: dict[int, dict[str, Any]] | None = None,
                speed_key: str = "ort_b32_img_s") -> list[dict[str, Any]]:
    """Rows of Table 1: our ancestor and chosen SquishedNets, then the paper's."""
    bench = bench or {}
    rows = []
    chosen = choose_squishednets(lineage)
    picks = [("Ancestor (gen 0)", lineage[0])] + [(f"SquishedNet-{i + 1} (gen {e['generation']})", e)
                                                    for i, e in enumerate(chosen)]
    for name, e in picks:
        b = bench.get(e["generation"], {})
        rows.append({
            "name": name, "source": "ours", "generation": e["generation"], "size_mb": e["size_mb"],
            "reduction_vs_squeezenet11": SQUEEZENET11_MB / e["size_mb"], "reduction_vs_alexnet": ALEXNET_MB / e["size_mb"],
            "img_s_b32": b.get(speed_key), "top1": e["top1"], "macs": e["macs"], "params": e["params"],
        })
    for name, size, speed, top1 in PAPER_TABLE1:
        rows.append({
            "name": f"{name} (paper)", "source": "paper: ImageNet-10, 224 px, Jetson TX1", "generation": None,
            "size_mb": size, "reduction_vs_squeezenet11": SQUEEZENET11_MB / size, "reduction_vs_alexnet": ALEXNET_MB / size,
            "img_s_b32": speed, "top1": top1, "macs": None, "params": None,
        })
    return rows


def _fmt(v: Any, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def _markdown(rows: list[dict[str, Any]], context: str) -> str:
    out = [f"Table 1 for this lineage ({context}); the paper's rows are theirs (ImageNet-10, 224 px, Jetson TX1).", "",
           "| Model | Size (MB) | vs SqueezeNet v1.1 | vs AlexNet | images/s (batch 32) | Top-1 |",
           "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['name']} | {r['size_mb']:.2f} | {r['reduction_vs_squeezenet11']:.2f}× | "
                   f"{r['reduction_vs_alexnet']:.0f}× | {_fmt(r['img_s_b32'], '.1f')} | {r['top1'] * 100:.1f}% |")
    return "\n".join(out) + "\n"


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _finish(ax, xlabel: str, ylabel: str, title: str, legend: bool = True, logx: bool = False) -> None:
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=8)


def _plots(lineage: list[dict[str, Any]], bench: dict[int, dict[str, Any]], chosen: list[dict[str, Any]]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figs: dict[str, str] = {}
    size = [e["size_mb"] for e in lineage]
    top1 = [e["top1"] * 100 for e in lineage]

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(size, top1, "o-", color="tab:blue", label="our lineage (val top-1)")
    for e in lineage:
        ax.annotate(str(e["generation"]), (e["size_mb"], e["top1"] * 100), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.scatter([e["size_mb"] for e in chosen], [e["top1"] * 100 for e in chosen], s=120, facecolors="none",
               edgecolors="tab:red", label="chosen SquishedNets")
    ax.plot([p[1] for p in PAPER_TABLE1], [p[3] * 100 for p in PAPER_TABLE1], "s--", color="tab:gray",
            label="paper (ImageNet-10, 224 px)")
    _finish(ax, "model size (MB, fp32, log scale)", "top-1 (%)", "Top-1 against size", logx=True)
    figs["top1_vs_size"] = _png(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    any_speed = False
    for key, label in (("ort_b32_img_s", "ONNX Runtime"), ("cl_b32_img_s", "PyTorch channels_last"),
                       ("eager_b32_img_s", "PyTorch eager")):
        pts = [(e["size_mb"], bench[e["generation"]][key]) for e in lineage
               if e["generation"] in bench and bench[e["generation"]].get(key)]
        if pts:
            any_speed = True
            ax.plot(*zip(*pts), "o-", label=label)
    _finish(ax, "model size (MB, log scale)", "images/s at batch 32 (this machine)",
            "Speed against size" + ("" if any_speed else " (not benchmarked)"), legend=any_speed, logx=True)
    figs["speed_vs_size"] = _png(fig)

    names = ["conv1"] + [f"fire{i + 2}.{b}" for i in range((len(lineage[0]["widths"]) - 1) // 3)
                         for b in ("s", "e1", "e3")]
    mat = np.array([e["widths"] for e in lineage], dtype=float)
    rel = mat / np.maximum(mat[0:1], 1)
    fig, ax = plt.subplots(figsize=(max(6.4, 0.28 * len(names)), 0.32 * len(lineage) + 1.8))
    im = ax.imshow(rel, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(lineage)))
    ax.set_yticklabels([str(e["generation"]) for e in lineage], fontsize=7)
    ax.set_ylabel("generation")
    ax.set_title("Filters per layer across generations (fraction of the ancestor's)")
    fig.colorbar(im, ax=ax, fraction=0.03)
    figs["filters_heatmap"] = _png(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    cmap = plt.get_cmap("viridis")
    for e in lineage:
        h = e.get("history") or []
        if h:
            ax.plot([r["epoch"] for r in h], [r["loss"] for r in h], color=cmap(e["generation"] / max(1, len(lineage))),
                    label=f"gen {e['generation']}" if e["generation"] in (0, len(lineage) - 1) else None)
    _finish(ax, "epoch (within its generation)", "training loss", "Training curves (colour: generation)")
    figs["training_curves"] = _png(fig)
    return figs


_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>SquishedNets report: {title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
tr.paper td {{ color: #777; font-style: italic; }}
figure {{ display: inline-block; margin: 0.5em; }}
img {{ max-width: 100%; }}
.small {{ font-size: 0.85em; color: #555; }}
</style></head>
<body data-images-ok="pending">
<h1>SquishedNets report: {title}</h1>
<p class="small">{context}</p>
<h2>Table 1</h2>
<table id="table1"><thead><tr><th>Model</th><th>Size (MB)</th><th>Reduction vs SqueezeNet v1.1</th>
<th>Reduction vs AlexNet</th><th>images/s (batch 32)</th><th>Top-1</th><th>MACs</th></tr></thead><tbody>
{rows}
</tbody></table>
<p class="small">{rule}</p>
<h2>Every generation</h2>
<table id="lineage"><thead><tr><th>Generation</th><th>Size (MB)</th><th>Parameters</th><th>MACs</th>
<th>Val top-1</th><th>Held-out top-1</th><th>F(E)</th><th>k</th><th>MAC pressure</th>{sparse_head}<th>images/s (ORT, b32)</th>
<th>latency b1 (ms)</th></tr></thead><tbody>
{lineage_rows}
</tbody></table>
<h2>Plots</h2>
{figures}
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


def write_report(run: str | Path, out: str | Path | None = None, bench: dict[int, dict[str, Any]] | None = None
                 ) -> dict[str, Path]:
    """Write table1.md/.csv/.json and report.html for an evolve run folder."""
    run = Path(run)
    lp = run / "lineage.json"
    if not lp.exists():
        raise SquishedError(f"{run} has no lineage.json; pass an evolve run folder (or run 'squishednets evolve' first)")
    doc = json.loads(lp.read_text())
    lineage = doc["generations"]
    if len(lineage) < 2:
        raise SquishedError(f"{run} has no evolved generation yet; let 'squishednets evolve' finish one first")
    if bench is None and (run / "bench.json").exists():
        bench = {e["generation"]: e for e in json.loads((run / "bench.json").read_text())["models"]}
    bench = bench or {}
    out = Path(out) if out else run / "report"
    out.mkdir(parents=True, exist_ok=True)
    cfg = doc.get("config", {})
    size_px = cfg.get("image_size")
    threads = next((b.get("threads") for b in bench.values()), None)
    context = (f"data {cfg.get('data')}, val split, {size_px} px input; images/s from ONNX Runtime on this machine"
               + (f" with {threads} threads" if threads else " (not benchmarked)"))
    rows = build_table(lineage, bench)
    chosen = choose_squishednets(lineage)
    atomic_write_text(out / "table1.md", _markdown(rows, context))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "table1.csv", buf.getvalue())
    atomic_write_json(out / "table1.json", {"context": context, "rule": __doc__.split("Choosing")[1].strip(),
                                            "rows": rows})
    figs = _plots(lineage, bench, chosen)
    for name, b64 in figs.items():  # also as files, for READMEs and slides
        atomic_write_bytes(out / f"{name}.png", base64.b64decode(b64))
    row_html = "\n".join(
        f"<tr class=\"{'paper' if r['source'] != 'ours' else 'ours'}\"><td>{html.escape(r['name'])}</td>"
        f"<td>{r['size_mb']:.2f}</td><td>{r['reduction_vs_squeezenet11']:.2f}×</td><td>{r['reduction_vs_alexnet']:.0f}×</td>"
        f"<td>{_fmt(r['img_s_b32'], '.1f')}</td><td>{r['top1'] * 100:.1f}%</td><td>{_fmt(r['macs'], ',')}</td></tr>"
        for r in rows)
    # Synapse-level runs keep dense sizes as the headline, with the sparse
    # figures beside them.
    sparse = bool(cfg.get("synapse_level"))
    sparse_head = "<th>Non-zero params</th><th>Sparse size (MB)</th>" if sparse else ""

    def sparse_cells(e: dict[str, Any]) -> str:
        if not sparse:
            return ""
        sb = e.get("sparse_bytes")
        return f"<td>{_fmt(e.get('nonzero_params'), ',')}</td><td>{_fmt(sb and sb / 1e6, '.3f')}</td>"

    lin_html = "\n".join(
        f"<tr><td>{e['generation']}</td><td>{e['size_mb']:.3f}</td><td>{e['params']:,}</td><td>{e['macs']:,}</td>"
        f"<td>{e['top1'] * 100:.2f}%</td><td>{_fmt(e.get('holdout_top1') and e['holdout_top1'] * 100, '.2f')}</td>"
        f"<td>{_fmt(e.get('env_factor'), '.3f')}</td><td>{_fmt(e.get('sharpness'), '.3f')}</td>"
        f"<td>{_fmt(e.get('mac_pressure'), '.2f')}</td>{sparse_cells(e)}"
        f"<td>{_fmt(bench.get(e['generation'], {}).get('ort_b32_img_s'), '.1f')}</td>"
        f"<td>{_fmt(bench.get(e['generation'], {}).get('ort_b1_ms'), '.2f')}</td></tr>"
        for e in lineage)
    captions = {"top1_vs_size": "Top-1 against size", "speed_vs_size": "images/s against size",
                "filters_heatmap": "Filters per layer across generations", "training_curves": "Training curves"}
    fig_html = "\n".join(
        f'<figure><img id="{k}" alt="{captions[k]}" src="data:image/png;base64,{v}"><figcaption>{captions[k]}'
        f"</figcaption></figure>" for k, v in figs.items())
    rule = ("SquishedNet-1…4: the Pareto-optimal evolved generations (no other is both smaller and at least as "
            "accurate), four of them picked nearest to sizes spaced evenly in log scale over the front.")
    page = _HTML.format(title=html.escape(run.name), context=html.escape(context), rows=row_html,
                        lineage_rows=lin_html, figures=fig_html, rule=rule, sparse_head=sparse_head)
    atomic_write_text(out / "report.html", page)
    return {"markdown": out / "table1.md", "csv": out / "table1.csv", "json": out / "table1.json",
            "html": out / "report.html"}
