"""The daemonless builder's layer is a reproducible tar (composer/builders/daemonless/tarball.py),
mapped onto the image's layout (composer/builders/daemonless/layout.py)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from composer.builders.base import CannotBuild
from composer.builders.daemonless import layout, tarball
from composer.builders.daemonless.layout import Entry, Layout, stage_entries
from composer.builders.daemonless.tarball import write_layer
from composer.errors import BuildError, UsageError
from composer.model.records import Image, Platform, Python, RunRecord

VENV = Layout(executable="/opt/venv/bin/python3", site_packages="/opt/venv/lib/python3.11/site-packages", base="/opt/venv")
DEBIAN = Layout(executable="/usr/bin/python3", site_packages="/usr/local/lib/python3.11/dist-packages", base="/usr/local")


def _entries():
    return [
        Entry("opt/venv/lib/python3.11/site-packages/zeta.py", "file", 0o600, data=b"z = 1\n"),
        Entry("opt/venv/bin/tool", "file", 0o700, data=b"#!/opt/venv/bin/python3\nprint()\n"),
        Entry("opt/venv/lib/python3.11/site-packages/pkg", "dir", 0o700),
        Entry("opt/venv/lib/python3.11/site-packages/pkg/__init__.py", "file", 0o664, data=b""),
        Entry("opt/venv/lib/python3.11/site-packages/pkg/link.py", "symlink", 0o700, linkname="__init__.py"),
        Entry("opt/venv/lib/python3.11/site-packages/alpha.py", "file", 0o644, data="é = 'ü'\n".encode()),
    ]


def _layer(entries, epoch=tarball.DEFAULT_EPOCH, compression="gzip"):
    out = io.BytesIO()
    layer = write_layer(entries, out, compression, epoch)
    return layer, out.getvalue()


def test_same_inputs_same_bytes_whatever_the_order():
    a, blob_a = _layer(_entries())
    b, blob_b = _layer(list(reversed(_entries())))
    assert blob_a == blob_b
    assert a == b
    assert a.digest == "sha256:" + hashlib.sha256(blob_a).hexdigest()
    assert a.size == len(blob_a)
    raw = gzip.decompress(blob_a)
    assert a.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert a.tar_size == len(raw)


def test_entries_sorted_root_owned_fixed_mtime_normalised_modes():
    _, blob = _layer(_entries(), epoch=1_700_000_000)
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    for m in members:
        assert (m.uid, m.gid, m.uname, m.gname) == (0, 0, "", "")
        assert m.mtime == 1_700_000_000
    modes = {m.name: (m.type, m.mode) for m in members}
    assert modes["opt/venv/lib/python3.11/site-packages/zeta.py"] == (tarfile.REGTYPE, 0o644)
    assert modes["opt/venv/bin/tool"] == (tarfile.REGTYPE, 0o755)
    assert modes["opt/venv/lib/python3.11/site-packages/pkg/__init__.py"] == (tarfile.REGTYPE, 0o644)
    assert modes["opt/venv/lib/python3.11/site-packages/pkg"] == (tarfile.DIRTYPE, 0o755)
    assert modes["opt/venv/lib/python3.11/site-packages/pkg/link.py"][0] == tarfile.SYMTYPE
    assert all(not n.startswith("/") and not n.startswith("./") for n in names)


def test_gzip_header_has_no_name_and_no_time():
    _, blob = _layer(_entries())
    assert blob[:3] == b"\x1f\x8b\x08"
    flags, mtime = blob[3], blob[4:8]
    assert flags & 0x08 == 0  # FNAME
    assert mtime == b"\x00\x00\x00\x00"


def test_source_date_epoch_sets_mtimes(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1234567890")
    out = io.BytesIO()
    write_layer(_entries(), out)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue()), mode="r:gz") as tar:
        assert {m.mtime for m in tar.getmembers()} == {1234567890}
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "soon")
    with pytest.raises(UsageError):
        tarball.source_date_epoch()
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "-1")
    with pytest.raises(UsageError):
        tarball.source_date_epoch()
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    assert tarball.source_date_epoch() == tarball.DEFAULT_EPOCH


@pytest.mark.parametrize("encoder, other_level", [("isal", 3), ("zlib", 4)])
def test_gzip_level_changes_the_bytes_not_the_files(encoder, other_level):
    out_a, out_b = io.BytesIO(), io.BytesIO()
    a = write_layer(_entries() * 50, out_a, epoch=0, encoding=tarball.layer_encoding("gzip", encoder, other_level))
    b = write_layer(_entries() * 50, out_b, epoch=0, encoding=tarball.layer_encoding("gzip", encoder))  # the default level
    assert a.diff_id == b.diff_id and a.digest != b.digest
    assert gzip.decompress(out_a.getvalue()) == gzip.decompress(out_b.getvalue())
    with pytest.raises(ValueError):
        tarball.ParallelGzip(io.BytesIO(), level=10)


def test_default_encoding_is_isal_level_2_and_pinned():
    """The default gzip encoder, what the record says about it, and the pin that fixes its bytes."""
    enc = tarball.layer_encoding()
    assert enc.to_json() == {"compression": "gzip", "encoder": "isal", "version": tarball.ISAL_VERSION, "level": 2,
                             "block": 1 << 20}
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert f'"isal=={tarball.ISAL_VERSION}"' in pyproject
    assert tarball.layer_encoding("gzip", "zlib").level == 6 and tarball.layer_encoding("zstd").encoder == "zstandard"
    for compression, encoder, level in (("gzip", "isal", 4), ("gzip", "zlib", 0), ("gzip", "zstandard", None),
                                        ("zstd", "isal", None)):
        with pytest.raises(UsageError):
            tarball.layer_encoding(compression, encoder, level)


def _tar_bytes(n: int) -> bytes:
    """n bytes that compress like a layer does: text, repeated structure and some noise."""
    import random

    rnd = random.Random(14)
    parts, size = [], 0
    while size < n:
        kind = rnd.random()
        piece = (b"def f%d(x):\n    return x * %d\n" % (size, rnd.randint(0, 99)) * rnd.randint(1, 40) if kind < 0.6
                 else rnd.randbytes(rnd.randint(1, 3000)) if kind < 0.8 else bytes(rnd.randint(1, 8000)))
        parts.append(piece)
        size += len(piece)
    return b"".join(parts)[:n]


@pytest.mark.parametrize("encoder", ["isal", "zlib", "zstandard"])
def test_encoder_bytes_do_not_depend_on_threads_or_write_sizes(encoder):
    """One core or two, written in blocks or in odd pieces: the same bytes (the reproducibility
    the record promises). 2.5 blocks of 1 MiB, so the block boundaries and the last short block count."""
    data = _tar_bytes(5 << 19)
    enc = tarball.layer_encoding("zstd" if encoder == "zstandard" else "gzip", encoder)
    outs = set()
    for workers, piece in ((1, 1 << 20), (2, 1 << 20), (2, 7919), (1, 3 << 20), (3, 65536 + 1)):
        out = io.BytesIO()
        c = tarball.compressor(out, enc, workers)
        for i in range(0, len(data), piece):
            c.write(data[i : i + piece])
        c.close()
        outs.add(out.getvalue())
    assert len(outs) == 1
    blob = outs.pop()
    if encoder == "zstandard":
        import zstandard

        assert zstandard.ZstdDecompressor().decompressobj().decompress(blob) == data
    else:
        assert gzip.decompress(blob) == data


def test_different_content_different_digest():
    a, _ = _layer(_entries())
    changed = _entries()
    changed[0] = Entry(changed[0].path, "file", 0o644, data=b"z = 2\n")
    b, _ = _layer(changed)
    assert a.digest != b.digest and a.diff_id != b.diff_id


def test_files_from_disk_same_as_bytes(tmp_path):
    src = tmp_path / "f"
    src.write_bytes(b"hello\n")
    os.chmod(src, 0o751)
    a, blob_a = _layer([Entry("x/f", "file", 0o755, source=str(src))])
    b, blob_b = _layer([Entry("x/f", "file", 0o755, data=b"hello\n")])
    assert blob_a == blob_b


def test_empty_layer_is_a_valid_tar():
    layer, blob = _layer([])
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        assert tar.getmembers() == []
    assert layer.tar_size % 512 == 0


def _fake_prefix(root: Path) -> Path:
    """What `uv pip install --prefix` leaves: scheme layout plus uv's lock file."""
    prefix = root / "prefix"
    site = prefix / "lib" / "python3.11" / "site-packages"
    (site / "pkg" / "__pycache__").mkdir(parents=True)
    (site / "pkg" / "__init__.py").write_text("")
    (site / "pkg" / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"\x00pyc")
    (site / "pkg-1.0.dist-info").mkdir()
    (site / "pkg-1.0.dist-info" / "RECORD").write_text("pkg/__init__.py,,\n")
    (site / "mod.py").write_text("x = 1\n")
    (prefix / "bin").mkdir()
    (prefix / "bin" / "tool").write_text("#!/host/python\nimport pkg\n")
    os.chmod(prefix / "bin" / "tool", 0o755)
    (prefix / "etc" / "jupyter" / "conf.d").mkdir(parents=True)
    (prefix / "etc" / "jupyter" / "conf.d" / "pkg.json").write_text("{}")
    (prefix / ".lock").write_text("")
    return prefix


