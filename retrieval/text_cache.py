"""Text vectors keyed by the exact text that was encoded, so a later build encodes only new or
changed texts (``tandem build --from``, docs/operations.md "Incremental builds").

A bundle keeps, per item, the sha256 of the text its vector was encoded from (``Catalog.text``),
and the identity of the encoder that produced it (:func:`encoder_identity`: model id, a
fingerprint of a local model folder, ``max_seq_length``, the text-preparation version and the
vector dimension). :func:`reuse_vectors` takes the vectors whose text hash is known to an earlier
cache with the same identity and encodes the rest; any difference in identity means a full encode.

Layout inside a bundle: ``text_cache/text_cache.json`` (format, identity, item count, where the
vectors are) and ``text_cache/text_hashes.npy`` (uint8 (n_items, 32)); the vectors themselves are
the text source's ``sources/text/text_vectors.npy`` (not stored twice), or
``text_cache/text_vectors.npy`` when the bundle has no text source.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tandem.retrieval.text_tower import TextEncoder

__all__ = ["TEXT_PREP_VERSION", "TextCache", "ReuseReport", "encoder_identity", "text_hashes", "reuse_vectors"]

log = logging.getLogger(__name__)

#: Version of the text an item is encoded from (``Catalog.text``: title, brand, category and
#: description joined by ". "). Bump it whenever that text changes, so that vectors cached by
#: older bundles are not reused for texts prepared another way (tests/retrieval/test_text_cache.py
#: pins the current form).
TEXT_PREP_VERSION = 1
_FORMAT_VERSION = 1
_DIR = "text_cache"
_META = "text_cache.json"
_HASHES = "text_hashes.npy"
_VECTORS = "text_vectors.npy"
#: where the text source keeps the same vectors (relative to the bundle folder)
TEXT_SOURCE_VECTORS = "sources/text/text_vectors.npy"
_SMALL_FILE = 1 << 16


def text_hashes(texts: Sequence[str]) -> np.ndarray:
    """uint8 (n, 32): the sha256 of each text's UTF-8 bytes."""
    out = np.empty((len(texts), 32), dtype=np.uint8)
    for i, t in enumerate(texts):
        out[i] = np.frombuffer(hashlib.sha256(t.encode("utf-8")).digest(), dtype=np.uint8)
    return out


def _folder_fingerprint(folder: Path) -> str:
    """sha256 over the names and sizes of every file of a model folder and the bytes of its
    small files (configs, tokenizer settings): a model replaced in place gets another one."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        size = path.stat().st_size
        h.update(f"{path.relative_to(folder).as_posix()}\0{size}\0".encode())
        if size <= _SMALL_FILE:
            h.update(path.read_bytes())
    return h.hexdigest()


def encoder_identity(encoder: TextEncoder) -> dict[str, Any]:
    """What must be equal for a cached vector to be the one ``encoder`` would produce now
    (without the dimension, which :class:`TextCache` records from the vectors): the model id,
    a fingerprint of a local model folder, ``max_seq_length`` (truncation) and
    :data:`TEXT_PREP_VERSION`, and the backend (torch, onnx, onnx-int8: int8 vectors differ from
    fp32 ones). The batch size and device do not change the vectors' meaning."""
    cfg = encoder.config
    return {
        "model": encoder.model_id,
        "backend": cfg.backend,
        "fingerprint": None if cfg.model_path is None else _folder_fingerprint(Path(cfg.model_path)),
        "max_seq_length": int(cfg.max_seq_length),
        "text_prep": TEXT_PREP_VERSION,
    }


