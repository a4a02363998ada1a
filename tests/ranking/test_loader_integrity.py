"""tandem.ranking.loader on a real bundle: the manifest is verified, and the version is the folder's name."""

import json
import shutil

import pytest

from tandem.ranking.loader import load_engine, load_pipeline
from tandem.retrieval.bundle import BundleError, current_bundle

pytestmark = pytest.mark.slow


def test_load_verifies_the_manifest_and_names_the_folder(tiny_bundles, tmp_path):
    src = current_bundle(tiny_bundles)
    assert load_engine(tiny_bundles).version == src.name
    edited = tmp_path / src.name
    shutil.copytree(src, edited)
    m = json.loads((edited / "manifest.json").read_text())
    m["n_items"] += 1
    (edited / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=f"{src.name}/manifest.json does not match its digest"):
        load_pipeline(edited)
    renamed = tmp_path / "renamed"
    shutil.copytree(src, renamed)
    with pytest.raises(BundleError, match=f"names version '{src.name}', but the bundle folder is renamed"):
        load_pipeline(renamed)
    assert load_pipeline(renamed, verify=False).version == "renamed"
