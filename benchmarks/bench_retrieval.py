"""Exact vs approximate retrieval, measured: build time, search throughput and recall@k at 100k / 1M vectors.

Not a test: run it by hand and paste the table into an issue or the docs.

    HF_HUB_OFFLINE=1 python benchmarks/bench_retrieval.py                         # 100k and 1M, 64-d
    HF_HUB_OFFLINE=1 python benchmarks/bench_retrieval.py --sizes 100000 --dim 768 --ef-search 128 512

Both retrievers are the registered plugins (``faiss-flat``, ``faiss-hnsw``),
so the numbers include their L2 normalisation and bookkeeping. Vectors are
isotropic Gaussian by default, the hardest case for any approximate index (no
cluster structure); ``--clusters N`` draws them around N centres instead, closer
to real embedding banks. Recall@k is measured against the exact search on the
same queries. Timings are wall-clock with ``--threads`` faiss threads; on a
shared machine rerun and compare ratios rather than absolute numbers.
"""

from __future__ import annotations

import argparse
import os
import time

import faiss
import numpy as np
from rich.console import Console
from rich.table import Table

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from medforensics_core.plugins import get_registry  # noqa: E402


def make_vectors(rng: np.random.Generator, n: int, dim: int, clusters: int) -> np.ndarray:
    """``n`` float32 vectors: isotropic Gaussian, or Gaussian blobs around ``clusters`` centres."""
    if clusters <= 0:
        return rng.standard_normal((n, dim), dtype=np.float32)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    return centres[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, dim), dtype=np.float32)


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth)]))


def measure(size: int, args: argparse.Namespace, console: Console) -> list[dict]:
    """Build both banks on ``size`` vectors and search them; one row per (retriever, ef_search)."""
    rng = np.random.default_rng(args.seed)
    bank = make_vectors(rng, size, args.dim, args.clusters)
    queries = make_vectors(rng, args.queries, args.dim, args.clusters)
    labels = np.zeros(size, dtype=np.int64)
    registry = get_registry()

    flat = registry.retriever("faiss-flat")()
    _, flat_build = timed(flat.add, bank, labels)
    (_, truth), flat_search = timed(flat.search, queries, args.k)
    console.log(f"{size:,}: flat built in {flat_build:.2f} s, searched in {flat_search:.2f} s")
    rows = [{"size": size, "name": "faiss-flat", "ef": "-", "build": flat_build, "search": flat_search,
             "recall": 1.0, "flat_build": flat_build, "flat_search": flat_search}]

    hnsw_cls = registry.retriever("faiss-hnsw")
    hnsw = hnsw_cls(hnsw_cls.make_config(m=args.m, ef_construction=args.ef_construction))
    _, hnsw_build = timed(hnsw.add, bank, labels)
    console.log(f"{size:,}: hnsw (M={args.m}, efConstruction={args.ef_construction}) built in {hnsw_build:.1f} s")
    for ef in args.ef_search:
        hnsw.config.ef_search = ef
        (_, found), hnsw_search = timed(hnsw.search, queries, args.k)
        rows.append({"size": size, "name": "faiss-hnsw", "ef": str(ef), "build": hnsw_build,
                     "search": hnsw_search, "recall": recall_at_k(found, truth),
                     "flat_build": flat_build, "flat_search": flat_search})
    return rows


def render(rows: list[dict], args: argparse.Namespace) -> Table:
    data = f"{'isotropic' if args.clusters <= 0 else f'{args.clusters}-cluster'} {args.dim}-d"
    table = Table(title=f"Retrieval: exact vs HNSW ({data}, {args.queries} queries, k={args.k}, "
                        f"{args.threads} threads)")
    for column in ("vectors", "retriever", "efSearch", "build s", "build / flat", "queries/s",
                   "search speed-up vs flat", f"recall@{args.k}"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(f"{row['size']:,}", row["name"], row["ef"], f"{row['build']:.2f}",
                      f"{row['build'] / row['flat_build']:.1f}x", f"{args.queries / row['search']:,.0f}",
                      f"{row['flat_search'] / row['search']:.2f}x", f"{row['recall']:.3f}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--m", type=int, default=32, help="HNSW graph degree (faiss-hnsw default 32)")
    parser.add_argument("--ef-construction", type=int, default=40)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--clusters", type=int, default=0, help="0 = isotropic Gaussian vectors")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    console = Console(width=140)
    rows = [row for size in args.sizes for row in measure(size, args, console)]
    console.print(render(rows, args))


if __name__ == "__main__":
    main()
