"""The tables of a report, built once from the report dict and rendered by rich, Markdown and HTML.

Keeping the table content (which numbers, which is best, what is "n/a") in one place means
the terminal, ``report.md`` and ``report.html`` can never disagree about a result.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

NOT_DEFINED = "n/a"
#: Metrics where a lower value is better; every other metric is better when higher.
LOWER_IS_BETTER = frozenset({"eer", "fpr"})
#: Metrics shown in each cell of a per-group table, in order (one line each). TPR, not ACC: a generator's
#: group shares every real image with the other generators, so its ACC is dominated by the reals.
GROUP_CELL_METRICS = (("auc", "AUC"), ("ap", "AP"), ("tpr", "TPR"))
#: A perturbation moves the reals' scores too: without FPR, a TPR that rose because every image now looks fake
#: would read as robustness.
PERTURBATION_CELL_METRICS = (*GROUP_CELL_METRICS, ("fpr", "FPR"))
#: Columns of the overall table: (metric key, header, shows CI).
OVERALL_COLUMNS = (
    ("auc", "AUC", True), ("ap", "AP", True), ("tpr", "TPR", False), ("fpr", "FPR", False),
    ("tpr_at_fpr_0.01", "TPR@1%", False), ("tpr_at_fpr_0.05", "TPR@5%", False), ("eer", "EER", False),
    ("acc", "ACC", False), ("oracle_acc", "oracle", False),
)
THRESHOLD_NOTE = ("TPR = fakes caught, FPR = reals flagged, ACC: all at each detector's threshold (chosen at 5% FPR "
                  "on its validation split, else 0.5; see the detector lines)")
FOLD_THRESHOLD_NOTE = ("TPR = fakes caught, FPR = reals flagged, ACC: all at the threshold of each fold's detector "
                       "(chosen at 5% FPR on that fold's validation split, else 0.5; each fold's report lists it)")
NO_CI_NOTE = "no intervals here: these pool the folds' test scores (each fold's report has its CIs); "
VIEWS = (
    ("by_modality", "mean_over_modalities", "modality"),
    ("by_generator", "mean_over_generators", "generator"),
    ("by_holdout", "mean_over_holdouts", "held-out fold"),  # leave-one-out folds that hold several generators
)


@dataclass
class Line:
    """One number (already formatted) in a cell, and whether it is the best of its column."""

    text: str
    best: bool = False
    aside: bool = False  # an annotation of the line above (a CI): under it in tables, in brackets in Markdown


@dataclass
class Row:
    """A detector's row: one cell (list of lines) per column, or the reason it failed."""

    name: str
    cells: list[list[Line]] = field(default_factory=list)
    failed: str | None = None


@dataclass
class TableView:
    title: str
    columns: list[str]
    rows: list[Row]
    line_labels: list[str] | None = None  # names of the lines inside each cell (e.g. AUC / AP / ACC)
    note: str = ""
    mark_meaning: str = "best in column"  # what a highlighted line means in this table
    lead_header: str = "detector"


def fmt(value: Any, digits: int = 3) -> str:
    """A metric value for a table: ``n/a`` when it is not defined."""
    if value is None:
        return NOT_DEFINED
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def fmt_ci(ci: Any, digits: int = 3) -> str:
    """``[lo, hi]``, or "" when there is no interval."""
    if not ci or ci[0] is None:
        return ""
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def fmt_sd(sd: float, digits: int = 3) -> str:
    """``+-0.012``: the spread over seeds shown under a mean (ASCII, so every terminal and log reads it)."""
    return f"+-{sd:.{digits}f}"


def fmt_range(ci: Any, digits: int = 3) -> str:
    """``lo-hi``: the compact form of an interval of non-negative metrics, so the overall table fits 80 columns."""
    if not ci or ci[0] is None:
        return ""
    return f"{ci[0]:.{digits}f}-{ci[1]:.{digits}f}"


