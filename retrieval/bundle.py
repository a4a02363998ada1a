"""The versioned bundle on disk: ``<root>/<version>/`` plus ``<root>/CURRENT``.

A bundle is written into a hidden staging folder, every file is hashed into ``manifest.json``,
the manifest's own sha256 is written last into ``manifest.sha256`` (``sha256sum`` format, so
``sha256sum -c manifest.sha256`` checks it from inside the folder), everything is fsynced, the
folder is renamed to its version, and only then is ``CURRENT`` replaced (write a temporary file,
fsync, ``os.replace``). A reader therefore never sees a half-written bundle.

Loaders call :func:`verify_bundle`, which refuses a bundle whose manifest does not match its
digest, whose files do not match their checksums, whose manifest names a version other than its
folder (the version a server reports is the folder it serves), or whose format is newer than this
code understands, or older than the manifest digest (format 1: rebuild it). The digest catches
edits and corruption; it is not a signature, so it does not stop someone who rewrites both files:
the bundle root's permissions do.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "FORMAT_VERSION",
    "BundleError",
    "current_bundle",
    "list_bundles",
    "new_version_name",
    "set_current",
    "sha256_file",
    "verify_bundle",
    "read_manifest",
    "write_bundle",
]

#: 2: the manifest has a digest (``manifest.sha256``); format 1 bundles are refused.
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
DIGEST = "manifest.sha256"
CURRENT = "CURRENT"


class BundleError(Exception):
    """A bundle that cannot be used: missing, incomplete, tampered with or too new."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def new_version_name(now: _dt.datetime | None = None) -> str:
    """A sortable, unique version name such as ``20261128T061500Z-3f2a``."""
    now = now or _dt.datetime.now(_dt.UTC)
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:4]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for dirpath, _, files in os.walk(folder):
        for name in files:
            fd = os.open(Path(dirpath) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _file_entries(folder: Path) -> list[dict]:
    entries = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and rel not in (MANIFEST, DIGEST):
            entries.append({"path": rel, "sha256": sha256_file(path), "bytes": path.stat().st_size})
    return entries


def _write_digest(folder: Path) -> None:
    (folder / DIGEST).write_text(f"{sha256_file(folder / MANIFEST)}  {MANIFEST}\n", encoding="utf-8")


def write_bundle(
    root: str | Path,
    fill: Callable[[Path], dict],
    *,
    version: str | None = None,
    make_current: bool = True,
) -> Path:
    """Write a new bundle under ``root`` and return its folder.

    ``fill(staging_folder)`` writes the bundle's files and returns the manifest's content
    (JSON-able; ``format_version``, ``version``, ``created_at`` and ``files`` are added here).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    version = version or new_version_name()
    if (root / version).exists():
        raise BundleError(f"bundle version {version!r} already exists in {root}")
    staging = root / f".staging-{version}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        manifest = dict(fill(staging))
        manifest.update(
            format_version=FORMAT_VERSION,
            version=version,
            created_at=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            files=_file_entries(staging),
        )
        with open(staging / MANIFEST, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
            f.write("\n")
        _write_digest(staging)  # last: it seals the manifest, which lists every other file
        _fsync_tree(staging)
        os.rename(staging, root / version)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if make_current:
        set_current(root, version)
    return root / version


def set_current(root: str | Path, version: str) -> None:
    """Atomically point ``root/CURRENT`` at ``version`` (which must be a complete bundle)."""
    root = Path(root)
    for name in (MANIFEST, DIGEST):
        if not (root / version / name).is_file():
            raise BundleError(f"{root / version} is not a complete bundle (no {name})")
    tmp = root / f".{CURRENT}.{uuid.uuid4().hex[:8]}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(version + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / CURRENT)
    _fsync_dir(root)


def list_bundles(root: str | Path) -> list[str]:
    """Complete bundle versions under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and (p / MANIFEST).is_file())