def test_stage_maps_onto_a_venv(tmp_path):
    entries = stage_entries(_fake_prefix(tmp_path), VENV)
    got = {e.path: e.kind for e in entries}
    assert got == {
        "opt/venv/bin/tool": "file",
        "opt/venv/etc": "dir",
        "opt/venv/etc/jupyter": "dir",
        "opt/venv/etc/jupyter/conf.d": "dir",
        "opt/venv/etc/jupyter/conf.d/pkg.json": "file",
        "opt/venv/lib/python3.11/site-packages/mod.py": "file",
        "opt/venv/lib/python3.11/site-packages/pkg": "dir",
        "opt/venv/lib/python3.11/site-packages/pkg-1.0.dist-info": "dir",
        "opt/venv/lib/python3.11/site-packages/pkg-1.0.dist-info/RECORD": "file",
        "opt/venv/lib/python3.11/site-packages/pkg/__init__.py": "file",
    }
    assert [e.path for e in entries] == sorted(e.path for e in entries)
    # The install roots and their ancestors exist in the image: no entry overrides their metadata.
    for p in ("opt", "opt/venv", "opt/venv/bin", "opt/venv/lib", "opt/venv/lib/python3.11", "opt/venv/lib/python3.11/site-packages"):
        assert p not in got


def test_stage_maps_onto_debian_system_python(tmp_path):
    """Debian's python installs into /usr/local/lib/python3.X/dist-packages and /usr/local/bin."""
    entries = {e.path for e in stage_entries(_fake_prefix(tmp_path), DEBIAN)}
    assert "usr/local/lib/python3.11/dist-packages/mod.py" in entries
    assert "usr/local/bin/tool" in entries
    assert "usr/local/etc/jupyter/conf.d/pkg.json" in entries
    assert not any(".lock" in p or "__pycache__" in p or "site-packages" in p for p in entries)
    assert "usr/local/bin" not in entries and "usr/local" not in entries


