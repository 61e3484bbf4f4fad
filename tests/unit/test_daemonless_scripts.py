"""composer/builders/daemonless/layout.py: console scripts run the image's python, and RECORD stays true."""

from __future__ import annotations

import base64
import csv
import hashlib
import os
from pathlib import Path

import pytest

from composer.builders.daemonless.layout import fix_scripts, python_shebang, rewrite_shebang

BODY = b"# -*- coding: utf-8 -*-\nimport sys\nfrom pkg.cli import main\nsys.exit(main())\n"


@pytest.mark.parametrize("first", [
    b"#!/root/.pyenv/versions/3.11.7/bin/python",
    b"#!/work/main/.venv/bin/python3.11",
    b"#!/usr/bin/env python3",  # not python itself: left alone (see below)
])
def test_host_python_shebang_rewritten(first):
    data = first + b"\n" + BODY
    new = rewrite_shebang(data, "/opt/venv/bin/python3")
    if first.endswith(b"env python3"):
        assert new is None
    else:
        assert new == b"#!/opt/venv/bin/python3\n" + BODY


def test_trampoline_rewritten():
    data = b"#!/bin/sh\n'''exec' '/a path/with space/python' \"$0\" \"$@\"\n' '''\n" + BODY
    assert rewrite_shebang(data, "/usr/bin/python3") == b"#!/usr/bin/python3\n" + BODY


def test_long_or_spaced_executable_gets_a_trampoline():
    long = "/opt/" + "x" * 130 + "/bin/python3"
    for exe in (long, "/opt/my env/bin/python"):
        head = python_shebang(exe)
        assert head.startswith(b"#!/bin/sh\n'''exec' ")
        assert rewrite_shebang(head + BODY, "/usr/bin/python3") == b"#!/usr/bin/python3\n" + BODY


@pytest.mark.parametrize("data", [b"\x7fELF\x02\x01\x01binary", b"#!/bin/bash\necho hi\n", b"", b"print('no shebang')\n"])
def test_non_python_scripts_untouched(data):
    assert rewrite_shebang(data, "/opt/venv/bin/python3") is None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def test_fix_scripts_updates_record(tmp_path):
    prefix = tmp_path / "prefix"
    site = prefix / "lib" / "python3.11" / "site-packages"
    (site / "pkg-1.0.dist-info").mkdir(parents=True)
    (prefix / "bin").mkdir()
    old = b"#!/host/venv/bin/python\n" + BODY
    (prefix / "bin" / "pkg-cli").write_bytes(old)
    (prefix / "bin" / "native").write_bytes(b"\x7fELF")
    cache_copy = tmp_path / "cache-file"
    cache_copy.write_bytes(old)
    os.unlink(prefix / "bin" / "pkg-cli")
    os.link(cache_copy, prefix / "bin" / "pkg-cli")  # as uv's hard link into its cache would be
    rows = [
        ["pkg/__init__.py", "sha256=abc", "0"],
        ["../../../bin/pkg-cli", f"sha256={_b64(old)}", str(len(old))],
        ["../../../bin/native", f"sha256={_b64(b'x')}", "4"],
        ["pkg-1.0.dist-info/RECORD", "", ""],
    ]
    with open(site / "pkg-1.0.dist-info" / "RECORD", "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)

    changed = fix_scripts(prefix, site, "/opt/venv/bin/python3")

    new = (prefix / "bin" / "pkg-cli").read_bytes()
    assert new == b"#!/opt/venv/bin/python3\n" + BODY
    assert changed == [str(prefix / "bin" / "pkg-cli")]
    assert cache_copy.read_bytes() == old  # the cache's copy was not edited through the hard link
    assert os.access(prefix / "bin" / "pkg-cli", os.X_OK)
    record = list(csv.reader(open(site / "pkg-1.0.dist-info" / "RECORD")))
    assert record[1] == ["../../../bin/pkg-cli", f"sha256={_b64(new)}", str(len(new))]
    assert record[0] == rows[0] and record[2] == rows[2] and record[3] == rows[3]
    assert (prefix / "bin" / "native").read_bytes() == b"\x7fELF"