def detectors(report: dict) -> dict[str, dict]:
    return report.get("detectors") or {}


def is_ok(entry: dict) -> bool:
    return entry.get("status", "ok") == "ok" and "overall" in entry


def failure_reason(entry: dict) -> str:
    return str(entry.get("error") or "no metrics recorded")


def _best_flags(values: list[float | None], metric: str) -> list[bool]:
    """Which values are the best of a column; nothing is marked with fewer than two values to compare.

    Values are compared as displayed (3 decimals), so two detectors that read the same are both marked.
    """
    shown = [None if v is None else round(v, 3) for v in values]
    present = [v for v in shown if v is not None]
    if len(present) < 2:
        return [False] * len(values)
    target = min(present) if metric in LOWER_IS_BETTER else max(present)
    return [v == target for v in shown]


def _mark_best(rows: list[Row], values: dict[tuple[int, int, int], float | None],
               metric_of_line: list[str]) -> None:
    """Set ``best`` on lines: ``values`` maps (row, column, line) to the raw number."""
    columns = {(c, line) for (_, c, line) in values}
    for column, line in columns:
        keys = sorted(k for k in values if k[1] == column and k[2] == line)
        flags = _best_flags([values[k] for k in keys], metric_of_line[line])
        for (r, c, ln), flag in zip(keys, flags):
            rows[r].cells[c][ln].best = flag


RANDOM_INIT_MARK = " (random init)"


def row_name(name: str, entry: dict) -> str:
    """A detector's row label; a run that fell back to random weights (``--allow-random-init``) says so on every row."""
    return name + RANDOM_INIT_MARK if entry.get("random_init") else name


def overall_table(report: dict) -> TableView:
    """Detectors x overall metrics, with bootstrap CIs of AUC and AP."""
    rows, values = [], {}
    for name, entry in detectors(report).items():
        if not is_ok(entry):
            rows.append(Row(name, failed=failure_reason(entry)))
            continue
        overall = entry["overall"]
        r = len(rows)
        cells = []
        for c, (key, _, with_ci) in enumerate(OVERALL_COLUMNS):
            cell = [Line(fmt(overall.get(key)))]
            interval = fmt_range(overall.get(f"{key}_ci")) if with_ci else ""
            if interval:
                cell.append(Line(interval, aside=True))
            elif overall.get(f"{key}_sd") is not None:  # --seeds: a mean over seeds, with its spread
                cell.append(Line(fmt_sd(overall[f"{key}_sd"]), aside=True))
            cells.append(cell)
            values[(r, c, 0)] = overall.get(key)
        rows.append(Row(row_name(name, entry), cells))
    seeds = report.get("seeds") or []
    folds = bool((report.get("holdout") or {}).get("folds"))  # a leave-one-out summary pools several folds
    shown_ci = any(r.cells and len(r.cells[0]) > 1 for r in rows)
    intervals = ("each value is the mean over seeds, +- its standard deviation (the per-seed table has each seed's "
                 "CIs); " if seeds else "AUC and AP with their 95% bootstrap CI; " if shown_ci else
                 NO_CI_NOTE if folds else "no intervals (none asked for, or not defined on this test set); ")
    view = TableView("Overall" + (f" (mean +- sd over seeds {', '.join(map(str, seeds))})" if seeds else ""),
                     [h for _, h, _ in OVERALL_COLUMNS], rows,
                     note=intervals + (FOLD_THRESHOLD_NOTE if folds else THRESHOLD_NOTE) + "; TPR@1%/@5% = best TPR "
                          "with at most 1%/5% of the test reals flagged; oracle = ACC at the best threshold on the "
                          "test set itself (an upper bound, not comparable with ACC).")
    for c, (key, _, _) in enumerate(OVERALL_COLUMNS):
        _mark_best(rows, {k: v for k, v in values.items() if k[1] == c}, [key])
    return view


