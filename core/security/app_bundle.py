"""Which Flower app bundles (FABs) a node runs: only the anya-fl it has installed itself.

A coordinator sends each node a FAB (a zip of the app's files) with every run, and Flower's SuperNode
would install and import whatever it holds. A node operator trusts the anya-fl release they
installed, not whoever controls the coordinator, so :func:`verify_app_bundle` accepts a bundle only
when every file in it is byte-identical to the node's own copy of that file (same relative path
under ``trusted_root``), and its ``pyproject.toml`` names the same project, version and components;
anything else (an extra file, a changed one, a native module, another ClientApp) is refused before
Flower unpacks it. The run config inside ``pyproject.toml`` is data the coordinator chooses anyway
and is not compared. A compromised coordinator can therefore spoil a model, not run code on a node.
"""

from __future__ import annotations

import hashlib
import io
import tomllib
import zipfile
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any

from core.errors import AnyaError

MANIFEST = "pyproject.toml"
MAX_MEMBERS = 2_000
MAX_UNPACKED = 64 * 1024 * 1024
# pyproject keys that are run data, not code: the run-config defaults and the connection list
_DATA_KEYS = (("tool", "flwr", "app", "config"), ("tool", "flwr", "federations"))


class BundleRefused(AnyaError):
    """An app bundle this node will not run; the message says which file or setting differs."""


def _strip(doc: dict[str, Any]) -> dict[str, Any]:
    """The manifest without its data keys (deep copy of the parts that name code)."""
    out = {k: (_strip(v) if isinstance(v, dict) else v) for k, v in doc.items()}
    for path in _DATA_KEYS:
        node: Any = out
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return out


@lru_cache(maxsize=8)
def _trusted_manifest(root: str) -> dict[str, Any]:
    path = Path(root) / MANIFEST
    try:
        return _strip(tomllib.loads(path.read_text()))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise BundleRefused(f"trusted app: cannot read {path} ({exc})") from None


@lru_cache(maxsize=4096)
def _trusted_digest(root: str, name: str) -> str | None:
    path = Path(root) / name
    try:
        if path.is_symlink() or not path.is_file():
            return None
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _member_name(info: zipfile.ZipInfo) -> str:
    name = info.filename
    parts = PurePosixPath(name).parts
    if (not name or name.startswith("/") or "\\" in name or any(p in ("..", ".", "") for p in parts)
            or name != PurePosixPath(*parts).as_posix()):
        raise BundleRefused(f"bundle file {name!r}: not a plain relative path")
    return name


def verify_app_bundle(fab: bytes, trusted_root: Path) -> dict[str, int]:
    """Accept ``fab`` only if it is this node's own app (see the module doc); return counts, else raise.

    Flower's own ``.info/CONTENT`` manifest (file hashes) is allowed: Flower checks it against the files.
    """
    root = str(Path(trusted_root).resolve())
    try:
        zf = zipfile.ZipFile(io.BytesIO(fab))
        infos = zf.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise BundleRefused(f"bundle: not a valid zip archive ({exc})") from None
    if len(infos) > MAX_MEMBERS:
        raise BundleRefused(f"bundle: {len(infos):,} files; at most {MAX_MEMBERS:,}")
    if sum(i.file_size for i in infos) > MAX_UNPACKED:
        raise BundleRefused(f"bundle: unpacks to more than {MAX_UNPACKED:,} bytes")
    checked = 0
    manifest_seen = False
    for info in infos:
        if info.is_dir():
            continue
        name = _member_name(info)
        try:
            data = zf.read(info)
        except (zipfile.BadZipFile, ValueError, OSError, NotImplementedError) as exc:
            raise BundleRefused(f"bundle file {name!r}: unreadable ({exc})") from None
        if name == MANIFEST:
            try:
                doc = tomllib.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                raise BundleRefused(f"bundle {MANIFEST}: not valid TOML ({exc})") from None
            mine, theirs = _trusted_manifest(root), _strip(doc)
            if theirs != mine:
                keys = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
                raise BundleRefused(f"bundle {MANIFEST}: differs from this node's anya-fl in "
                                    f"[{', '.join(keys)}] (another app or another version)")
            manifest_seen = True
            continue
        if name == ".info/CONTENT":
            continue
        want = _trusted_digest(root, name)
        if want is None:
            raise BundleRefused(f"bundle file {name!r}: not part of this node's anya-fl")
        if hashlib.sha256(data).hexdigest() != want:
            raise BundleRefused(f"bundle file {name!r}: differs from this node's copy (another version, "
                                "or code this node did not install)")
        checked += 1
    if not manifest_seen:
        raise BundleRefused(f"bundle: no {MANIFEST}")
    return {"files": checked}
