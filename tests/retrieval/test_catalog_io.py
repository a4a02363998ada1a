import numpy as np

from tandem.retrieval.catalog_io import load_catalog, save_catalog
from tandem.retrieval.data import Catalog, Item


def test_roundtrip(tmp_path):
    cat = Catalog.from_items([Item("a", "Red shoe", "desc", "Shoes > Run", "acme", 9.5, ("red",), False),
                              Item("b", "Hat")])
    cat.price_outlier[0] = True
    save_catalog(cat, tmp_path)
    back = load_catalog(tmp_path)
    assert back.item(0) == cat.item(0) and back.item(1) == cat.item(1)
    assert back.price_outlier.tolist() == [True, False] and np.isnan(back.prices[1])
    assert back.index == {"a": 0, "b": 1}
