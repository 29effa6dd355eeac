"""Does a checkpoint's validated threshold hold on the test reals? False-positive rate on both, per modality.

Not a test: run it by hand on a finished leave-one-out ``mfx compare`` run (one seed's folder) that kept its
checkpoints.

    python benchmarks/threshold_transfer.py runs/<run>                       # a single-seed run: every detector
    python benchmarks/threshold_transfer.py runs/<run>/seeds/0 --detectors dski,npr --data <build>   # a merged run
    python benchmarks/threshold_transfer.py runs/<run> --crop tiles     # scored as mfx predict scores (tile max)

Why: ``mfx compare`` fixes each detector's decision threshold at 5 % false positives on the validation
split, and the checkpoint carries it to ``mfx predict``. Whether that operating point transfers is a
question of how far the test reals lie from the validation reals, which the AUC does not show. Each
fold's checkpoint scores the validation split's reals again (the rule must come back at about its 5 %),
and the test reals' scores are read from the fold's results; the table gives the mean over folds of the
share of reals flagged at the checkpoint's threshold, validation / test, overall and per modality. The
validation reals are the manifest's ``val`` split; a protocol that validates a fold on part of them
(the threshold rule in the report says how many) gives an approximate validation share.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from medforensics_core import api
from medforensics_core.data.manifest import read_manifest
from medforensics_core.engine.calibrate import flagged_shares


def validation_reals(manifest, root: Path) -> tuple[list[Path], np.ndarray]:
    """The validation split's real images and their modalities."""
    rows = [r for r in manifest.rows if r.split == "val" and r.label == 0]
    return [root / r.path for r in rows], np.array([r.modality for r in rows])


def test_reals(fold: Path, name: str, root: Path, modality_of: dict[str, str], detector, crop: str
               ) -> tuple[np.ndarray, np.ndarray]:
    """One detector's scores of the fold's test reals and their modalities: from its results file (what the report
    scored: centre crops), or scored again by tiles as ``mfx predict`` scores."""
    result = json.loads((fold / "results" / f"{name}.json").read_text())
    paths = [str(Path(p).relative_to(root)) if Path(p).is_absolute() else p for p in result["test_paths"]]
    real = np.array([p in modality_of for p in paths])
    modalities = np.array([modality_of[p] for p, r in zip(paths, real) if r])
    if crop == "center":
        return np.asarray(result["rows"][name]["scores"][""], dtype=float)[real], modalities
    return api.score(detector, [root / p for p, r in zip(paths, real) if r], crop=crop), modalities


def fold_shares(fold: Path, name: str, root: Path, modality_of: dict[str, str], val: tuple[list[Path], np.ndarray],
                crop: str) -> tuple[dict[str, float], dict[str, float]] | None:
    """The shares of validation and test reals one fold's checkpoint flags at its threshold (None: no threshold)."""
    detector = api.load_detector(fold / "checkpoints" / f"{name}.safetensors")
    threshold = detector.train_info.get("threshold")
    if threshold is None:
        return None
    val_scores = api.score(detector, val[0], crop=crop)
    return (flagged_shares(val_scores, val[1], threshold),
            flagged_shares(*test_reals(fold, name, root, modality_of, detector, crop), threshold))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="one seed's folder of a leave-one-out run (it has folds/)")
    parser.add_argument("--data", type=Path, help="the run's dataset (default: the one its config.json names)")
    parser.add_argument("--detectors", help="comma-separated (default: every detector with a checkpoint)")
    parser.add_argument("--crop", choices=("center", "tiles"), default="center",
                        help="center: as the report scored; tiles: as mfx predict scores by default (max of tiles)")
    args = parser.parse_args()
    if (args.run / "seeds").is_dir():
        raise SystemExit(f"{args.run}: a run of several seeds; pass one seed's folder, e.g. {args.run / 'seeds' / '0'}")
    if not (args.run / "folds").is_dir():
        raise SystemExit(f"{args.run}: no folds/ folder; pass a leave-one-out run that kept its checkpoints")
    configs = [p for p in (args.run / "config.json", args.run.parent.parent / "config.json") if p.exists()]
    if args.data is None and not configs:
        raise SystemExit(f"{args.run}: no config.json names the dataset; pass --data")
    root = args.data or Path(json.loads(configs[0].read_text())["options"]["data"])
    manifest = read_manifest(root / "manifest.csv")
    modality_of = {r.path: r.modality for r in manifest.rows if r.split == "test" and r.label == 0}
    val_paths, val_modalities = validation_reals(manifest, root)
    folds = sorted(p for p in (args.run / "folds").iterdir() if (p / "checkpoints").is_dir())
    names = args.detectors.split(",") if args.detectors else sorted(
        {c.stem for f in folds for c in (f / "checkpoints").glob("*.safetensors")})
    console = Console(width=max(Console().width, 120))
    modalities = sorted(set(val_modalities))
    table = Table(title=f"reals flagged at the checkpoint's threshold, scored by {args.crop}, mean over "
                        f"{len(folds)} folds")
    for column in ["detector", "reals", "all", *modalities]:
        table.add_column(escape(column), justify="left" if column in ("detector", "reals") else "right", no_wrap=True)
    for name in names:
        per_fold = defaultdict(list)
        for fold in folds:
            shares = fold_shares(fold, name, root, modality_of, (val_paths, val_modalities), args.crop)
            if shares is None:
                console.print(f"{escape(name)}: {escape(fold.name)}: no validated threshold in the checkpoint, skipped")
                continue
            for key in shares[0]:
                per_fold[key].append((shares[0][key], shares[1].get(key, float("nan"))))
        for which, label in enumerate(("validation", "test") if per_fold else ()):
            table.add_row(escape(name) if which == 0 else "", label,
                          *(f"{np.mean([pair[which] for pair in per_fold[k]]):.3f}" for k in ["all", *modalities]),
                          end_section=which == 1)
    console.print(table)


if __name__ == "__main__":
    main()
