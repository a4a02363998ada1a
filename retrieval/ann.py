"""Approximate nearest-neighbour index over item vectors (inner product), tuned at build time.

:meth:`AnnIndex.build` picks an index by catalog size and memory budget:

* ``flat``   exact ``IndexFlatIP``, for catalogs under ``exact_below`` items;
* ``hnsw``   ``IndexHNSWFlat`` (inner product) for mid-size catalogs whose float vectors and graph
  fit the budget;
* ``ivf_sq8`` / ``ivf_pq``  an inverted file over 8-bit scalar or product-quantised codes when the
  float vectors do not fit the budget (or the catalog passes ``ivf_threshold``). The top
  ``k * refine_factor`` codes are re-scored exactly against the float vectors, which are saved as
  a separate ``.npy`` and memory-mapped on load, so only the codes need to stay resident.

It then measures recall@``k_tune`` against exact search on a seeded sample of queries and raises
``efSearch`` / ``nprobe`` (and, for IVF, the re-scoring depth) until ``recall_target`` is met.
``tandem build`` tunes at the depth the pipeline asks of every source (``per_source_k``), not at 10:
an HNSW beam narrower than the ``k`` asked for returns mostly wrong neighbours past the first few
(on Home Depot's text index, recall@200 of real search queries was 0.34 with the beam of 10 that
tuning at k = 10 chose). For the same reason :meth:`AnnIndex.search` never searches HNSW with a
beam narrower than its ``k`` (``efSearch = max(ef_search, k)``, per call). The
factory string, parameters, measured recall and the whole tuning curve are in :meth:`AnnIndex.info`
(which goes into the bundle manifest). Callers normalise vectors themselves for cosine similarity.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tandem.retrieval.progress import Progress

__all__ = ["ANN_KINDS", "AnnConfig", "AnnIndex"]

log = logging.getLogger(__name__)

#: Index kinds :class:`AnnConfig.kind` may force ("auto" lets the size decide).
ANN_KINDS: tuple[str, ...] = ("flat", "hnsw", "ivf_sq8", "ivf_pq")

_FORMAT_VERSION = 1
_INDEX_FILE = "ann.faiss"
_META_FILE = "ann.json"
_VECTORS_FILE = "ann_vectors.npy"
_EF_STEPS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 4096)
_MAX_TRAIN = 100_000
_MAX_REFINE = 64
_DEFAULT_K_TUNE = 10


@dataclass(frozen=True)
class AnnConfig:
    """How :meth:`AnnIndex.build` chooses and tunes an index.

    ``recall_target``: recall@``k_tune`` against exact search that tuning must reach (0, 1].
    ``k_tune``: the depth tuning measures recall at; None (the default): the depth callers search
    at, which ``tandem build`` sets to the pipeline's ``per_source_k`` (10 where no caller says).
    ``memory_budget_mb``: resident size allowed for the index (float vectors for flat/HNSW plus the
    graph; codes for IVF). ``exact_below``: catalogs with fewer items get exact search.
    ``hnsw_m`` / ``hnsw_ef_construction``: HNSW graph degree and build-time beam.
    ``ivf_threshold``: catalogs with at least this many items use IVF even if HNSW would fit.
    ``ivf_nlist``: inverted lists (None: about ``4 * sqrt(n)``). ``pq_m``: PQ sub-quantisers (None:
    the largest divisor of the dimension that is at most ``d / 4``). ``refine_factor``: first
    re-scoring depth for IVF (``k * refine_factor`` candidates). ``n_tune_queries``: sampled
    queries for tuning; ``seed`` seeds sampling and k-means. ``kind``: "auto", one of
    :data:`ANN_KINDS` to force it, or "ivf" (an inverted file: SQ8 codes when they fit the memory
    budget, PQ codes otherwise).
    """

    recall_target: float = 0.95
    memory_budget_mb: float = 1024.0
    exact_below: int = 50_000
    hnsw_m: int = 32
    hnsw_ef_construction: int = 100
    ivf_threshold: int = 2_000_000
    ivf_nlist: int | None = None
    pq_m: int | None = None
    refine_factor: int = 4
    k_tune: int | None = None
    n_tune_queries: int = 500
    seed: int = 0
    kind: str = "auto"

    def __post_init__(self) -> None:
        if not 0.0 < self.recall_target <= 1.0:
            raise ValueError(f"AnnConfig.recall_target must be in (0, 1], got {self.recall_target}")
        if not self.memory_budget_mb > 0:
            raise ValueError(f"AnnConfig.memory_budget_mb must be positive, got {self.memory_budget_mb}")
        for name in ("exact_below", "ivf_threshold"):
            if getattr(self, name) < 0:
                raise ValueError(f"AnnConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 4 <= self.hnsw_m <= 256:
            raise ValueError(f"AnnConfig.hnsw_m must be in [4, 256], got {self.hnsw_m}")
        if self.hnsw_ef_construction < self.hnsw_m:
            raise ValueError(f"AnnConfig.hnsw_ef_construction must be >= hnsw_m ({self.hnsw_m}), "
                             f"got {self.hnsw_ef_construction}")
        if self.ivf_nlist is not None and self.ivf_nlist < 1:
            raise ValueError(f"AnnConfig.ivf_nlist must be >= 1 or None, got {self.ivf_nlist}")
        if self.pq_m is not None and self.pq_m < 1:
            raise ValueError(f"AnnConfig.pq_m must be >= 1 or None, got {self.pq_m}")
        if not 1 <= self.refine_factor <= _MAX_REFINE:
            raise ValueError(f"AnnConfig.refine_factor must be in [1, {_MAX_REFINE}], got {self.refine_factor}")
        if self.k_tune is not None and self.k_tune < 1:
            raise ValueError(f"AnnConfig.k_tune must be >= 1 or None, got {self.k_tune}")
        for name in ("n_tune_queries",):
            if getattr(self, name) < 1:
                raise ValueError(f"AnnConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.kind not in ("auto", "ivf") and self.kind not in ANN_KINDS:
            raise ValueError(f"AnnConfig.kind must be 'auto', 'ivf' or one of {', '.join(ANN_KINDS)}; "
                             f"got {self.kind!r}")


def _faiss() -> Any:
    import faiss

    return faiss


def _choose_kind(n: int, d: int, config: AnnConfig) -> str:
    budget = config.memory_budget_mb * 2**20
    sq8_fits = n * d * 1.0 + 8.0 * n <= budget
    if config.kind == "ivf":
        return "ivf_sq8" if sq8_fits else "ivf_pq"
    if config.kind != "auto":
        return config.kind
    flat_bytes = 4.0 * n * d
    hnsw_bytes = flat_bytes + n * (2 * config.hnsw_m * 4) * 1.1
    if n < config.exact_below and flat_bytes <= budget:
        return "flat"
    if n < config.ivf_threshold and hnsw_bytes <= budget:
        return "hnsw"
    return "ivf_sq8" if sq8_fits else "ivf_pq"


def _pq_m(d: int, config: AnnConfig) -> int:
    if config.pq_m is not None:
        if d % config.pq_m:
            raise ValueError(f"AnnConfig.pq_m={config.pq_m} must divide the vector dimension {d}")
        return config.pq_m
    return max(m for m in range(1, max(1, d // 4) + 1) if d % m == 0)


def _nlist(n: int, config: AnnConfig) -> int:
    if config.ivf_nlist is not None:
        if config.ivf_nlist > n:
            raise ValueError(f"AnnConfig.ivf_nlist={config.ivf_nlist} exceeds the {n} vectors; lower it")
        return config.ivf_nlist
    # faiss wants ~39 training points per centroid
    return int(max(1, min(round(4 * math.sqrt(n)), n // 39)))


def _factory(kind: str, n: int, d: int, config: AnnConfig) -> str:
    if kind == "flat":
        return "Flat"
    if kind == "hnsw":
        return f"HNSW{config.hnsw_m},Flat"
    nlist = _nlist(n, config)
    if kind == "ivf_sq8":
        return f"IVF{nlist},SQ8"
    # 8-bit codes need 256 centroids per sub-quantiser; small sets get fewer bits
    nbits = int(min(8, max(1, math.floor(math.log2(max(2, n // 39))))))
    return f"IVF{nlist},PQ{_pq_m(d, config)}x{nbits}"


def _exact(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    faiss = _faiss()
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    return flat.search(queries, k)[1]


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row of ``truth`` (int64 (q, k)) present in the same row of ``found``."""
    k = truth.shape[1]
    hits = (found[:, :, None] == truth[:, None, :]) & (truth[:, None, :] >= 0)
    valid = np.maximum((truth >= 0).sum(axis=1), 1)
    return float((hits.any(axis=1).sum(axis=1) / np.minimum(valid, k)).mean())


