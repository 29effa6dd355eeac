"""A leave-one-out comparison's paired tests again, resampling whole slices and whole scan files instead of crops.

Not a test: run it by hand on a finished ``mfx compare`` run of MedForensics-mini and quote the coarsest level.

    python benchmarks/paired_by_scan.py runs/<run>                 # best detector vs every other one
    python benchmarks/paired_by_scan.py runs/<run> --against dski --n-boot 1000

Why: in MedForensics-mini a source is one 128-pixel crop (a real and the fakes made from it),
written by the builder as ``package:file:frame:region``. Crops of one slice, and slices of one
volume, share the patient, the scanner and the anatomy, so they are not independent: intervals that
resample crops come out too narrow (the default build's 544 test images are 272 crops of 44 slices
of 19 files). Since builder 9 the manifest's ``scan`` column names each crop's file and ``mfx
compare`` resamples files itself; runs on a builder-8 dataset resampled crops. This script reruns
the report's test -- :func:`medforensics_core.metrics.paired_bootstrap_over_folds`,
one draw per resample shared by every fold, seeds paired -- with each test image's source cut to
its slice (``package:file:frame``) and to its file (``package:file``), beside the crop level (which
reproduces a builder-8 report's test up to the bootstrap's draws: the images are taken in another
order; the file level is what a builder-9 report tests). A manifest whose sources do not follow that pattern keeps
whole sources at every level.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from sklearn.metrics import roc_auc_score

from medforensics_core.data.manifest import read_manifest
from medforensics_core.metrics import FoldRuns, paired_bootstrap_over_folds

LEVELS = {
    "crop": lambda source: source,
    "slice": lambda source: ":".join(source.split(":")[:3]),
    "file": lambda source: ":".join(source.split(":")[:2]),
}


def seed_dirs(run: Path, config: dict) -> dict[int, Path]:
    """Each seed's folder of the run (the run itself for a single-seed run)."""
    seeds = config["options"].get("seeds") or [config["options"]["seed"]]
    return {s: run / "seeds" / str(s) for s in seeds} if (run / "seeds").is_dir() else {seeds[0]: run}


def load_scores(fold_dir: Path, name: str, root: Path) -> dict[Path, float]:
    """One detector's test scores of one fold, by resolved image path."""
    result = json.loads((fold_dir / "results" / f"{name}.json").read_text())
    paths = [Path(p) if Path(p).is_absolute() else root / p for p in result["test_paths"]]
    return dict(zip(paths, result["rows"][name]["scores"][""]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished leave-one-generator-out run directory")
    parser.add_argument("--against", help="the detector every other one is compared with (default: the best)")
    parser.add_argument("--n-boot", type=int, default=1000)
    args = parser.parse_args()
    config = json.loads((args.run / "config.json").read_text())
    data = Path(config["options"]["data"])
    manifest = read_manifest(data / "manifest.csv" if data.is_dir() else data)
    rows = {row.resolved(manifest.root): row for row in manifest.rows}
    dirs = seed_dirs(args.run, config)
    folds = sorted(p.name for p in (next(iter(dirs.values())) / "folds").iterdir() if p.is_dir())
    names = config["options"]["detectors"]
    scores = {(s, f, n): load_scores(d / "folds" / f, n, manifest.root) for s, d in dirs.items() for f in folds
              for n in names}
    paths = {f: sorted(scores[(next(iter(dirs)), f, names[0])]) for f in folds}
    labels = {f: np.array([rows[p].label for p in paths[f]]) for f in folds}

    def runs(name: str, fold: str) -> list[np.ndarray]:
        return [np.array([scores[(s, fold, name)][p] for p in paths[fold]]) for s in dirs]

    mean_auc = {n: np.mean([roc_auc_score(labels[f], r) for f in folds for r in runs(n, f)]) for n in names}
    best = args.against or max(names, key=mean_auc.get)
    table = Table(title=f"{best} vs each detector: mean held-out AUC over {len(folds)} folds x {len(dirs)} seeds, "
                        f"paired bootstrap ({args.n_boot} resamples) of crops, slices and scan files")
    table.add_column("comparison")
    table.add_column("delta", justify="right")
    counts, cells = [], {other: [] for other in names if other != best}
    for level, cut in LEVELS.items():
        clusters = {f: [cut(rows[p].source_key) for p in paths[f]] for f in folds}
        counts.append(f"{level}: {len({c for f in folds for c in clusters[f]})}")
        table.add_column(f"{level}: 95% CI, p", justify="right")
        for other, row in cells.items():
            test = paired_bootstrap_over_folds([FoldRuns(labels[f], clusters[f], runs(best, f), runs(other, f))
                                                for f in folds], n_boot=args.n_boot,
                                               seed=config["options"]["seed"])
            if not row:
                row.append(f"{test['delta']:+.3f}")
            lo, hi = test["ci"]
            row.append(f"[{lo:+.3f}, {hi:+.3f}], p = {test['p_value']:.3f}")
    for other, row in cells.items():
        table.add_row(f"{best} vs {other}", *row)
    console = Console(width=160)
    console.print(table)
    console.print(f"clusters in the test sets (union over folds): {', '.join(counts)}")


if __name__ == "__main__":
    main()
