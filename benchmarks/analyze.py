"""Benchmark JSON for `squishednets analyze` on the default ancestor and its
lineage (the layer-roles questions of BENCHMARKS.md).

Writes
- results/analyze_ancestor.json: one entry per convolution of the ancestor
  with layer, params, macs, activation_kb, time_share (ONNX Runtime's
  profiler), apoz, effective_rank (of the output activations),
  strength_3x3_share (expand layers), ablation_drop (mean held-out top-1 drop
  over the ablated fractions) and its standard error, plus the Fire modules'
  figures (squeeze bottleneck or not, bypass drops) and the wall time;
- results/analyze_lineage.json: per removable layer the share of filters
  the final generation kept beside the ancestor's importance, and
  spearman_importance_vs_kept (with a permutation p-value).

The HTML page and PNGs go to --out (git-ignored runs/ by default); --docs
copies a few PNGs for the README.

    python benchmarks/analyze.py --run runs/main --out runs/analyze_main --threads 1
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from common import write_result

from squishednets.analysis import AnalyzeConfig
from squishednets.analyze import analyze_target

ANCESTOR_KEYS = ("layer", "kind", "cin", "cout", "kernel", "out_hw", "receptive_field", "params", "macs",
                 "activation_kb", "param_share", "mac_share", "time_ms", "time_share", "apoz", "dead_channel_share",
                 "effective_rank", "input_effective_rank", "weight_effective_rank", "weight_rank_limit",
                 "dead_weight_share", "strength_3x3_share", "output_3x3_share", "ablation_drop", "ablation_drop_se",
                 "sensitivity", "filter_drops")
DOC_PICTURES = ("sensitivity", "lineage")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/main", help="run folder (ancestor/ and evolve/) or evolve folder")
    ap.add_argument("--out", default="runs/analyze_main", help="folder for the page, PNGs and analysis.json")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: every core)")
    ap.add_argument("--images", type=int, default=AnalyzeConfig.images)
    ap.add_argument("--docs", help="copy these PNGs there as analyze_<name>.png: " + ", ".join(DOC_PICTURES))
    args = ap.parse_args()
    cfg = AnalyzeConfig(threads=args.threads, images=args.images)
    doc = analyze_target(args.run, cfg, args.out, progress=True)
    common = {"run": args.run, "checkpoint": doc["checkpoint"], "genome": doc["genome"], "data": doc["data"],
              "split": doc["split"], "images": doc["images"], "image_size": doc["image_size"], "top1": doc["top1"],
              "threads": args.threads, "wall_s": doc["wall_s"], "definitions": doc["definitions"]}
    write_result("analyze_ancestor", {
        **common, "ort_batch": doc["ort_batch"], "ort_ms_per_batch": doc["ort_ms_per_batch"],
        "fractions": list(cfg.fractions), "folds": cfg.folds,
        "layers": [{k: la[k] for k in ANCESTOR_KEYS} for la in doc["layers"]], "fires": doc["fires"]})
    lin = doc["lineage"]
    if lin is None:
        print(f"{args.run} has no lineage yet: wrote analyze_ancestor.json only")
    else:
        write_result("analyze_lineage", {
            **common, "final_generation": lin["final_generation"], "generations": lin["generations"],
            "size_mb": lin["size_mb"], "heldout_top1": lin["heldout_top1"], "importance": lin["importance"],
            "spearman_importance_vs_kept": lin["spearman_importance_vs_kept"], "spearman_p": lin["spearman_p"],
            "spearman_apoz_vs_kept": lin["spearman_apoz_vs_kept"], "spearman_layers": lin["spearman_layers"],
            "layers": lin["layers"], "filters_kept": lin["filters_kept"]})
    if args.docs:
        for name in DOC_PICTURES:
            src = Path(args.out) / f"{name}.png"
            if src.exists():
                shutil.copy(src, Path(args.docs) / f"analyze_{name}.png")
    print(f"analysis took {doc['wall_s']:.0f} s; page {doc['files'].get('html')}")


if __name__ == "__main__":
    main()