def test_stage_with_other_python_minor_maps_by_site_packages(tmp_path):
    """uv lays out the prefix for the host interpreter's version; the mapping goes by site-packages."""
    prefix = tmp_path / "p"
    site = prefix / "lib" / "python3.9" / "site-packages"
    site.mkdir(parents=True)
    (site / "m.py").write_text("")
    layout = Layout("/usr/local/bin/python3.12", "/usr/local/lib/python3.12/site-packages", "/usr/local")
    assert [e.path for e in stage_entries(prefix, layout)] == ["usr/local/lib/python3.12/site-packages/m.py"]


def _upstream(site: str) -> RunRecord:
    """A run record whose python has this site-packages (unchecked: layout_for does the checking)."""
    python = Python(executable="/x/python", version="3.11.2", site_packages=site)
    return RunRecord(run="r", image=Image("127.0.0.1:5000/models/a", "sha256:" + "a" * 64), python=python,
                     platform=Platform(), distributions=(), distributions_source="image", created="", composer_version="")


@pytest.mark.parametrize("site, base", [
    ("/opt/venv/lib/python3.11/site-packages", "/opt/venv"),
    ("/usr/local/lib/python3.11/dist-packages", "/usr/local"),
    ("/usr/lib64/python3.12/site-packages", "/usr"),
    ("/opt/py/lib/python3.13t/site-packages/", "/opt/py"),
])
def test_scheme_base(site, base):
    assert layout.layout_for(_upstream(site)).base == base
    assert layout.layout_for(_upstream(site)).scripts == base + "/bin"
    assert layout.layout_for(_upstream(site)).executable == "/x/python"


