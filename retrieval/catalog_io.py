"""Catalog files inside a bundle: ``catalog.jsonl.gz`` (one item a line, catalog order) and
``catalog_flags.npz`` (cleaning flags). Row order is the dense item index."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

from tandem.retrieval.data import Catalog

__all__ = ["save_catalog", "load_catalog"]


def save_catalog(catalog: Catalog, folder: Path) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "catalog.jsonl.gz"
    with gzip.GzipFile(path, "wb", mtime=0, compresslevel=6) as raw:
        for i in range(len(catalog)):
            price = float(catalog.prices[i])
            rec = {"item_id": catalog.item_ids[i], "title": catalog.titles[i],
                   "description": catalog.descriptions[i], "category": catalog.categories[i],
                   "brand": catalog.brands[i], "price": None if np.isnan(price) else price,
                   "tags": list(catalog.tags[i]), "in_stock": bool(catalog.in_stock[i])}
            raw.write((json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8"))
    flags = folder / "catalog_flags.npz"
    np.savez(flags, price_imputed=catalog.price_imputed, price_outlier=catalog.price_outlier)
    return [path, flags]


def load_catalog(folder: Path) -> Catalog:
    folder = Path(folder)
    ids, titles, descs, cats, brands, prices, tags, stock = [], [], [], [], [], [], [], []
    with gzip.open(folder / "catalog.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            ids.append(r["item_id"])
            titles.append(r["title"])
            descs.append(r["description"])
            cats.append(r["category"])
            brands.append(r["brand"])
            prices.append(np.nan if r["price"] is None else r["price"])
            tags.append(tuple(r["tags"]))
            stock.append(r["in_stock"])
    with np.load(folder / "catalog_flags.npz", allow_pickle=False) as z:
        imputed, outlier = z["price_imputed"], z["price_outlier"]
    return Catalog(ids, titles, descs, cats, brands, np.array(prices, dtype=np.float32), tags,
                   np.array(stock, dtype=bool), price_imputed=imputed, price_outlier=outlier)