@dataclass
class TextCache:
    """Per-item text hashes ``hashes`` uint8 (n, 32), the vectors float32 (n, d) encoded from
    those texts, and the encoder's ``identity`` (:func:`encoder_identity`)."""

    hashes: np.ndarray
    vectors: np.ndarray
    identity: dict[str, Any]

    def save(self, bundle: Path, vectors_saved_at: str | None = TEXT_SOURCE_VECTORS) -> list[Path]:
        """Write the cache into the bundle folder ``bundle``. ``vectors_saved_at``: the bundle-relative
        path where the same vectors are already written (the text source's), or None to write them here."""
        folder = Path(bundle) / _DIR
        folder.mkdir(parents=True, exist_ok=True)
        written = [folder / _HASHES]
        np.save(folder / _HASHES, np.ascontiguousarray(self.hashes, dtype=np.uint8), allow_pickle=False)
        if vectors_saved_at is None:
            np.save(folder / _VECTORS, self.vectors, allow_pickle=False)
            written.append(folder / _VECTORS)
            vectors_saved_at = f"{_DIR}/{_VECTORS}"
        meta = {"format_version": _FORMAT_VERSION, "identity": self.identity, "dim": int(self.vectors.shape[1]),
                "n_items": int(self.hashes.shape[0]), "vectors": vectors_saved_at}
        (folder / _META).write_text(json.dumps(meta, indent=2, sort_keys=True))
        return [*written, folder / _META]

    @classmethod
    def load(cls, bundle: Path) -> TextCache | None:
        """The cache of a bundle folder, or None when the bundle has none (built before text
        hashes were kept). Raises ValueError for a cache that is newer than this code or does not
        match its vectors."""
        bundle = Path(bundle)
        meta_path = bundle / _DIR / _META
        if not meta_path.is_file():
            return None
        meta = json.loads(meta_path.read_text())
        if int(meta.get("format_version", 0)) > _FORMAT_VERSION:
            raise ValueError(f"{meta_path}: text cache format {meta['format_version']} is newer than "
                             f"{_FORMAT_VERSION}; upgrade Tandem")
        rel = str(meta["vectors"])
        if rel.startswith("/") or ".." in Path(rel).parts:
            raise ValueError(f"{meta_path}: field \"vectors\" must be a path inside the bundle, got {rel!r}")
        hashes = np.load(bundle / _DIR / _HASHES, allow_pickle=False)
        vectors = np.load(bundle / rel, mmap_mode="r", allow_pickle=False)
        if hashes.ndim != 2 or hashes.shape[1] != 32 or vectors.shape[0] != hashes.shape[0]:
            raise ValueError(f"{meta_path}: {hashes.shape[0]} text hashes of shape {hashes.shape} for "
                             f"{vectors.shape[0]} vectors in {rel}")
        identity = dict(meta["identity"])
        identity_dim = int(meta["dim"])
        if vectors.shape[1] != identity_dim:
            raise ValueError(f"{meta_path}: field \"dim\" is {identity_dim}, the vectors in {rel} have {vectors.shape[1]}")
        return cls(hashes, vectors, identity)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


@dataclass
class ReuseReport:
    """What :func:`reuse_vectors` did: ``reused`` vectors taken from the earlier cache, ``encoded``
    texts encoded now, and ``full_reason`` why nothing was reused (None when the cache was used)."""

    reused: int
    encoded: int
    full_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"reused": self.reused, "encoded": self.encoded, "full_encode_reason": self.full_reason}


def reuse_vectors(encoder: TextEncoder, texts: Sequence[str], previous: TextCache | None,
                  progress: bool = False, why_none: str = "") -> tuple[TextCache, ReuseReport]:
    """The vectors of ``texts`` (float32 (n, d), unit rows, in order) as a new cache: rows whose
    text hash is in ``previous`` (same encoder identity) are copied from it, the others encoded.

    ``previous`` None, or another identity, encodes every text (the report says why; ``why_none``
    is the reason given for a None ``previous``)."""
    hashes = text_hashes(texts)
    identity = encoder_identity(encoder)
    reason = None
    if previous is None:
        reason = why_none or "no earlier text cache"
    else:
        before = {"backend": "torch", **previous.identity}  # caches from before backends: torch
        if before != identity:
            changed = sorted(k for k in set(identity) | set(before) if identity.get(k) != before.get(k))
            reason = ("the text encoder differs from the earlier bundle's ("
                      + ", ".join(f"{k}: {before.get(k)!r} -> {identity.get(k)!r}" for k in changed) + ")")
    if reason is not None or previous is None:
        vectors = encoder.encode(list(texts), progress=progress)
        return TextCache(hashes, vectors, identity), ReuseReport(0, len(texts), reason)
    known: dict[bytes, int] = {}
    for row, h in enumerate(previous.hashes):
        known.setdefault(h.tobytes(), row)
    src = np.array([known.get(h.tobytes(), -1) for h in hashes], dtype=np.int64)
    missing = np.flatnonzero(src < 0)
    vectors = np.empty((len(texts), previous.dim), dtype=np.float32)
    hit = np.flatnonzero(src >= 0)
    if hit.size:
        vectors[hit] = np.asarray(previous.vectors)[src[hit]]
    if missing.size:
        fresh = encoder.encode([texts[i] for i in missing], progress=progress)
        if fresh.shape[1] != previous.dim:  # the same model id cannot change its width; be safe anyway
            log.warning("text vectors: the encoder now gives %d dimensions, the earlier bundle's %d: encoding "
                        "every text", fresh.shape[1], previous.dim)
            vectors = encoder.encode(list(texts), progress=progress)
            return TextCache(hashes, vectors, identity), ReuseReport(
                0, len(texts), f"vector dimension changed ({previous.dim} -> {fresh.shape[1]})")
        vectors[missing] = fresh
    return TextCache(hashes, vectors, identity), ReuseReport(int(hit.size), int(missing.size))