def group_table(entries: dict[str, dict], view: str, mean_key: str | None, title: str,
                lead_column: str | None = None,
                metrics: tuple[tuple[str, str], ...] = GROUP_CELL_METRICS) -> TableView:
    """Detectors x groups (plus a mean column); each cell holds AUC, AP and ACC@0.5 on three lines.

    ``lead_column`` adds the entry's ``overall`` metrics as the first column (used for perturbations).
    """
    groups = _union_of_groups(entries, view)
    columns = ([lead_column] if lead_column else []) + groups + (["mean"] if mean_key else [])
    rows, values = [], {}
    for name, entry in entries.items():
        if not is_ok(entry):
            rows.append(Row(name, failed=failure_reason(entry)))
            continue
        sources = ([entry.get("overall")] if lead_column else []) + [(entry.get(view) or {}).get(g) for g in groups]
        if mean_key:
            sources.append(entry.get(mean_key))
        r = len(rows)
        cells = []
        for c, group in enumerate(sources):
            cell = []
            for ln, (key, _) in enumerate(metrics):
                value = None if group is None else group.get(key)
                cell.append(Line(fmt(value) if group is not None else "-"))
                values[(r, c, ln)] = value
            cells.append(cell)
        rows.append(Row(row_name(name, entry), cells))
    _mark_best(rows, values, [key for key, _ in metrics])
    flagged = "; FPR = share of its reals flagged" if any(key == "fpr" for key, _ in metrics) else ""
    return TableView(title, columns, rows, line_labels=[label for _, label in metrics],
                     note="TPR = share of the group's fakes caught at the detector's threshold" + flagged + "; '-' : the "
                          "detector was not evaluated on this group; n/a : metric not defined (a single-class group "
                          "has no AUC/AP, an all-real group no TPR).")


def _union_of_groups(entries: dict[str, dict], view: str) -> list[str]:
    seen: dict[str, None] = {}
    for entry in entries.values():
        if is_ok(entry):
            for group in entry.get(view) or {}:
                seen.setdefault(group, None)
    return sorted(seen, key=str)


def view_tables(report: dict) -> list[TableView]:
    """Overall table, then one table per view (modality, generator) for the clean test set."""
    tables = [overall_table(report)]
    if report.get("per_seed"):
        tables.append(seeds_table(report))
    for view, mean_key, noun in VIEWS:
        if view == "by_holdout" and _same_groups(report, view, "by_generator"):
            continue  # one generator per fold: the generator table already is the fold table
        if any(is_ok(e) and e.get(view) for e in detectors(report).values()):
            tables.append(group_table(detectors(report), view, mean_key, f"By {noun}"))
    return tables


#: Columns of the per-seed table: (metric key, header, shows CI).
SEED_COLUMNS = (("auc", "AUC", True), ("ap", "AP", True), ("tpr", "TPR", False), ("fpr", "FPR", False),
                ("acc", "ACC", False))


def seeds_table(report: dict) -> TableView:
    """``--seeds``: each detector's overall metrics per seed (with 95% CIs), then its mean +- sd over seeds."""
    rows = []
    by_detector: dict[str, list[dict]] = {}
    for row in report.get("per_seed") or []:
        by_detector.setdefault(row["detector"], []).append(row)
    for name, seed_rows in by_detector.items():
        for row in seed_rows:
            label = f"{name} seed {row['seed']}"
            if row.get("status") != "ok":
                rows.append(Row(label, failed=str(row.get("error") or "failed")))
                continue
            rows.append(Row(label, [[Line(fmt(row.get(key)))] + ([Line(fmt_range(row.get(f"{key}_ci")), aside=True)]
                                                                 if with_ci and row.get(f"{key}_ci") else [])
                                    for key, _, with_ci in SEED_COLUMNS]))
        overall = (detectors(report).get(name) or {}).get("overall")
        if overall is not None:
            rows.append(Row(f"{name} mean+-sd", [[Line(fmt(overall.get(key)), best=True)]
                                                 + ([Line(fmt_sd(overall[f"{key}_sd"]), aside=True)]
                                                    if overall.get(f"{key}_sd") is not None else [])
                                                 for key, _, _ in SEED_COLUMNS]))
    return TableView("Per seed", [h for _, h, _ in SEED_COLUMNS], rows,
                     note="one training per seed: each seed's metrics with their 95% bootstrap CI (over test "
                          "clusters: sources, or whole scans), then the mean over seeds +- its standard "
                          "deviation (n-1).",
                     mark_meaning="mean over seeds", lead_header="detector / seed")


