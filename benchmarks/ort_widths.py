"""Why evolution rounds widths to multiples of 16: ONNX Runtime speed of the
same architectures with widths rounded to 8 and to 16.

ONNX Runtime's CPU provider runs convolutions in a blocked layout (NCHWc)
whose block is 16 channels on AVX-512 and 8 on AVX2; a tensor whose channels
are not a multiple of the block leaves that path (layout reorders, plain
pooling and concatenation). The architectures are the generations of a
lineage (the widths recorded in a lineage.json or in a committed
evolve_imagenette*.json), with random weights (speed does not
depend on their values), timed in one run, so the ratios compare like with like.

    python benchmarks/ort_widths.py --lineage benchmarks/results/v1_val_selected/evolve_imagenette_size_only.json --generations 0,3,8,15
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import write_result

from squishednets.bench import BenchConfig, bench_model, gemm_ceiling
from squishednets.genome import get_genome, round_widths
from squishednets.model import build


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lineage", default="benchmarks/results/v1_val_selected/evolve_imagenette_size_only.json")
    ap.add_argument("--generations", default="0,3,8,15")
    ap.add_argument("--sizes", default="64,224")
    ap.add_argument("--divisors", default="8,16")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--name", default="ort_widths")
    args = ap.parse_args()
    doc = json.loads(Path(args.lineage).read_text())
    gens = {e["generation"]: e for e in doc["generations"]}
    base = get_genome("squeezenet1_1", 10, batchnorm=True)  # the 10-class ancestor the widths came from
    # One best-GEMM ceiling (best over sizes and repeats) for every model of the run.
    ceiling = gemm_ceiling()
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        for g in (int(x) for x in args.generations.split(",")):
            for div in (int(d) for d in args.divisors.split(",")):
                genome = round_widths(base.with_widths(gens[g]["widths"]), div)
                r = bench_model(build(genome).eval(), BenchConfig(image_size=size, runs=args.runs, backends=("ort",)),
                                matmul_rate=ceiling)
                rows.append({"generation": g, "divisor": div, "image_size": size, "widths": genome.widths(),
                             "macs": r["macs"], "size_mb": r["size_mb"], "ort_b32_img_s": r["ort_b32_img_s"],
                             "ort_b1_ms": r["ort_b1_ms"], "ort_efficiency": r["ort_efficiency"],
                             "machine_busy": r["machine_busy"]})
                print(f"{size}px gen {g} /{div}: {r['ort_b32_img_s']:.1f} img/s, eff {r['ort_efficiency']:.1%}",
                      flush=True)
    # Speed-up of rounding to 16 over rounding to 8, per model and size.
    gain = {}
    for r in rows:
        if r["divisor"] == 16:
            r8 = next(x for x in rows if x["divisor"] == 8 and x["generation"] == r["generation"]
                      and x["image_size"] == r["image_size"])
            gain[f"gen{r['generation']}_{r['image_size']}px"] = r["ort_b32_img_s"] / r8["ort_b32_img_s"]
    write_result(args.name, {"lineage": args.lineage, "gemm_ceiling_gflops": ceiling.gflops,
                             "gemm_size_gflops": list(ceiling.size_gflops),
                             "speedup_16_over_8": gain, "models": rows,
                             "machine_busy": any(r["machine_busy"] for r in rows)})


if __name__ == "__main__":
    main()
