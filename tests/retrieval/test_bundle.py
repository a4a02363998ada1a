import json

import pytest

from tandem.retrieval.bundle import (
    FORMAT_VERSION,
    BundleError,
    current_bundle,
    list_bundles,
    read_manifest,
    set_current,
    verify_bundle,
    write_bundle,
)


def _fill(payload: bytes):
    def fill(folder):
        (folder / "sub").mkdir()
        (folder / "sub" / "a.bin").write_bytes(payload)
        (folder / "b.json").write_text('{"x": 1}')
        return {"n_items": 3}

    return fill


def test_write_then_current_and_verify(tmp_path):
    folder = write_bundle(tmp_path, _fill(b"abc"), version="v1")
    assert folder == tmp_path / "v1"
    assert current_bundle(tmp_path) == folder
    m = verify_bundle(folder)
    assert m["n_items"] == 3 and m["version"] == "v1" and m["format_version"] == FORMAT_VERSION
    paths = {e["path"]: e for e in m["files"]}
    assert set(paths) == {"sub/a.bin", "b.json"}
    # sha256 of b"abc"
    assert paths["sub/a.bin"]["sha256"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert not any(p.name.startswith(".staging") for p in tmp_path.iterdir())


def test_tampered_file_refused(tmp_path):
    folder = write_bundle(tmp_path, _fill(b"abc"), version="v1")
    (folder / "sub" / "a.bin").write_bytes(b"abd")
    with pytest.raises(BundleError, match="checksum mismatch for sub/a.bin"):
        verify_bundle(folder)


def test_missing_and_extra_files_refused(tmp_path):
    folder = write_bundle(tmp_path, _fill(b"abc"), version="v1")
    (folder / "extra.txt").write_text("sneaky")
    with pytest.raises(BundleError, match="not in the manifest: extra.txt"):
        verify_bundle(folder)
    (folder / "extra.txt").unlink()
    (folder / "b.json").unlink()
    with pytest.raises(BundleError, match="b.json listed in the manifest is missing"):
        verify_bundle(folder)


def test_newer_format_refused(tmp_path):
    folder = write_bundle(tmp_path, _fill(b"abc"), version="v1")
    m = json.loads((folder / "manifest.json").read_text())
    m["format_version"] = FORMAT_VERSION + 1
    (folder / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="newer than this Tandem understands"):
        read_manifest(folder)


def test_current_moves_only_to_complete_bundles(tmp_path):
    write_bundle(tmp_path, _fill(b"1"), version="v1")
    write_bundle(tmp_path, _fill(b"2"), version="v2", make_current=False)
    assert current_bundle(tmp_path).name == "v1"
    set_current(tmp_path, "v2")
    assert current_bundle(tmp_path).name == "v2"
    (tmp_path / "v3").mkdir()
    with pytest.raises(BundleError, match="not a complete bundle"):
        set_current(tmp_path, "v3")
    assert list_bundles(tmp_path) == ["v1", "v2"]


def test_failed_fill_leaves_nothing(tmp_path):
    def boom(folder):
        (folder / "half.bin").write_bytes(b"x")
        raise RuntimeError("training diverged")

    with pytest.raises(RuntimeError):
        write_bundle(tmp_path, boom, version="v1")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(BundleError, match="no CURRENT file"):
        current_bundle(tmp_path)


def test_the_manifest_has_a_digest_written_last(tmp_path):
    import hashlib

    folder = write_bundle(tmp_path, _fill(b"abc"), version="v1")
    digest = (folder / "manifest.sha256").read_text()
    # `sha256sum -c manifest.sha256` checks it from inside the folder
    assert digest == hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest() + "  manifest.json\n"
    assert "manifest.sha256" not in {e["path"] for e in verify_bundle(folder)["files"]}


@pytest.mark.parametrize("edit", [
    lambda m: m.update(version="v1-hotfix"),  # the server used to report the edited name
    lambda m: m.update(n_items=4),
    lambda m: m["files"].pop(),  # a file dropped from the list
])
def test_an_edited_manifest_is_refused(tmp_path, edit):
    folder = write_bundle(tmp_path, _fill(b"abc"), version="v1")
    m = json.loads((folder / "manifest.json").read_text())
    edit(m)
    (folder / "manifest.json").write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")
    with pytest.raises(BundleError, match=r"v1/manifest.json does not match its digest in .*v1/manifest.sha256"):
        verify_bundle(folder)
    with pytest.raises(BundleError, match="manifest.json does not match its digest"):
        read_manifest(folder)


def test_a_missing_or_garbled_digest_is_refused(tmp_path):
    folder = write_bundle(tmp_path, _fill(b"abc"), version="v1")
    (folder / "manifest.sha256").write_text("not a digest\n")
    with pytest.raises(BundleError, match=r"v1/manifest.sha256 is not a sha256 digest of manifest.json"):
        verify_bundle(folder)
    (folder / "manifest.sha256").unlink()
    with pytest.raises(BundleError, match=r"v1/manifest.sha256 is missing"):
        verify_bundle(folder)
    with pytest.raises(BundleError, match="not a complete bundle"):
        set_current(tmp_path, "v1")


def test_a_bundle_of_the_format_before_digests_is_refused(tmp_path):
    folder = write_bundle(tmp_path, _fill(b"abc"), version="v1")
    m = json.loads((folder / "manifest.json").read_text())
    m["format_version"] = 1
    (folder / "manifest.json").write_text(json.dumps(m))
    (folder / "manifest.sha256").unlink()
    with pytest.raises(BundleError, match="format 1, written before manifests had a digest.*rebuild it"):
        verify_bundle(folder)


def test_the_version_is_the_folder_name(tmp_path):
    import os

    folder = write_bundle(tmp_path, _fill(b"abc"), version="v1")
    os.rename(folder, tmp_path / "v2")
    with pytest.raises(BundleError, match=r"names version 'v1', but the bundle folder is v2"):
        verify_bundle(tmp_path / "v2")


def test_a_nested_file_named_like_the_manifest_is_checked(tmp_path):
    def fill(folder):
        (folder / "sub").mkdir()
        (folder / "sub" / "manifest.json").write_text("{}")
        return {}

    folder = write_bundle(tmp_path, fill, version="v1")
    assert {e["path"] for e in verify_bundle(folder)["files"]} == {"sub/manifest.json"}
    (folder / "sub" / "manifest.json").write_text('{"x": 1}')
    with pytest.raises(BundleError, match="checksum mismatch for sub/manifest.json"):
        verify_bundle(folder)