def _same_groups(report: dict, view: str, other: str) -> bool:
    entries = detectors(report)
    return _union_of_groups(entries, view) == _union_of_groups(entries, other)


def perturbation_tables(report: dict) -> list[TableView]:
    """One table per perturbation (e.g. ``jpeg:50``): overall and per-modality metrics."""
    tables = []
    for perturbation, entries in (report.get("perturbations") or {}).items():
        tables.append(group_table(entries or {}, "by_modality", None,
                                  f"Perturbation {perturbation}", lead_column="overall",
                                  metrics=PERTURBATION_CELL_METRICS))
    return tables


def paired_table(report: dict) -> TableView | None:
    """Paired comparisons ("best vs X"): difference, its bootstrap CI and two-sided p-value."""
    comparisons = report.get("paired") or []
    if not comparisons:
        return None
    rows = []
    for item in comparisons:
        delta = item.get("delta")
        ci = item.get("ci")
        p_value = item.get("p_value")
        rows.append(Row(f"{item.get('a')} vs {item.get('b')}", [
            [Line(str(item.get("metric", "auc")).upper())],
            [Line(NOT_DEFINED if delta is None else f"{delta:+.3f}")],
            [Line(fmt_ci(ci) or NOT_DEFINED)],
            [Line(NOT_DEFINED if p_value is None else _fmt_p(p_value), best=p_value is not None and p_value < 0.05)],
        ]))
    clustered = all(item.get("resampled") in ("clusters", "sources") for item in comparisons)  # "sources": before 9
    unit = (report.get("bootstrap") or {}).get("resamples", "sources") if clustered else "images"
    seeds, folds = comparisons[0].get("seeds"), comparisons[0].get("folds")
    over = " and ".join(part for part in (f"{len(folds)} folds" if folds else "",
                                          f"seeds {', '.join(map(str, seeds))}" if seeds else "") if part)
    paired_on = f"; delta = mean over {over}, paired run by run" if over else ""
    return TableView(f"Paired comparison (same images, paired bootstrap over {unit}{paired_on})",
                     ["metric", "delta", "95% CI", "p"], rows,
                     note="delta = metric(a) - metric(b).", mark_meaning="p < 0.05",
                     lead_header="comparison")


def _fmt_p(p_value: float) -> str:
    return "<0.001" if p_value < 0.001 else f"{p_value:.3f}"


def detector_summaries(report: dict) -> list[str]:
    """One line per detector: weights, preset, train time, throughput, peak memory, warnings (or the failure)."""
    lines = []
    for name, entry in detectors(report).items():
        if entry.get("status", "ok") != "ok":
            lines.append(f"{name}: FAILED - {failure_reason(entry)}")
            continue
        parts = [f"weights={entry.get('weights') or 'unknown'}", f"preset={entry.get('preset') or 'default'}"]
        if entry.get("precision"):
            parts.append(f"precision={entry['precision']}")
        if entry.get("distribution"):
            parts.append(f"from={entry['distribution']} {entry.get('version') or ''}".rstrip())
        parts += _optional_parts(entry)
        warnings = entry.get("warnings") or []
        text = f"{row_name(name, entry)}: " + ", ".join(parts)
        if warnings:
            text += "; warnings: " + " | ".join(str(w) for w in warnings)
        lines.append(text)
    return lines