class AnnIndex:
    """An inner-product index over float32 (n, d) vectors; row ``i`` is id ``i``.

    Build with :meth:`build`, query with :meth:`search`, persist with :meth:`save` / :meth:`load`.
    """

    def __init__(self, index: Any, kind: str, factory: str, params: dict[str, int], n: int, d: int,
                 vectors: np.ndarray | None = None, tuning: dict[str, Any] | None = None) -> None:
        self._index = index
        self.kind = kind
        self.factory = factory
        self.params = dict(params)
        self.n = int(n)
        self.d = int(d)
        self._vectors = vectors
        self._tuning = tuning or {}
        self._apply_params()

    # -- building ------------------------------------------------------------------------
    @classmethod
    def build(cls, vectors: np.ndarray, config: AnnConfig | None = None,
              tune_queries: np.ndarray | None = None) -> AnnIndex:
        """Index float32 (n, d) ``vectors`` and tune it to ``config.recall_target``.

        ``tune_queries`` float32 (q, d): queries to tune on (e.g. a sample of user vectors);
        None samples ``n_tune_queries`` of the indexed vectors (seeded).
        """
        config = config or AnnConfig()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] < 1:
            raise ValueError(f"AnnIndex.build needs float32 vectors of shape (n, d), got {vectors.shape}")
        if not np.isfinite(vectors).all():
            raise ValueError("AnnIndex.build: vectors contain NaN or inf; fix the encoder output first")
        n, d = vectors.shape
        kind = _choose_kind(n, d, config)
        if kind != "flat" and n < 2:
            kind = "flat"
        if kind.startswith("ivf") and n < 39:
            raise ValueError(f"AnnConfig.kind={kind!r} needs at least 39 vectors to train, got {n}; "
                             "use kind='flat' or 'auto' for tiny catalogs")
        faiss = _faiss()
        factory = _factory(kind, n, d, config)
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
        params: dict[str, int] = {}
        rng = np.random.default_rng(config.seed)
        if kind == "hnsw":
            index.hnsw.efConstruction = config.hnsw_ef_construction
            params["ef_search"] = _EF_STEPS[0]
        elif kind.startswith("ivf"):
            ivf = faiss.extract_index_ivf(index)
            ivf.cp.seed = config.seed
            if kind == "ivf_pq":
                # polysemous codes serve Hamming pre-filtering, which we never use; training them
                # dominates build time
                ivfpq = faiss.downcast_index(index)
                ivfpq.do_polysemous_training = False
                ivfpq.pq.cp.seed = config.seed
            train = vectors if n <= _MAX_TRAIN else vectors[np.sort(rng.choice(n, _MAX_TRAIN, replace=False))]
            index.train(train)
            params["nprobe"] = 1
            params["refine_factor"] = config.refine_factor
        index.add(vectors)
        ann = cls(index, kind, factory, params, n, d, vectors if kind.startswith("ivf") else None)
        ann._tune(vectors, config, tune_queries, rng)
        log.info("ann index %s (%s) over %d x %d: %s, recall@%d %.3f", kind, factory, n, d, ann.params,
                 ann._tuning.get("k", 0), ann._tuning.get("recall", 1.0))
        return ann

    def _tune(self, vectors: np.ndarray, config: AnnConfig, queries: np.ndarray | None,
              rng: np.random.Generator) -> None:
        k = min(config.k_tune or _DEFAULT_K_TUNE, self.n)
        if k < 1:
            self._tuning = {"k": 0, "recall": 1.0, "target": config.recall_target, "curve": [], "met": True}
            return
        if queries is None:
            q = min(config.n_tune_queries, self.n)
            queries = vectors[np.sort(rng.choice(self.n, q, replace=False))]
        queries = self._check_queries(queries)
        if self.kind == "flat":
            self._tuning = {"k": k, "recall": 1.0, "target": config.recall_target, "curve": [], "met": True,
                            "n_queries": int(queries.shape[0])}
            return
        truth = _exact(vectors, queries, k)
        curve: list[dict[str, Any]] = []
        best: dict[str, Any] | None = None
        candidates = self._candidate_params(config, k)
        bar = Progress(f"ann tuning {self.factory}", len(candidates), unit="setting", logger=log)
        for params in candidates:
            self.params.update(params)
            self._apply_params()
            recall = _recall(self.search(queries, k)[1], truth)
            point = {**params, "recall": round(recall, 5)}
            curve.append(point)
            bar.update(1, **point)
            if best is None or recall > best["recall"]:
                best = point
            if recall >= config.recall_target:
                best = point
                break
        bar.close()
        assert best is not None
        self.params.update({key: v for key, v in best.items() if key != "recall"})
        self._apply_params()
        met = best["recall"] >= config.recall_target
        if not met:
            log.warning("ann index %s reached recall@%d %.3f < target %.3f; raise the memory budget or "
                        "force kind='hnsw'/'flat'", self.factory, k, best["recall"], config.recall_target)
        self._tuning = {"k": k, "recall": best["recall"], "target": config.recall_target, "curve": curve,
                        "met": met, "n_queries": int(queries.shape[0])}

    def _candidate_params(self, config: AnnConfig, k: int) -> list[dict[str, int]]:
        if self.kind == "hnsw":
            steps = [ef for ef in _EF_STEPS if ef >= k] or [k]
            if steps[0] > k:
                steps.insert(0, k)
            return [{"ef_search": ef} for ef in steps]
        nlist = self._ivf().nlist
        probes = sorted({min(nlist, 2**i) for i in range(int(math.log2(nlist)) + 2)})
        out = []
        factor = config.refine_factor
        while True:
            out += [{"nprobe": p, "refine_factor": factor} for p in probes]
            if factor >= _MAX_REFINE:
                return out
            factor = min(_MAX_REFINE, factor * 2)
            probes = probes[-1:]  # with every list probed, only deeper re-scoring can help

    def _ivf(self) -> Any:
        return _faiss().extract_index_ivf(self._index)

    def _apply_params(self) -> None:
        if self.kind == "hnsw" and "ef_search" in self.params:
            self._index.hnsw.efSearch = int(self.params["ef_search"])
        elif self.kind.startswith("ivf") and "nprobe" in self.params:
            self._ivf().nprobe = int(self.params["nprobe"])

    # -- searching -----------------------------------------------------------------------
    def _check_queries(self, queries: np.ndarray) -> np.ndarray:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        if queries.ndim != 2 or queries.shape[1] != self.d:
            raise ValueError(f"AnnIndex.search: queries must have shape (q, {self.d}), got {queries.shape}")
        return queries

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` ids by inner product for float32 (q, d) ``queries``.

        Returns ``scores`` float32 (q, k) and ``ids`` int64 (q, k), best first; when fewer than
        ``k`` ids are found (``k > n`` included) the rest is padded with id -1 and score -inf.
        """
        queries = self._check_queries(queries)
        q = queries.shape[0]
        if k < 1:
            raise ValueError(f"AnnIndex.search: k must be >= 1, got {k}")
        kk = min(k, self.n)
        if kk == 0 or q == 0:
            return np.full((q, k), -np.inf, dtype=np.float32), np.full((q, k), -1, dtype=np.int64)
        if self._vectors is not None:
            s, i = self._rescored(queries, kk)
        elif self.kind == "hnsw":
            # a beam narrower than k returns wrong neighbours past the first few; per-call parameters
            # leave the index untouched for concurrent searches at other depths
            ef = max(int(self.params.get("ef_search", kk)), kk)
            s, i = self._index.search(queries, kk, params=_faiss().SearchParametersHNSW(efSearch=ef))
        else:
            s, i = self._index.search(queries, kk)
        i = np.asarray(i, dtype=np.int64)
        s = np.asarray(s, dtype=np.float32)
        if (i < 0).any():
            s = np.where(i >= 0, s, np.float32(-np.inf))
        if kk == k:
            return s, i
        scores = np.full((q, k), -np.inf, dtype=np.float32)
        ids = np.full((q, k), -1, dtype=np.int64)
        scores[:, :kk] = s
        ids[:, :kk] = i
        return scores, ids

    def _rescored(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """IVF: the top ``k * refine_factor`` codes, re-scored exactly against the float vectors."""
        depth = min(self.n, k * int(self.params.get("refine_factor", 1)))
        _, cand = self._index.search(queries, depth)
        assert self._vectors is not None
        safe = np.maximum(cand, 0)
        exact = np.einsum("qd,qcd->qc", queries, np.asarray(self._vectors[safe.ravel()]).reshape(
            *safe.shape, self.d))
        exact[cand < 0] = -np.inf
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(exact, order, axis=1), np.take_along_axis(cand, order, axis=1)

    # -- description and persistence -------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """What the bundle manifest records: kind, factory string, parameters, size, recall and
        the tuning curve (one point per parameter setting tried)."""
        return {"kind": self.kind, "factory": self.factory, "metric": "inner_product", "n": self.n,
                "d": self.d, "params": dict(self.params), "tuning": self._tuning}

    def save(self, folder: Path) -> list[Path]:
        """Write ``ann.faiss`` (faiss.write_index), ``ann.json`` and for IVF ``ann_vectors.npy``."""
        faiss = _faiss()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        written = [folder / _INDEX_FILE]
        faiss.write_index(self._index, str(written[0]))
        if self._vectors is not None:
            written.append(folder / _VECTORS_FILE)
            np.save(written[-1], np.asarray(self._vectors, dtype=np.float32), allow_pickle=False)
        meta = {"format_version": _FORMAT_VERSION, "faiss_version": faiss.__version__, **self.info()}
        written.append(folder / _META_FILE)
        written[-1].write_text(json.dumps(meta, indent=2))
        return written

    @classmethod
    def load(cls, folder: Path, mmap: bool = True) -> AnnIndex:
        """Read back what :meth:`save` wrote; IVF float vectors are memory-mapped unless ``mmap=False``."""
        folder = Path(folder)
        meta_path = folder / _META_FILE
        if not meta_path.exists():
            raise FileNotFoundError(f"{meta_path} is missing; was this folder written by AnnIndex.save?")
        meta = json.loads(meta_path.read_text())
        version = int(meta.get("format_version", 0))
        if version > _FORMAT_VERSION:
            raise ValueError(f"{meta_path} has format version {version}, newer than this code reads "
                             f"({_FORMAT_VERSION}); upgrade tandem or rebuild the index")
        index = _faiss().read_index(str(folder / _INDEX_FILE))
        vectors = None
        if meta["kind"].startswith("ivf"):
            vectors = np.load(folder / _VECTORS_FILE, mmap_mode="r" if mmap else None, allow_pickle=False)
        if index.ntotal != meta["n"] or index.d != meta["d"]:
            raise ValueError(f"{folder / _INDEX_FILE} holds {index.ntotal} x {index.d} vectors but {meta_path} "
                             f"says {meta['n']} x {meta['d']}; the files come from different builds")
        return cls(index, meta["kind"], meta["factory"], meta["params"], meta["n"], meta["d"], vectors,
                   meta.get("tuning"))

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"AnnIndex({self.kind}, {self.factory!r}, n={self.n}, d={self.d}, params={self.params})"
