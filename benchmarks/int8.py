"""fp32 and static-int8 ONNX exports of the ancestor and the chosen
SquishedNets of a main-job run, with val top-1 of both measured in ONNX
Runtime (calibration: 512 real training images).

    python benchmarks/int8.py --run runs/main
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import write_result

from squishednets.export import export_checkpoint
from squishednets.report import choose_squishednets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", default="runs/main")
    ap.add_argument("--calib", type=int, default=512)
    args = ap.parse_args()
    run = Path(args.run)
    lineage = json.loads((run / "evolve" / "lineage.json").read_text())["generations"]
    picks = [("ancestor", lineage[0])] + [(f"SquishedNet-{i + 1}", e) for i, e in enumerate(choose_squishednets(lineage))]
    rows = []
    with tempfile.TemporaryDirectory() as td:
        for name, e in picks:
            info = export_checkpoint(run / "evolve" / e["path"], Path(td) / f"{name}.onnx", int8=True,
                                     calib_images=args.calib)
            rows.append({"name": name, "generation": e["generation"], "size_mb": e["size_mb"],
                         "onnx_bytes": info["bytes"], "int8_bytes": info["int8_bytes"],
                         "fp32_val_top1": info["fp32_val_top1"], "int8_val_top1": info["int8_val_top1"],
                         "pytorch_val_top1": e["top1"], "val_images": info["val_images"],
                         "calibration_images": info["calibration_images"], "max_abs_diff": info["max_abs_diff"]})
            print(rows[-1], flush=True)
    write_result("export_int8", {"run": str(run), "image_size": info["image_size"], "models": rows})


if __name__ == "__main__":
    main()
