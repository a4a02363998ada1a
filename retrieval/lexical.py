"""Lexical candidate source: BM25 over the catalog's text (the ``bm25s`` library).

Each item is one document: its title repeated ``title_weight`` times (BM25 has no field weights,
so repetition raises the title's term frequencies), then brand, category, tags and description.
Text is tokenised by ``bm25s.tokenize`` (lower-cased words of two or more characters, English
stopwords removed) and, by default, reduced by a light plural stemmer ("serums" -> "serum",
"brushes" -> "brush", "berries" -> "berry") so a query and a title need not agree in number;
``stemmer="snowball"`` uses PyStemmer's English stemmer when that package is installed.

``retrieve`` scores ``request.query``; an empty or missing query gives empty candidates, and
items with no query term score nothing and are never returned.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tandem.retrieval.base import Candidates, IdSet, RetrievalRequest, read_source_meta
from tandem.retrieval.data import Catalog, Interactions
from tandem.retrieval.item_ranks import rank_items

__all__ = ["LEXICAL_STEMMERS", "LexicalConfig", "Lexical", "plural_stem"]

#: Stemmers :attr:`LexicalConfig.stemmer` accepts.
LEXICAL_STEMMERS: tuple[str, ...] = ("plural", "snowball", "none")

_FORMAT_VERSION = 1
_META = "lexical.json"
_BM25_DIR = "bm25"


def plural_stem(word: str) -> str:
    """Harman's "S" stemmer, plus "-es" after a sibilant: strip English plural endings and
    leave everything else alone ("brushes" -> "brush", "berries" -> "berry", "glass" stays)."""
    if len(word) > 3 and word.endswith("ies") and not word.endswith(("eies", "aies")):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("sses", "shes", "ches", "xes", "zzes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("es") and not word.endswith(("aes", "ees", "oes")):
        return word[:-1]
    if len(word) > 2 and word.endswith("s") and not word.endswith(("us", "ss")):
        return word[:-1]
    return word


def _stemmer(name: str) -> Any:
    if name == "none":
        return None
    if name == "plural":
        return lambda words: [plural_stem(w) for w in words]
    try:
        import Stemmer
    except ImportError as exc:
        raise ImportError('LexicalConfig.stemmer="snowball" needs PyStemmer: pip install PyStemmer, '
                          'or use stemmer="plural"') from exc
    return Stemmer.Stemmer("english").stemWords


@dataclass(frozen=True)
class LexicalConfig:
    """``title_weight``: times the title is repeated; ``use_description`` / ``use_tags``: index those
    fields too; ``k1``, ``b``: BM25 parameters (Lucene variant); ``stemmer``: one of
    :data:`LEXICAL_STEMMERS`."""

    title_weight: int = 3
    use_description: bool = True
    use_tags: bool = True
    k1: float = 1.2
    b: float = 0.75
    stemmer: str = "plural"

    def __post_init__(self) -> None:
        if not 1 <= self.title_weight <= 10:
            raise ValueError(f"LexicalConfig.title_weight must be in [1, 10], got {self.title_weight}")
        if not 0.0 <= self.k1 <= 10.0:
            raise ValueError(f"LexicalConfig.k1 must be in [0, 10], got {self.k1}")
        if not 0.0 <= self.b <= 1.0:
            raise ValueError(f"LexicalConfig.b must be in [0, 1], got {self.b}")
        if self.stemmer not in LEXICAL_STEMMERS:
            raise ValueError(f"LexicalConfig.stemmer must be one of {', '.join(LEXICAL_STEMMERS)}; "
                             f"got {self.stemmer!r}")


class Lexical:
    """Candidate source ``"lexical"``; see the module docstring."""

    name = "lexical"

    def __init__(self, config: LexicalConfig | None = None) -> None:
        self.config = config or LexicalConfig()
        self._bm25: Any = None
        self._vocab: dict[str, int] = {}
        self.n_items = 0

    def document(self, catalog: Catalog, i: int) -> str:
        """The text indexed for item ``i``."""
        c = self.config
        parts = [catalog.titles[i]] * c.title_weight + [catalog.brands[i], catalog.categories[i]]
        if c.use_tags:
            parts += list(catalog.tags[i])
        if c.use_description:
            parts.append(catalog.descriptions[i])
        return " . ".join(p for p in parts if p)

    def _tokenize(self, texts: list[str]) -> list[list[str]]:
        import bm25s

        return bm25s.tokenize(texts, stopwords="english", stemmer=_stemmer(self.config.stemmer),
                              return_ids=False, show_progress=False)

    def fit(self, catalog: Catalog, interactions: Interactions | None = None) -> Lexical:
        """Index ``catalog``'s text; ``interactions`` are not used."""
        import bm25s

        self.n_items = len(catalog)
        tokens = self._tokenize([self.document(catalog, i) for i in range(self.n_items)])
        self._bm25 = bm25s.BM25(k1=self.config.k1, b=self.config.b, method="lucene")
        self._vocab = {}
        vocab_words = sorted({t for doc in tokens for t in doc})
        if vocab_words:  # else (no items, or only stop words): nothing to index, every score is 0
            # our own sorted vocabulary: bm25s numbers tokens in set order, which moves with
            # Python's string hashing, so two builds of one catalog wrote different index files
            vocab = {t: i for i, t in enumerate(vocab_words)}
            self._bm25.index(([[vocab[t] for t in doc] for doc in tokens], vocab), show_progress=False)
            self._vocab = dict(self._bm25.vocab_dict)
        return self

    def scores(self, query: str) -> np.ndarray:
        """float32 (n_items,) BM25 score of every item for ``query`` (0 where no term matches)."""
        if self._bm25 is None:
            raise RuntimeError("Lexical is not fitted; call fit() or load() first")
        out = np.zeros(self.n_items, dtype=np.float32)
        if not query or not query.strip() or not self._vocab:
            return out
        tokens = [t for t in self._tokenize([query])[0] if t in self._vocab]
        if not tokens:
            return out
        return np.asarray(self._bm25.get_scores(tokens), dtype=np.float32)

    def retrieve(self, request: RetrievalRequest, k: int) -> Candidates:
        """Up to ``k`` items matching ``request.query``, best BM25 score first; items in
        ``request.history`` are left out, as every source does."""
        if k <= 0 or not request.query:
            return Candidates.empty(self.name)
        s = self.scores(request.query)
        s[s <= 0] = -np.inf
        hist = np.asarray(request.history, dtype=np.int64)
        hist = hist[(hist >= 0) & (hist < self.n_items)]
        return Candidates.top_k(s, k, self.name, exclude=hist)

    def score_items(self, request: RetrievalRequest, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``items``' BM25 scores for ``request.query`` and the ranks :meth:`retrieve` would give
        them (:class:`~tandem.retrieval.base.ItemScorer`); NaN / 0 where no term matches, for the
        history, and for every item when there is no query."""
        items = np.asarray(items, dtype=np.int64)
        if not request.query:
            return np.full(items.shape[0], np.nan, dtype=np.float32), np.zeros(items.shape[0], dtype=np.int32)
        s = self.scores(request.query)
        s[s <= 0] = -np.inf
        return rank_items(s, items, IdSet(np.asarray(request.history, dtype=np.int64), self.n_items))

    def save(self, folder: Path) -> list[Path]:
        """Write the BM25 matrix and vocabulary (bm25s's .npy / .json files, no pickle) and
        ``lexical.json``."""
        if self._bm25 is None:
            raise RuntimeError("Lexical is not fitted; call fit() before save()")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        if self._vocab:
            self._bm25.save(folder / _BM25_DIR, corpus=None, allow_pickle=False, show_progress=False)
            written += sorted((folder / _BM25_DIR).glob("*"))
        meta = folder / _META
        meta.write_text(json.dumps({"format_version": _FORMAT_VERSION, "n_items": self.n_items,
                                    "vocab_size": len(self._vocab), "config": asdict(self.config)}, indent=2))
        return [*written, meta]

    @classmethod
    def load(cls, folder: Path, catalog: Catalog) -> Lexical:
        """Read back what :meth:`save` wrote (numpy arrays with ``allow_pickle=False``)."""
        import bm25s

        folder = Path(folder)
        meta = read_source_meta(folder / _META, "Lexical", _FORMAT_VERSION, catalog)
        source = cls(LexicalConfig(**meta["config"]))
        source.n_items = meta["n_items"]
        source._bm25 = bm25s.BM25(k1=source.config.k1, b=source.config.b, method="lucene")
        if source.n_items and meta.get("vocab_size", 1):
            source._bm25 = bm25s.BM25.load(folder / _BM25_DIR, allow_pickle=False, mmap=False,
                                           show_progress=False, verbosity=0)
            source._vocab = dict(source._bm25.vocab_dict)
        return source
