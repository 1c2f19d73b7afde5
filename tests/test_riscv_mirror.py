"""scripts/riscv-check's Debian mirror: ``ANYA_FL_DEBIAN_MIRROR``, else apt's own sources, else exit 2.

``scripts/riscv_check.py mirror`` (``debian_mirror``) is what the bash script calls before it builds the
riscv64 root; no mirror is written into either file. Hosts below are reserved names (``.invalid``,
``.example``) that resolve nowhere.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_riscv import ROOT, rc  # scripts/riscv_check.py, loaded once

NO_ENV: dict[str, str] = {}


def _apt(tmp_path: Path, sources_list: str | None = None, **parts: str) -> Path:
    """An apt configuration directory: ``sources.list`` and ``sources.list.d/<name>`` for each ``parts``."""
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    if sources_list is not None:
        (apt / "sources.list").write_text(sources_list)
    for name, text in parts.items():
        (apt / "sources.list.d" / name.replace("__", ".")).write_text(text)
    return apt


def test_one_line_format(tmp_path) -> None:
    apt = _apt(tmp_path, """\
# deb http://commented.invalid/debian trixie main
deb-src http://src.invalid/debian trixie main
deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] https://vendor.invalid/apt stable main
deb http://security.invalid/debian-security trixie-security main
deb [ arch=amd64,riscv64 ] http://mirror.invalid/debian/ trixie main contrib  # the one
deb http://second.invalid/debian trixie main
""")
    assert rc.apt_sources(apt)[0] == ("https://vendor.invalid/apt", ["stable"])
    assert rc.debian_mirror(NO_ENV, apt) == "http://mirror.invalid/debian/"


def test_deb822_format(tmp_path) -> None:
    apt = _apt(tmp_path, None, debian__sources="""\
Types: deb
# http://snapshot.invalid/archive/debian/20250520T000000Z
URIs: http://off.invalid/debian
Suites: trixie
Components: main
Enabled: no

Types: deb-src
URIs: http://src.invalid/debian
Suites: trixie

Types: deb
URIs: http://security.invalid/debian
Suites: trixie-security
Components: main

Types: deb-src deb
URIs: https://vendor.invalid/apt
 http://mirror.invalid/debian
Suites: trixie trixie-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
""")
    assert ("http://off.invalid/debian", ["trixie"]) not in rc.apt_sources(apt)  # Enabled: no
    assert rc.debian_mirror(NO_ENV, apt) == "http://mirror.invalid/debian"


def test_files_are_read_in_apts_order(tmp_path) -> None:
    # sources.list first, then sources.list.d by name, .list and .sources alike; other extensions are ignored
    parts = {"b__sources": "Types: deb\nURIs: http://b.invalid/debian\nSuites: trixie\n",
             "a__list": "deb http://a.invalid/debian trixie main\n",
             "0__list__disabled": "deb http://disabled.invalid/debian trixie main\n"}
    assert rc.debian_mirror(NO_ENV, _apt(tmp_path, None, **parts)) == "http://a.invalid/debian"
    apt = _apt(tmp_path / "2", "deb file:/srv/debian trixie main\n", **parts)
    assert rc.debian_mirror(NO_ENV, apt) == "file:/srv/debian"


def test_environment_variable_wins(tmp_path) -> None:
    apt = _apt(tmp_path, "deb http://mirror.invalid/debian trixie main\n")
    assert rc.debian_mirror({rc.MIRROR_ENV: " http://chosen.example/debian "}, apt) == "http://chosen.example/debian"
    assert rc.debian_mirror({rc.MIRROR_ENV: "  "}, apt) == "http://mirror.invalid/debian"  # blank: not set


def test_the_command_prints_the_mirror(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.delenv(rc.MIRROR_ENV, raising=False)
    apt = _apt(tmp_path, None, debian__sources="Types: deb\nURIs: http://mirror.invalid/debian\nSuites: trixie\n")
    assert rc.main(["mirror", "--apt-dir", str(apt)]) == 0
    assert capsys.readouterr().out == "http://mirror.invalid/debian\n"
    monkeypatch.setenv(rc.MIRROR_ENV, "http://chosen.example/debian")
    assert rc.main(["mirror", "--apt-dir", str(tmp_path / "absent")]) == 0
    assert capsys.readouterr().out == "http://chosen.example/debian\n"


@pytest.mark.parametrize("sources", [
    None,  # no apt configuration at all
    "",
    "deb https://vendor.invalid/apt stable main\ndeb http://ports.invalid/debian-ports sid main\n",
    "deb http://security.invalid/debian-security trixie-security main\n",
    "deb-src http://src.invalid/debian trixie main\n",
])
def test_no_mirror_exits_2_saying_what_to_set(tmp_path, monkeypatch, capsys, sources) -> None:
    monkeypatch.delenv(rc.MIRROR_ENV, raising=False)
    apt = _apt(tmp_path, sources, vendor__sources="Types: deb\nURIs: https://vendor.invalid/apt\nSuites: x\n")
    assert rc.debian_mirror(NO_ENV, apt) is None
    assert rc.main(["mirror", "--apt-dir", str(apt)]) == 2  # scripts/riscv-check exits 2; CI reports "skipped"
    out = capsys.readouterr()
    assert out.out == ""
    assert "ANYA_FL_DEBIAN_MIRROR" in out.err and "sources.list" in out.err and "no Debian mirror" in out.err


def test_no_mirror_is_written_into_the_scripts() -> None:
    for name in ("riscv-check", "riscv_check.py"):
        text = (ROOT / "scripts" / name).read_text()
        assert "debian.org" not in text, name
        assert not re.search(r"(https?|ftp)://[A-Za-z0-9]", text), name
