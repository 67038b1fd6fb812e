"""fp32 and static-int8 ONNX exports of the ancestor and the chosen
SquishedNets of a main-job run, in each int8 mode: test top-1 of fp32 and
int8 measured in ONNX Runtime (calibration: 512 real training images), and
images/s at batch 32 of both through the benchmark's session factory.

On x86 CPUs without VNNI the full-range u8s8 mode saturates and loses
points; the CPU flags in the JSON say which kind of machine produced it.

    python benchmarks/int8.py --run runs/main
    python benchmarks/int8.py --run runs/main --modes reduce_range,u8u8,u8s8_full
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import write_result

from squishednets.errors import ExportError
from squishednets.export import INT8_MODES, export_checkpoint
from squishednets.records import Lineage
from squishednets.report import choose_squishednets

KEEP = ("int8_bytes", "int8_config", "calibration_images", "test_split", "test_images", "fp32_test_top1",
        "int8_test_top1", "fp32_b32_img_s", "int8_b32_img_s", "int8_speedup", "speed_threads", "int8_warning",
        "max_abs_diff", "real_images", "real_max_abs_diff", "real_top1_agreement")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/main")
    ap.add_argument("--calib", type=int, default=512)
    ap.add_argument("--modes", default=",".join(INT8_MODES),
                    help=f"comma-separated int8 modes (default: all of {', '.join(INT8_MODES)})")
    ap.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads for the speed figures (0: all cores)")
    ap.add_argument("--name", default="export_int8", help="result file name (benchmarks/results/NAME.json)")
    args = ap.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(INT8_MODES))
    if unknown:
        ap.error(f"unknown --modes {', '.join(unknown)}; choose from {', '.join(INT8_MODES)}")
    run = Path(args.run)
    lineage = Lineage.load(run / "evolve").generations
    picks = [("ancestor", lineage[0])] + [(f"SquishedNet-{i + 1}", e) for i, e in enumerate(choose_squishednets(lineage))]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as td:
        for name, e in picks:
            for mode in modes:
                row = {"name": name, "generation": e.generation, "int8_mode": mode, "size_mb": e.size_mb,
                       "pytorch_heldout_top1": e.heldout_top1, "pytorch_test_top1": e.test_top1}
                try:
                    info = export_checkpoint(run / "evolve" / e.path, Path(td) / f"{name}.onnx", int8=True,
                                             calib_images=args.calib, int8_mode=mode, threads=args.threads)
                except ExportError as err:
                    # One dead or unexportable network must not cost the other rows.
                    rows.append({**row, "error": str(err)})
                    print(f"{name} {mode}: {err}", flush=True)
                    continue
                rows.append({**row, "onnx_bytes": info["bytes"], "image_size": info["image_size"],
                             "int8_top1_drop_points": 100 * (info["fp32_test_top1"] - info["int8_test_top1"]),
                             **{k: info[k] for k in KEEP}})
                print({k: rows[-1][k] for k in ("name", "int8_mode", "fp32_test_top1", "int8_test_top1",
                                                "int8_b32_img_s", "int8_speedup")}, flush=True)
    sizes = sorted({r["image_size"] for r in rows if "image_size" in r})
    write_result(args.name, {"run": str(run), "image_size": sizes[0] if len(sizes) == 1 else sizes, "modes": modes,
                             "models": rows})


if __name__ == "__main__":
    main()