def _optional_parts(entry: dict) -> Iterable[str]:
    if entry.get("source") == "loaded":
        yield "loaded from checkpoint"
    elif entry.get("train_seconds") is not None:
        yield f"train {entry['train_seconds']:.1f} s"
    if entry.get("threshold") is not None:
        yield f"threshold {entry['threshold']:.3f} ({entry.get('threshold_rule') or 'default'})"
    if entry.get("infer_images_per_s") is not None:
        yield f"{entry['infer_images_per_s']:.1f} img/s"
    if entry.get("peak_memory_mb") is not None:
        yield f"peak {entry['peak_memory_mb']:.0f} MB"
    if entry.get("trainable_params") is not None:
        yield f"{entry['trainable_params']:,} trainable params"
    if entry.get("checkpoint"):
        yield f"checkpoint {entry['checkpoint']}"


def header_lines(report: dict) -> list[str]:
    """Who/what/when of a run: command, protocol, preset, seed, data, version and commit."""
    data = report.get("data") or {}
    env = report.get("environment") or {}
    git = env.get("git") or {}
    commit = git.get("commit")
    lines = [
        f"command: {report.get('command', '')}",
        f"protocol: {report.get('protocol', '')}   preset: {report.get('preset', '')}   "
        + (f"seeds: {', '.join(map(str, report['seeds']))}" if report.get("seeds") else f"seed: {report.get('seed', '')}"),
        (f"data: {data.get('path', '')}   train {data.get('n_train', '?')} / test {data.get('n_test', '?')} images"
         f"   modalities: {', '.join(map(str, data.get('modalities') or [])) or '-'}"
         f"   generators: {', '.join(map(str, data.get('generators') or [])) or '-'}"),
        f"mfx {report.get('mfx_version', '?')}   created {report.get('created', '?')}"
        + (f"   git {commit[:10]}{' (dirty)' if git.get('dirty') else ''}" if commit else "")
        + (f"   device {env.get('device')}" if env.get("device") else ""),
    ]
    if data.get("images_sha256"):
        lines.append(f"images sha256 {str(data['images_sha256'])[:16]}   manifest sha256 "
                     f"{str(data.get('manifest_sha256') or '-')[:16]}"
                     + (f"   built with {data['build_threads']} thread(s)" if data.get("build_threads") else "")
                     + (f"   torch threads {env['torch_threads']}" if env.get("torch_threads") else ""))
    skipped = data.get("skipped") or []
    if skipped:
        lines.append(f"skipped files: {len(skipped)} (first: {skipped[0][0]}: {skipped[0][1]})")
    return lines


def weights_banner(status: str | None, detectors: list[str]) -> str | None:
    """The warning every output repeats when scores come from a randomly initialised backbone."""
    if status != "random-init" or not detectors:
        return None
    names = ", ".join(detectors)
    verb = "runs" if len(detectors) == 1 else "run"
    return (f"RANDOM-INIT WEIGHTS: {names} {verb} on a randomly initialised backbone (no pretrained weights): "
            "the scores check the pipeline, they are not forensic evidence nor the paper's performance")


def banner_lines(report: dict) -> list[str]:
    """Warnings for the top of a report: random-init backbones, and a mix of pretrained and random-init ones."""
    statuses = {name: entry.get("weights_status") for name, entry in detectors(report).items()
                if entry.get("status", "ok") == "ok"}
    random_init = [name for name, status in statuses.items() if status == "random-init"]
    lines = []
    banner = weights_banner("random-init", random_init)
    if banner:
        lines.append(banner)
    pretrained = [name for name, status in statuses.items() if status == "pretrained"]
    if random_init and pretrained:
        lines.append(f"MIXED WEIGHTS: {', '.join(pretrained)} pretrained vs {', '.join(random_init)} random-init: "
                     "differences between them measure the weights, not the methods")
    return lines
