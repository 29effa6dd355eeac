"""Time the headline command: ``mfx compare dski cnnspot univfd`` on the offline benchmark (tiny presets).

The target is <= 15 minutes on a 2-core CPU machine. Run from the repository root::

    HF_HUB_OFFLINE=1 python benchmarks/bench_compare.py            # default benchmark build
    HF_HUB_OFFLINE=1 python benchmarks/bench_compare.py --quick    # the quick build

It builds (or reuses) the benchmark first and times the comparison alone, then
prints the report tables, the wall time per stage, and writes ``bench.json``
into the run directory.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rich.console import Console  # noqa: E402

from medforensics_core.benchmark import default_dataset  # noqa: E402
from medforensics_core.engine.compare import CompareOptions, run_compare  # noqa: E402
from medforensics_core.engine.progress import RichProgress  # noqa: E402
from medforensics_core.report import print_report  # noqa: E402

TARGET_SECONDS = 15 * 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("detectors", nargs="*", default=["dski", "cnnspot", "univfd"])
    parser.add_argument("--quick", action="store_true", help="use the quick benchmark build")
    parser.add_argument("--out", default="runs/bench", help="folder for the run directory")
    parser.add_argument("--epochs", type=int, default=None, help="override every detector's epochs")
    args = parser.parse_args()
    console = Console()

    start = time.perf_counter()
    data = default_dataset(quick=args.quick)
    build_seconds = time.perf_counter() - start

    options = CompareOptions(detectors=args.detectors, quick=args.quick, out=args.out, epochs=args.epochs,
                             label="bench-compare", command="benchmarks/bench_compare.py " + " ".join(args.detectors))
    start = time.perf_counter()
    with RichProgress(console) as progress:
        report, run_dir = run_compare(options, console=console, progress=progress)
    compare_seconds = time.perf_counter() - start

    print_report(console, report)
    result = {"detectors": args.detectors, "data": str(data), "quick": args.quick, "cpu_count": os.cpu_count(),
              "benchmark_build_seconds": round(build_seconds, 1), "compare_seconds": round(compare_seconds, 1),
              "train_seconds": {n: e.get("train_seconds") for n, e in report["detectors"].items()},
              "infer_images_per_s": {n: e.get("infer_images_per_s") for n, e in report["detectors"].items()},
              "n_train": report["data"]["n_train"], "n_test": report["data"]["n_test"],
              "within_target": compare_seconds <= TARGET_SECONDS}
    run_dir.write_json("bench.json", result)
    verdict = "[green]within[/]" if result["within_target"] else "[red]over[/]"
    console.print(f"compare wall time: [bold]{compare_seconds / 60:.1f} min[/] ({verdict} the 15-minute target; "
                  f"benchmark ready in {build_seconds:.0f} s) -> {run_dir.path / 'bench.json'}")
    console.print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