def current_bundle(root: str | Path) -> Path:
    """The folder ``root/CURRENT`` names; ``root`` may also be a bundle folder itself."""
    root = Path(root)
    if (root / MANIFEST).is_file():
        return root
    pointer = root / CURRENT
    if not pointer.is_file():
        raise BundleError(
            f"{root} has no {CURRENT} file and is not a bundle folder: build one with "
            f"`tandem build --data DIR --out {root}`"
        )
    version = pointer.read_text(encoding="utf-8").strip()
    folder = root / version
    if not (folder / MANIFEST).is_file():
        raise BundleError(f"{pointer} names {version!r}, but {folder} has no {MANIFEST}")
    return folder


def read_manifest(folder: str | Path) -> dict:
    """The manifest of a bundle folder, checked against its digest and its folder's name (the
    files it lists are not checked: :func:`verify_bundle` does that)."""
    folder = Path(folder)
    path, digest_path = folder / MANIFEST, folder / DIGEST
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise BundleError(f"{path} is missing: {folder} is not a bundle") from exc
    try:
        manifest = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON ({exc}); the bundle was modified or is corrupt: rebuild it") from exc
    fmt = manifest.get("format_version") if isinstance(manifest, dict) else None
    if not isinstance(fmt, int):
        raise BundleError(f"{path}: field \"format_version\" missing or not an integer")
    if fmt > FORMAT_VERSION:
        raise BundleError(
            f"{path}: bundle format {fmt} is newer than this Tandem understands ({FORMAT_VERSION}); "
            "upgrade Tandem or rebuild the bundle with this version"
        )
    if fmt < 2:
        raise BundleError(f"{folder}: bundle format {fmt}, written before manifests had a digest ({DIGEST}), "
                          "so its manifest cannot be verified; rebuild it with this Tandem (`tandem build`)")
    try:
        expected = digest_path.read_text(encoding="utf-8").split()
    except FileNotFoundError:
        raise BundleError(f"{digest_path} is missing: the bundle is incomplete or was modified; rebuild it") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"{digest_path} cannot be read ({exc})") from exc
    if len(expected) != 2 or expected[1] != MANIFEST or len(expected[0]) != 64:
        raise BundleError(f"{digest_path} is not a sha256 digest of {MANIFEST} (expected '<64 hex digits>  "
                          f"{MANIFEST}'); the bundle was modified or is corrupt: rebuild it")
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected[0].lower():
        raise BundleError(f"{path} does not match its digest in {digest_path} (digest {expected[0][:12]}…, "
                          f"manifest {actual[:12]}…): the manifest was edited or is corrupt; rebuild the bundle")
    if manifest.get("version") != folder.name:
        raise BundleError(f"{path} names version {manifest.get('version')!r}, but the bundle folder is {folder.name}: "
                          "a bundle's version is its folder's name; rename the folder back or rebuild the bundle")
    return manifest


def verify_bundle(folder: str | Path) -> dict:
    """Check the manifest against its digest and every file against the manifest's sha256;
    return the manifest or raise BundleError.

    Files present in the folder but absent from the manifest are refused too, so nothing can
    be slipped in beside a valid bundle.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    listed = {}
    for entry in manifest.get("files", []):
        rel = entry.get("path")
        if not isinstance(rel, str) or rel.startswith("/") or ".." in Path(rel).parts:
            raise BundleError(f"{folder / MANIFEST}: invalid file path {rel!r}")
        listed[rel] = entry.get("sha256")
    for rel, digest in listed.items():
        path = folder / rel
        if not path.is_file():
            raise BundleError(f"{folder}: file {rel} listed in the manifest is missing")
        actual = sha256_file(path)
        if actual != digest:
            raise BundleError(
                f"{folder}: checksum mismatch for {rel} (manifest {str(digest)[:12]}…, file {actual[:12]}…); "
                "the bundle was modified or is corrupt: rebuild it"
            )
    extra = [rel for p in folder.rglob("*")
             if p.is_file() and (rel := p.relative_to(folder).as_posix()) not in listed and rel not in (MANIFEST, DIGEST)]
    if extra:
        raise BundleError(f"{folder}: files not in the manifest: {', '.join(sorted(extra)[:5])}")
    return manifest
