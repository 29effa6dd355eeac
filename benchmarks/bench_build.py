"""Time the MedForensics-mini builds: ``--quick`` (used by every test suite) and the default build.

Usage: python benchmarks/bench_build.py [--skip-default] [--seed S]
Each build goes into a fresh temporary folder (nothing cached is reused) and the
table reports wall time, CPU time (the build runs one thread, so CPU time is the
wall time an idle machine would show), images written, model fitting, and the
realism verdict from card.json. On a shared machine wall time is pessimistic.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def timed_build(quick: bool, seed: int) -> dict:
    from medforensics_core.benchmark import build_benchmark

    with tempfile.TemporaryDirectory(prefix="mfx-bench-") as tmp:
        started = time.perf_counter()
        folder = build_benchmark(Path(tmp) / "ds", quick=quick, seed=seed)
        wall = time.perf_counter() - started
        info = json.loads((folder / "build.json").read_text(encoding="utf-8"))
        card = json.loads((folder / "card.json").read_text(encoding="utf-8"))
        images = sum(1 for _ in (folder / "manifest.csv").open(encoding="utf-8")) - 1
    fit = sum(t["fit_seconds"] for t in info["trained"])
    return {"build": "quick" if quick else "default", "wall": wall, "cpu": info.get("cpu_seconds", 0.0),
            "images": images, "fit": fit, "size": info["size"], "per_modality": info["per_modality"],
            "realism": card["realism"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-default", action="store_true", help="Only time the quick build.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    results = [timed_build(True, args.seed)]
    if not args.skip_default:
        results.append(timed_build(False, args.seed))
    table = Table(title=f"MedForensics-mini build times ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})")
    for column in ("build", "size px", "reals/modality", "images", "model fitting s", "wall s", "CPU s",
                   "first-order AUC <= 0.80", "realism target"):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(r["build"], str(r["size"]), str(r["per_modality"]), str(r["images"]), f"{r['fit']:.1f}",
                      f"{r['wall']:.1f}", f"{r['cpu']:.1f}", f"{r['realism']['share_at_most_0.80']:.0%}",
                      "met" if r["realism"]["meets_target"] else "not met")
    Console().print(table)


if __name__ == "__main__":
    main()
