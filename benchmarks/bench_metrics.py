"""Bootstrap cost, measured side by side: per-image resampling vs resampling source clusters.

Not a test (timings depend on the machine's load): run it by hand and compare the ratio.

    python benchmarks/bench_metrics.py                    # 5,000 images, 1,000 resamples
    python benchmarks/bench_metrics.py --images 20000 --per-source 4
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from medforensics_core import metrics


def _time(fn, repeats: int) -> float:
    """Fastest of ``repeats`` calls: the least disturbed by other processes on a shared machine."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--per-source", type=int, default=3, help="images sharing one source cluster")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, args.images)
    scores = labels * 0.3 + rng.random(args.images)
    clusters = np.arange(args.images) // args.per_source
    metrics.bootstrap_ci(labels[:100], scores[:100], n_boot=10)  # warm-up (imports, caches)
    per_image = _time(lambda: metrics.bootstrap_ci(labels, scores, metric="auc", n_boot=args.n_boot), args.repeats)
    per_source = _time(lambda: metrics.bootstrap_ci(labels, scores, metric="auc", n_boot=args.n_boot,
                                                    clusters=clusters), args.repeats)
    table = Table(title=f"AUC bootstrap, {args.images} images, {args.n_boot} resamples (fastest of {args.repeats})")
    for column in ("resampling", "seconds", "ratio"):
        table.add_column(column)
    table.add_row("images", f"{per_image:.3f}", "1.00")
    table.add_row(f"sources ({args.per_source} images each)", f"{per_source:.3f}", f"{per_source / per_image:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
