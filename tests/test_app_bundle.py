"""A node runs only the app bundle (FAB) that is its own installed anya-fl, byte for byte."""

from __future__ import annotations

import io
import tomllib
import zipfile
from pathlib import Path

import pytest
import tomli_w
from flwr.cli.build import build_fab_from_disk

from anya_fl.deployment import project_root
from core.security.app_bundle import BundleRefused, verify_app_bundle

ROOT = project_root()


@pytest.fixture(scope="module")
def fab() -> bytes:
    """The bundle `flwr run .` sends, built by Flower's own builder from this checkout."""
    return build_fab_from_disk(ROOT)


def _members(fab: bytes) -> dict[str, bytes]:
    zf = zipfile.ZipFile(io.BytesIO(fab))
    return {i.filename: zf.read(i) for i in zf.infolist()}


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_own_bundle_is_accepted(fab: bytes) -> None:
    counts = verify_app_bundle(fab, ROOT)
    assert counts["files"] == len([n for n in _members(fab) if n not in ("pyproject.toml", ".info/CONTENT")])
    assert counts["files"] > 50  # the whole package, not an empty check


def test_run_config_defaults_are_data(fab: bytes) -> None:
    """A coordinator chooses the run config anyway: other defaults in pyproject.toml are not code."""
    members = _members(fab)
    doc = tomllib.loads(members["pyproject.toml"].decode())
    doc["tool"]["flwr"]["app"]["config"]["rounds"] = 99
    members["pyproject.toml"] = tomli_w.dumps(doc).encode()
    verify_app_bundle(_zip(members), ROOT)


@pytest.mark.parametrize("change, match", [
    (lambda m: m.__setitem__("fl_client/app.py", m["fl_client/app.py"] + b"\nimport os; os.system('id')\n"),
     "bundle file 'fl_client/app.py': differs from this node's copy"),
    (lambda m: m.__setitem__("evil.py", b"import os\n"), "bundle file 'evil.py': not part of this node's anya-fl"),
    (lambda m: m.__setitem__("fl_client/app.cpython-311-x86_64-linux-gnu.so", b"\x7fELF"),
     "not part of this node's anya-fl"),
    (lambda m: m.__setitem__("fl_client/__pycache__/app.cpython-311.pyc", b"\x00" * 16),
     "not part of this node's anya-fl"),
    (lambda m: m.__setitem__("../outside.py", b"x = 1\n"), "not a plain relative path"),
    (lambda m: m.__setitem__("/etc/cron.d/x", b"x\n"), "not a plain relative path"),
    (lambda m: m.__setitem__("fl_client/./app.py", b"x\n"), "not a plain relative path"),
    (lambda m: m.pop("pyproject.toml"), "no pyproject.toml"),
    (lambda m: m.__setitem__("pyproject.toml", m["pyproject.toml"].replace(b"fl_client.app:app", b"evil:app")),
     r"pyproject.toml: differs .* in \[tool\]"),
    (lambda m: m.__setitem__("pyproject.toml", m["pyproject.toml"].replace(b'name = "anya-fl"', b'name = "anya-fl-fork"')),
     r"pyproject.toml: differs .* in \[project\]"),
    (lambda m: m.__setitem__("pyproject.toml", b"[[not toml"), "not valid TOML"),
])
def test_foreign_or_changed_bundles_are_refused(fab: bytes, change, match: str) -> None:
    members = _members(fab)
    change(members)
    with pytest.raises(BundleRefused, match=match):
        verify_app_bundle(_zip(members), ROOT)


def test_foreign_app_built_by_flower_is_refused(tmp_path: Path) -> None:
    app = tmp_path / "foreign"
    app.mkdir()
    (app / "pyproject.toml").write_text(
        '[project]\nname = "foreign"\nversion = "1.0.0"\n[tool.flwr.app]\npublisher = "x"\n'
        '[tool.flwr.app.components]\nserverapp = "foreign_app:server"\nclientapp = "foreign_app:client"\n'
        '[tool.flwr.app.config]\n')
    (app / "foreign_app.py").write_text("import os\n")
    with pytest.raises(BundleRefused, match="pyproject.toml: differs"):
        verify_app_bundle(build_fab_from_disk(app), ROOT)
    with pytest.raises(BundleRefused, match="not a valid zip"):
        verify_app_bundle(b"PK\x03\x04 not really", ROOT)
