"""Held-out AUC per generator setting of MedForensics-mini (leave-one-generator-out, ``freq`` probe).

Usage: python benchmarks/difficulty.py [DATASET] [--quick] [--detector freq]
Without DATASET, the default build (or the --quick build) is used, built on first use.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", nargs="?", type=Path)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--detector", default="freq")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from medforensics_core.benchmark import default_dataset
    from medforensics_core.benchmark.difficulty import hard_settings, leave_one_generator_out

    console = Console()
    dataset = args.dataset or default_dataset(quick=args.quick)
    started = time.perf_counter()
    results = leave_one_generator_out(dataset, detector=args.detector)
    table = Table(title=f"held-out AUC, {args.detector} trained on the other generators ({dataset.name})")
    for column in ("held-out setting", "AUC", "train images", "test images"):
        table.add_column(column, justify="right" if column != "held-out setting" else "left")
    for r in results:
        style = "bold green" if r.auc < 0.9 else ""
        table.add_row(r.setting, f"[{style}]{r.auc:.3f}[/]" if style else f"{r.auc:.3f}", str(r.train_images),
                      str(r.test_images))
    console.print(table)
    hard = hard_settings(results)
    console.print(f"settings below AUC 0.9: {', '.join(hard) or 'none'} ({len(hard)}); "
                  f"{time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