@pytest.mark.parametrize("site", ["/usr/lib/python3/dist-packages", "relative/lib/python3.11/site-packages", "/opt/site-packages", ""])
def test_unknown_site_packages_layout_needs_buildkit(site):
    with pytest.raises(CannotBuild):
        layout.layout_for(_upstream(site))


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096 + 17])
def test_parallel_gzip_same_bytes_whatever_the_workers(size):
    data = (b"composer " * 1000 + bytes(range(256)) * 20)[: size] if size < 12000 else (bytes(range(256)) * 100)[:size]
    outs = []
    for workers in (1, 2, 5):
        out = io.BytesIO()
        z = tarball.ParallelGzip(out, workers=workers, block=4096)
        for i in range(0, len(data), 1000):
            z.write(data[i : i + 1000])
        z.close()
        outs.append(out.getvalue())
    assert outs[0] == outs[1] == outs[2]
    assert gzip.decompress(outs[0]) == data
    assert outs[0][:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


# -- the tar writer writes tarfile's bytes, faster ------------------------------------------------
def _tarfile_reference(entries, epoch: int) -> bytes:
    """The layer's tar as tarfile's own stream writer (PAX) makes it: what the layer writer did
    before it wrote the headers and the files itself, and must still give, byte for byte."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8") as tar:
        for e in sorted(entries, key=lambda e: e.path):
            info = tarfile.TarInfo(e.path)
            info.mtime, info.uid, info.gid, info.uname, info.gname = epoch, 0, 0, "", ""
            if e.kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif e.kind == "symlink":
                info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, e.linkname
                tar.addfile(info)
            else:
                data = e.data if e.data is not None else Path(e.source).read_bytes()
                info.type, info.mode, info.size = tarfile.REGTYPE, 0o755 if e.mode & 0o111 else 0o644, len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_the_tar_is_what_tarfile_writes(tmp_path):
    big = tmp_path / "big.so"
    big.write_bytes(bytes(range(256)) * 9000 + b"tail")  # spans several encoder blocks, not a multiple of 512
    (tmp_path / "empty").write_bytes(b"")
    long_dir = "opt/venv/lib/python3.11/site-packages/" + "d" * 70
    entries = _entries() + [
        Entry("opt/venv/lib/python3.11/site-packages/big.so", "file", 0o755, source=str(big)),
        Entry("opt/venv/lib/python3.11/site-packages/empty", "file", 0o644, source=str(tmp_path / "empty")),
        Entry(long_dir, "dir", 0o755),  # with its slash, over 100 characters: a PAX header
        Entry(long_dir + "/m.py", "file", 0o644, data=b"x"),
        Entry("opt/venv/lib/python3.11/site-packages/ünïcode/çà.py", "file", 0o644, data=b"u"),
        Entry("opt/venv/lib/python3.11/site-packages/ünïcode", "dir", 0o755),
        Entry("opt/venv/bin/far", "symlink", 0o777, linkname="../" * 40 + "target"),  # a long link
        Entry("opt/venv/bin/é", "symlink", 0o777, linkname="cible-é"),
        Entry("x" * 99, "dir", 0o755),  # 100 with its slash: still fits
        Entry("y" * 100, "file", 0o644, data=b"y"),
        Entry("z" * 101, "file", 0o644, data=b"z"),
    ]
    for encoding in (tarball.layer_encoding("gzip"), tarball.layer_encoding("gzip", "zlib", 1)):
        out = io.BytesIO()
        layer = write_layer(entries, out, epoch=1_700_000_000, encoding=encoding, workers=2)
        raw = gzip.decompress(out.getvalue())
        assert raw == _tarfile_reference(entries, 1_700_000_000)
        assert layer.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest() and layer.tar_size == len(raw)


@pytest.mark.parametrize("path,kind,size,mtime,link", [
    ("a", "file", 0, 0, ""), ("p/" + "n" * 97, "file", 5, 315532800, ""), ("d" * 99, "dir", 0, 1, ""),
    ("d" * 100, "dir", 0, 1, ""), ("s", "symlink", 0, 7, "t" * 100), ("s", "symlink", 0, 7, "t" * 101),
    ("big", "file", 8 ** 11 - 1, 8 ** 11 - 1, ""), ("huge", "file", 8 ** 11, 0, ""), ("né", "file", 1, 0, ""),
    ("n", "symlink", 0, 0, "é"), ("x" * 101, "file", 1, 0, ""),
])
def test_the_fast_header_is_tarfiles_or_none(path, kind, size, mtime, link):
    mode = {"file": 0o644, "dir": 0o755, "symlink": 0o777}[kind]
    info = tarfile.TarInfo(path)
    info.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE}[kind]
    info.mode, info.size, info.mtime, info.linkname = mode, size, mtime, link
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    reference = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    fast = tarball.ustar_header(path, kind, mode, size, mtime, link)
    assert fast is None or fast == reference
    assert (fast is None) == (len(reference) > tarfile.BLOCKSIZE)  # None exactly when tarfile needs a PAX header


def test_a_file_that_shrinks_while_it_is_written_is_an_error(tmp_path, monkeypatch):
    src = tmp_path / "f"
    src.write_bytes(b"data" * 1000)
    real_fstat = os.fstat

    def stale_fstat(fd):  # the size the file had a moment ago: more than can be read now
        st = real_fstat(fd)
        return os.stat_result((st.st_mode, st.st_ino, st.st_dev, st.st_nlink, st.st_uid, st.st_gid, st.st_size + 10,
                               st.st_atime, st.st_mtime, st.st_ctime))

    monkeypatch.setattr(os, "fstat", stale_fstat)
    with pytest.raises(BuildError, match="shrank while the layer was written"):
        write_layer([Entry("opt/f", "file", 0o644, source=str(src))], io.BytesIO())


def test_a_symlink_loop_is_kept_as_a_symlink(tmp_path):
    site = tmp_path / "lib" / "python3.12" / "site-packages"
    site.mkdir(parents=True)
    (site / "loop").symlink_to("loop")  # is_dir() raises ELOOP on it
    (site / "m.py").write_text("x = 1\n")
    layout = Layout(executable="/usr/local/bin/python3", site_packages="/usr/local/lib/python3.12/site-packages", base="/usr/local")
    entries = {e.path: e for e in stage_entries(tmp_path, layout)}
    assert entries["usr/local/lib/python3.12/site-packages/loop"].kind == "symlink"
