#!/usr/bin/env python3
"""Side-by-side benchmark: five ways to put extra packages on an upstream image, in one run.

Rows (each a real build and push, never a cache hit, except the one named so):
  naive       Dockerfile `FROM upstream` + `COPY requirements.txt` + `RUN pip install
              --no-cache-dir -r requirements.txt` (CA as a secret mount); `docker build
              --no-cache` (Docker's built-in BuildKit) + `docker push`.
  buildkit    `python -m composer build --builder docker` (lock, Dockerfile, BuildKit, push,
              records, tags): the whole CLI.
  cache-hit   the same `composer build` again: the whole CLI, answering "cached" (straight to
              the registry, not through the counting proxy: a hit pushes nothing).
  daemonless  `python -m composer build --builder daemonless`: the whole CLI, as a user runs it.
  floor       the physical floor, stage by stage, each timed alone and added up: `uv pip
              install --prefix` of the same lock into an empty prefix (warm cache), GNU tar
              of it, the fastest of several compressors measured on those same tar bytes
              (isal levels 0-3, zlib level 1, zstd levels 1 and 3, all cores), and one blob
              POST/PUT of that output: the least any approach must do.
  dry runs    (before the daemonless row) `composer build --dry-run`, the whole CLI, with an empty
              state directory (uv makes the lock; uv's own cache is warm) and with composer's lock
              cache: the difference is the warm lock time.
  readiness   (after the daemonless row) `docker pull` of the composed image on the engine,
              which already holds the base (the round's upstream was built there), then
              `docker run IMAGE python -c "import pandas, sklearn"`; against its own floor:
              a GET of the new layer alone, unpacked to disk (what a pull of it must do), plus
              the same imports in the image once it is present.

Every round gets its own upstream image (the shared venv upstream made with
scripts/make-upstream.sh plus one tiny layer of its own, so no BuildKit cache can answer
for the composer build) recorded in fresh registry prefixes. One untimed warm-up round
fills uv's caches (the host's, and the BuildKit cache mount composer's Dockerfile uses)
and composer's local lock cache: every round's upstream has the same pins, so the composer
rows reuse the lock (as a new run of the same upstream flow does), and the floor starts
from that lock too. The naive build has no cache to warm (it downloads every time, as
such builds do).

Bytes are counted by a forwarding proxy in front of the registry (its own process), in one
untimed round per size: "pushed" is request bodies (POST/PUT/PATCH), "pulled" response
bodies of GETs. The timed rounds talk to the registry directly, so the proxy's per-request
latency (which would weigh on the rows that make more, smaller requests) is in no wall time.

  scripts/bench.py [--runs 3] [--sizes small,large] [--out bench-results.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import http.client
import http.server
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Dict, List, Optional

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SIZES = {
    "small": ["six==1.17.0", "iniconfig==2.0.0"],
    "large": ["pandas==2.2.3", "scikit-learn==1.5.2"],
}
UPSTREAM_PINS = ["attrs==23.1.0", "packaging==23.2"]
RUN_ID = "Bench/1"
ROWS = ["naive", "buildkit", "cache-hit", "daemonless", "floor"]
LABELS = {
    "naive": "naive: docker build --no-cache + push",
    "buildkit": "composer build (BuildKit)",
    "cache-hit": "composer build, cache hit",
    "daemonless": "composer daemonless",
    "floor": "physical floor: uv+tar+fastest+1 blob",
}
IMPORTS = {"small": "import six, iniconfig", "large": "import pandas, sklearn"}
CA = os.environ.get("COMPOSER_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt"
DOCKER = "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else (shutil.which("docker") or "docker")
TIMEOUT = 3600


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# -- the counting proxy (runs in its own process: `bench.py --serve-proxy HOST:PORT`) ------------
_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "expect"}


class _CountingProxy(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str):
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        host, _, port = upstream.partition(":")
        self.upstream = (host, int(port or 80))
        self.lock = threading.Lock()
        self.stats: Dict[str, int] = {}

    def count(self, **kw: int) -> None:
        with self.lock:
            for k, v in kw.items():
                self.stats[k] = self.stats.get(k, 0) + v


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self):
        self._forward()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _control(self) -> None:
        if self.path == "/__bench/reset":
            with self.server.lock:
                self.server.stats = {}
        with self.server.lock:
            body = json.dumps(self.server.stats).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _forward(self) -> None:
        if self.path.startswith("/__bench/"):
            return self._control()
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        length = int(self.headers.get("Content-Length") or 0)
        conn = http.client.HTTPConnection(*self.server.upstream, timeout=600)
        conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for k, v in self.headers.items():
            if k.lower() not in _HOP:
                conn.putheader(k, v)
        if chunked:
            conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        sent = 0
        if chunked:
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    conn.send(b"0\r\n\r\n")
                    break
                data = self.rfile.read(size)
                self.rfile.readline()
                conn.send(b"%x\r\n%s\r\n" % (size, data))
                sent += size
        else:
            left = length
            while left > 0:
                data = self.rfile.read(min(left, 1 << 20))
                if not data:
                    break
                conn.send(data)
                sent += len(data)
                left -= len(data)
        resp = conn.getresponse()
        self.send_response_only(resp.status, resp.reason)
        no_body = self.command == "HEAD" or resp.status in (204, 304) or resp.status < 200
        resp_length = resp.getheader("Content-Length")
        for k, v in resp.getheaders():
            if k.lower() not in _HOP:
                self.send_header(k, v)
        if not no_body and resp_length is None:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        got = 0
        if not no_body:
            while True:
                data = resp.read(1 << 20)
                if not data:
                    break
                got += len(data)
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if resp_length is None else data)
            if resp_length is None:
                self.wfile.write(b"0\r\n\r\n")
        conn.close()
        m = self.command
        self.server.count(**{"requests": 1, f"{m}_requests": 1, f"{m}_request_bytes": sent, f"{m}_response_bytes": got})


def serve_proxy(upstream: str) -> None:
    server = _CountingProxy(upstream)
    print(server.server_address[1], flush=True)
    server.serve_forever(poll_interval=0.2)


class Proxy:
    def __init__(self, upstream: str):
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve-proxy", upstream], stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if not line.isdigit():
            raise SystemExit(f"bench: the counting proxy did not start ({line!r})")
        self.host = f"127.0.0.1:{line}"

    def reset(self) -> None:
        requests.post(f"http://{self.host}/__bench/reset", timeout=10).raise_for_status()

    def stats(self) -> Dict[str, int]:
        return requests.get(f"http://{self.host}/__bench/stats", timeout=10).json()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# -- helpers --------------------------------------------------------------------------------
def sh(cmd: List[str], *, env: Optional[dict] = None, cwd=None, input_text: Optional[str] = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=cwd,
                          input=input_text, timeout=TIMEOUT)
    if proc.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd[:4])}... failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def composer(*args: str, registry: str, env: Optional[dict] = None) -> dict:
    out = sh([sys.executable, "-m", "composer", *args, "--json"],
             env={"COMPOSER_REGISTRY": registry, "COMPOSER_PROGRESS": "quiet", **(env or {})}, cwd=str(ROOT))
    return json.loads(out.stdout)


def manifest_sizes(registry: str, repo: str, ref: str, base_layers: set) -> dict:
    """Image size (config + layers, compressed, as stored) and the new layers' size."""
    accept = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"
    r = requests.get(f"http://{registry}/v2/{repo}/manifests/{ref}", headers={"Accept": accept}, timeout=30)
    r.raise_for_status()
    m = r.json()
    layers = m.get("layers", [])
    return {
        "image_bytes": m["config"]["size"] + sum(l["size"] for l in layers),
        "added_layer_bytes": sum(l["size"] for l in layers if l["digest"] not in base_layers),
        "layers": len(layers),
        "new_layers": [l["digest"] for l in layers if l["digest"] not in base_layers],
    }


def upstream_layers(registry: str, repo: str, tag: str) -> set:
    accept = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"
    r = requests.get(f"http://{registry}/v2/{repo}/manifests/{tag}", headers={"Accept": accept}, timeout=30)
    r.raise_for_status()
    return {l["digest"] for l in r.json()["layers"]}


# -- one round ---------------------------------------------------------------------------------
class Round:
    """Fresh prefixes and a fresh upstream image (its own tiny layer) for one round of rows."""

    def __init__(self, bench: "Bench", size: str, via_proxy: bool = False):
        self.bench, self.size, self.via_proxy = bench, size, via_proxy
        self.rid = uuid.uuid4().hex[:10]
        p = self.host = bench.proxy.host if via_proxy else bench.registry
        self.ns = f"bench-{self.rid}"
        self.upstream = f"{p}/{self.ns}/upstream:1"
        self.prefix_bk = f"{p}/{self.ns}-bk"
        self.prefix_dl = f"{p}/{self.ns}-dl"
        ctx = bench.tmp / f"up-{self.rid}"
        ctx.mkdir()
        (ctx / "round-id").write_text(self.rid + "\n")
        (ctx / "Dockerfile").write_text(f"FROM {bench.shared_upstream}\nCOPY round-id /etc/bench-round-id\n")
        sh([DOCKER, "build", "-q", "-t", self.upstream, str(ctx)], env={"DOCKER_BUILDKIT": "1"})
        sh([DOCKER, "push", self.upstream])
        composer("record", "--run", RUN_ID, "--image", self.upstream, registry=self.prefix_bk)
        composer("record", "--run", RUN_ID, "--image", self.upstream, registry=self.prefix_dl)
        self.base_layers = upstream_layers(bench.registry, f"{self.ns}/upstream", "1")

    def cleanup(self) -> None:
        out = subprocess.run([DOCKER, "images", "--format", "{{.Repository}}:{{.Tag}}|{{.ID}}"], capture_output=True, text=True).stdout
        ids = sorted({line.split("|")[1] for line in out.splitlines() if line.startswith(f"{self.host}/{self.ns}")})
        if ids:
            subprocess.run([DOCKER, "rmi", "-f", *ids], capture_output=True)

    # -- rows: each returns what it produced; the caller times it and reads the proxy ----------
    def naive(self) -> dict:
        ctx = self.bench.tmp / f"naive-{self.rid}"
        ctx.mkdir()
        (ctx / "requirements.txt").write_text("\n".join(SIZES[self.size]) + "\n")
        (ctx / "Dockerfile").write_text(
            f"FROM {self.upstream}\n"
            "COPY requirements.txt /tmp/requirements.txt\n"
            "RUN --mount=type=secret,id=ca PIP_CERT=/run/secrets/ca "
            "pip install --no-cache-dir --disable-pip-version-check -r /tmp/requirements.txt\n"
        )
        tag = f"{self.host}/{self.ns}-naive/img:1"
        sh([DOCKER, "build", "--no-cache", "--progress", "plain", "--secret", f"id=ca,src={CA}", "-t", tag, str(ctx)],
           env={"DOCKER_BUILDKIT": "1"})
        pushed = sh([DOCKER, "push", tag]).stdout
        digest = next((w for line in pushed.splitlines() for w in line.split() if w.startswith("sha256:")), "")
        return {"repo": f"{self.ns}-naive/img", "ref": digest or "1", "digest": digest}

    def buildkit(self) -> dict:
        out = composer("build", "--upstream-run", RUN_ID, "--extra", str(self.bench.extras[self.size]),
                       "--builder", "docker", "--name", "bench", registry=self.prefix_bk)
        assert out["cached"] is False, out
        return {"repo": f"{self.ns}-bk/envs", "ref": out["digest"], "digest": out["digest"]}

    def cache_hit(self) -> dict:
        # Straight to the registry: a hit pushes nothing, and the counting proxy would add its own
        # latency to each of the hit's few lookups.
        direct = self.prefix_bk.replace(self.bench.proxy.host, self.bench.registry, 1)
        out = composer("build", "--upstream-run", RUN_ID, "--extra", str(self.bench.extras[self.size]),
                       "--builder", "docker", "--name", "bench", registry=direct)
        assert out["cached"] is True, out
        return {"repo": f"{self.ns}-bk/envs", "ref": out["digest"], "digest": out["digest"]}

    def daemonless(self) -> dict:
        # The whole CLI as a user runs it: lock (or the local lock cache), lease, build, record, tags.
        out = composer("build", "--upstream-run", RUN_ID, "--extra", str(self.bench.extras[self.size]),
                       "--builder", "daemonless", "--name", "bench", registry=self.prefix_dl)
        assert out["cached"] is False and out["builder"] == "daemonless", out
        return {"repo": f"{self.ns}-dl/envs", "ref": out["digest"], "digest": out["digest"]}

    def plans(self) -> dict:
        """`build --dry-run` (the whole CLI: read, lock, hash, ask the registry) with an empty state
        directory, so uv makes the lock (its own cache is warm), then with composer's lock cache:
        the difference is what a warm lock costs a build."""
        args = ("build", "--upstream-run", RUN_ID, "--extra", str(self.bench.extras[self.size]), "--builder", "daemonless",
                "--name", "bench", "--dry-run")
        out = {}
        for key, env in (("fresh_state_s", {"COMPOSER_STATE_DIR": tempfile.mkdtemp(dir=self.bench.tmp)}), ("lock_cached_s", None)):
            t0 = time.perf_counter()
            plan = composer(*args, registry=self.prefix_dl, env=env)
            out[key] = round(time.perf_counter() - t0, 3)
            assert plan["cached"] is False, plan
        out["lock_s"] = round(out["fresh_state_s"] - out["lock_cached_s"], 3)
        return out

    def floor(self) -> dict:
        """The physical floor, stage by stage (see the module docstring). Only the stages count
        in its wall time: the compressors that lose are measured too, but not counted."""
        target = self.bench.tmp / f"floor-{self.rid}"
        lockfile = self.bench.lockfiles[self.size]
        up = self.bench.upstream_record
        t0 = time.perf_counter()
        sh([self.bench.uv, "pip", "install", "--prefix", str(target), "--python", sys.executable,
            "--python-platform", up["platform"]["python_platform"], "--python-version", up["python"]["version"],
            "--only-binary", ":all:", "--no-deps", "--require-hashes", "--link-mode", "hardlink", "--quiet",
            "-r", str(lockfile)], env=self.bench.uv_env)
        t_uv = time.perf_counter() - t0
        tar_cmd = ["tar", "--sort=name", "-C", str(target), "-cf", "-", "."]
        t0 = time.perf_counter()
        sh_drain(tar_cmd)
        t_tar = time.perf_counter() - t0
        tar = sh_bytes(tar_cmd)  # the bytes the compressors get (untimed)
        shutil.rmtree(target, ignore_errors=True)
        times, best, blob = {}, None, b""
        for name, fn in compressors().items():
            t0 = time.perf_counter()
            out = fn(tar)
            times[name] = (round(time.perf_counter() - t0, 3), len(out))
            if best is None or times[name][0] < times[best][0]:
                best, blob = name, out
        del tar
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        repo = f"{self.ns}-floor/layer"
        host = self.host
        t0 = time.perf_counter()
        start = requests.post(f"http://{host}/v2/{repo}/blobs/uploads/", timeout=60)
        assert start.status_code == 202, start.text
        loc = start.headers["Location"]
        loc = loc if loc.startswith("http") else f"http://{host}{loc}"
        put = requests.put(f"{loc}{'&' if '?' in loc else '?'}digest={digest}", data=blob,
                           headers={"Content-Type": "application/octet-stream"}, timeout=TIMEOUT)
        assert put.status_code == 201, put.text
        t_up = time.perf_counter() - t0
        stages = {"uv": round(t_uv, 3), "tar": round(t_tar, 3), "compress": times[best][0], "upload": round(t_up, 3)}
        return {"digest": digest, "image_bytes": len(blob), "added_layer_bytes": len(blob), "layers": 1, "new_layers": [digest],
                "wall_s": round(sum(stages.values()), 3), "stages": stages, "fastest": best, "compressors": times}

    def readiness(self, ref: str, new_layer: str) -> dict:
        """Pull of the composed image (base present) + the imports in it; and its floor."""
        imports = IMPORTS[self.size]
        t0 = time.perf_counter()
        sh([DOCKER, "pull", "-q", ref])
        t_pull = time.perf_counter() - t0
        t0 = time.perf_counter()
        sh([DOCKER, "run", "--rm", "--network", "none", ref, "python", "-c", imports])
        t_first = time.perf_counter() - t0
        # The floor: the new layer alone, fetched and unpacked to disk, plus the imports once
        # the image is present (a second run: the same container start and imports, no pull).
        repo, _, _ = ref.partition("@")
        repo = repo.split("/", 1)[1]
        unpack = self.bench.tmp / f"unpack-{self.rid}"
        unpack.mkdir()
        t0 = time.perf_counter()
        with requests.get(f"http://{self.bench.registry}/v2/{repo}/blobs/{new_layer}", stream=True, timeout=TIMEOUT) as r:
            r.raise_for_status()
            proc = subprocess.Popen(["tar", "-xzf", "-", "-C", str(unpack)], stdin=subprocess.PIPE)
            for block in r.iter_content(1 << 20):
                proc.stdin.write(block)
            proc.stdin.close()
            if proc.wait():
                raise SystemExit("bench: unpacking the new layer failed")
        t_layer = time.perf_counter() - t0
        shutil.rmtree(unpack, ignore_errors=True)
        t0 = time.perf_counter()
        sh([DOCKER, "run", "--rm", "--network", "none", ref, "python", "-c", imports])
        t_imports = time.perf_counter() - t0
        wall, floor = t_pull + t_first, t_layer + t_imports
        return {"wall_s": round(wall, 3), "pull_s": round(t_pull, 3), "first_imports_s": round(t_first, 3),
                "floor_s": round(floor, 3), "layer_get_unpack_s": round(t_layer, 3), "imports_s": round(t_imports, 3),
                "x_floor": round(wall / floor, 3) if floor else None}


def sh_drain(cmd: List[str]) -> None:
    """Run cmd, reading its output into one reused buffer and dropping it: what producing the
    stream costs, without the cost of keeping it (capture_output grows a 250 MB bytes object,
    which took as long again as the tar itself)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    buf = memoryview(bytearray(1 << 20))
    while proc.stdout.readinto(buf):
        pass
    if proc.wait(timeout=TIMEOUT) != 0:
        raise SystemExit(f"bench: {' '.join(cmd[:4])}... failed (exit {proc.returncode})")


def sh_bytes(cmd: List[str]) -> bytes:
    proc = subprocess.run(cmd, capture_output=True, timeout=TIMEOUT)
    if proc.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd[:4])}... failed (exit {proc.returncode}): {proc.stderr[-2000:]!r}")
    return proc.stdout


def compressors() -> Dict[str, Callable[[bytes], bytes]]:
    """Candidates for the floor's compression: all cores, all deterministic, measured on the same bytes."""
    from composer.builders.daemonless import tarball

    def encode(enc):
        def run(data: bytes) -> bytes:
            out = io.BytesIO()
            c = tarball.compressor(out, enc)
            c.write(data)
            c.close()
            return out.getvalue()
        return run

    out = {f"isal gzip {lvl}": encode(tarball.layer_encoding("gzip", "isal", lvl)) for lvl in (0, 1, 2, 3)}
    out["zlib gzip 1"] = encode(tarball.layer_encoding("gzip", "zlib", 1))
    if tarball.zstd_module():
        out.update({f"zstd {lvl}": encode(tarball.layer_encoding("zstd", None, lvl)) for lvl in (1, 3)})
    return out


# -- the whole benchmark -----------------------------------------------------------------------
class Bench:
    def __init__(self, args):
        self.args = args
        self.registry = args.registry
        self.tmp = Path(tempfile.mkdtemp(prefix="composer-bench-"))
        self.proxy = Proxy(self.registry)
        self.extras: Dict[str, Path] = {}
        self.lockfiles: Dict[str, Path] = {}
        self.upstream_record: dict = {}
        from composer.settings import load_settings
        from composer.kinds.pip import uv_binary, uv_env

        self.uv = uv_binary()
        self.uv_env = uv_env(load_settings({"registry": self.registry}))

    def setup(self) -> None:
        # composer as a user has it installed: pip byte-compiles a package when it installs it.
        # This checkout is installed editable, and these machines set PYTHONDONTWRITEBYTECODE=1,
        # so without this every composer row would compile every module it imports, every run.
        sh([sys.executable, "-m", "compileall", "-q", str(ROOT / "composer")])
        base_repo_tag = self.args.base_ref.split("/", 1)[1]
        sh([str(ROOT / "scripts" / "make-base.sh"), self.args.base_ref])
        self.shared_upstream = f"{self.proxy.host}/bench/upstream:attrs23"
        log(f"upstream (venv, {' '.join(UPSTREAM_PINS)}) via scripts/make-upstream.sh -> {self.shared_upstream}")
        sh([str(ROOT / "scripts" / "make-upstream.sh"), self.shared_upstream, f"{self.proxy.host}/{base_repo_tag}", *UPSTREAM_PINS])

    def prepare_size(self, size: str, round_: Round) -> None:
        """The extras file, and the lock the floor installs (same as composer's: untimed)."""
        from composer.settings import load_settings
        from composer.kinds.pip import lock_extras
        from composer.upstream.runs import load_run

        path = self.tmp / f"extras-{size}.txt"
        path.write_text("\n".join(SIZES[size]) + "\n")
        self.extras[size] = path
        settings = load_settings({"registry": round_.prefix_dl})
        record, _ = load_run(settings, RUN_ID)
        self.upstream_record = record.to_json()
        lock = lock_extras(settings, SIZES[size], record.pins, record.python.version, record.platform.python_platform, RUN_ID)
        self.lockfiles[size] = self.tmp / f"lock-{size}.txt"
        self.lockfiles[size].write_text(lock.added_lock_text())
        self.locked = [f"{p['name']}=={p['version']}" for p in lock.added]

    def measure(self, round_: Round, row: str) -> dict:
        fn: Callable[[], dict] = {"naive": round_.naive, "buildkit": round_.buildkit, "cache-hit": round_.cache_hit,
                                  "daemonless": round_.daemonless, "floor": round_.floor}[row]
        self.proxy.reset()
        t0 = time.perf_counter()
        out = fn()
        wall = time.perf_counter() - t0
        result = {"wall_s": out.get("wall_s", round(wall, 3)), "digest": out.get("digest")}
        for key in ("stages", "fastest", "compressors"):
            if key in out:
                result[key] = out[key]
        if round_.via_proxy:  # the bytes round: untimed, through the counting proxy
            stats = self.proxy.stats()
            result.update({
                "bytes_pushed": sum(stats.get(f"{m}_request_bytes", 0) for m in ("POST", "PUT", "PATCH")),
                "bytes_pulled": stats.get("GET_response_bytes", 0),
                "requests": stats.get("requests", 0),
            })
        if "repo" in out:
            result.update(manifest_sizes(self.registry, out["repo"], out["ref"], round_.base_layers))
        else:
            result.update({k: out[k] for k in ("image_bytes", "added_layer_bytes", "layers", "new_layers")})
        return result

    def run_size(self, size: str) -> dict:
        runs = self.args.runs
        log(f"{size}: {' '.join(SIZES[size])}: warm-up round (untimed: fills uv's caches)")
        warm = self.current = Round(self, size)
        self.prepare_size(size, warm)
        for row in ("buildkit", "daemonless", "floor"):
            self.measure(warm, row)
        warm.cleanup()
        # Bytes come from one untimed round through the counting proxy; the timed rounds talk to
        # the registry directly, so the proxy's per-request latency is in no one's wall time.
        log(f"{size}: bytes round (untimed, through the counting proxy)")
        counted = self.current = Round(self, size, via_proxy=True)
        bytes_rows = {row: self.measure(counted, row) for row in ROWS}
        counted.cleanup()
        rows: Dict[str, List[dict]] = {r: [] for r in ROWS}
        ready: List[dict] = []
        plans: List[dict] = []
        for i in range(runs):
            round_ = Round(self, size)
            self.current = round_
            for row in ROWS:
                log(f"{size}: run {i + 1}/{runs}: {row}")
                rows[row].append(self.measure(round_, row))
                log(f"{size}: run {i + 1}/{runs}: {row}: {rows[row][-1]['wall_s']:.2f} s")
                if row == "cache-hit":  # before the daemonless row: its dry runs must find nothing built
                    plans.append(round_.plans())
                    log(f"{size}: run {i + 1}/{runs}: dry run {plans[-1]['fresh_state_s']:.2f} s with uv locking, "
                        f"{plans[-1]['lock_cached_s']:.2f} s with the lock cached")
                if row == "daemonless":
                    dl = rows[row][-1]
                    ready.append(round_.readiness(f"{self.registry}/{round_.ns}-dl/envs@{dl['digest']}", dl["new_layers"][-1]))
                    log(f"{size}: run {i + 1}/{runs}: readiness: {ready[-1]['wall_s']:.2f} s (floor {ready[-1]['floor_s']:.2f} s)")
            round_.cleanup()
        summary = {}
        for row, results in rows.items():
            summary[row] = {k: statistics.median(r[k] for r in results) for k in ("wall_s", "image_bytes", "added_layer_bytes")}
            summary[row].update({k: bytes_rows[row][k] for k in ("bytes_pushed", "bytes_pulled", "requests")})
        for row in ROWS:
            for key in ("wall_s", "bytes_pushed"):
                for ref in ("floor", "naive"):
                    denom = summary[ref][key]
                    summary[row][f"{key}_x_{ref}"] = round(summary[row][key] / denom, 3) if denom else None
        # Each round has its own upstream, so image digests differ; the layer itself must not.
        daemonless_layers = {tuple(r["new_layers"]) for r in rows["daemonless"]}
        # A real build every run: BuildKit's and pip's layers are not reproducible, so a layer seen
        # in an earlier run would mean a cache answered.
        fresh = {row: len({d for r in rows[row] for d in r["new_layers"]}) == sum(len(r["new_layers"]) for r in rows[row])
                 for row in ("naive", "buildkit")}
        readiness = {k: round(statistics.median(r[k] for r in ready), 3)
                     for k in ("wall_s", "pull_s", "first_imports_s", "floor_s", "layer_get_unpack_s", "imports_s")}
        readiness["x_floor"] = round(readiness["wall_s"] / readiness["floor_s"], 3) if readiness["floor_s"] else None
        lock = {k: round(statistics.median(p[k] for p in plans), 3) for k in ("fresh_state_s", "lock_cached_s", "lock_s")}
        floor_stages = {k: round(statistics.median(r["stages"][k] for r in rows["floor"]), 3)
                        for k in ("uv", "tar", "compress", "upload")}
        fastest = sorted({r["fastest"] for r in rows["floor"]})
        return {"extras": SIZES[size], "locked": self.locked, "runs": rows, "bytes_round": bytes_rows, "median": summary,
                "readiness_runs": ready, "readiness": readiness, "dry_runs": plans, "lock": lock, "floor_stages": floor_stages, "floor_fastest": fastest,
                "floor_compressors": rows["floor"][-1]["compressors"],
                "daemonless_same_layer_every_run": len(daemonless_layers) == 1, "new_layers_every_run": fresh}

    def close(self) -> None:
        current = getattr(self, "current", None)
        if current is not None:
            current.cleanup()
        shared = getattr(self, "shared_upstream", None)
        if shared:  # the tag only: its image is the one make-upstream.sh builds every time
            subprocess.run([DOCKER, "rmi", shared], capture_output=True)
        self.proxy.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def table(results: dict, runs: int) -> str:
    lines = []
    for size, res in results["sizes"].items():
        lines.append("")
        lines.append(f"{size}: extras {' '.join(res['extras'])} -> {len(res['locked'])} packages installed "
                     f"({' '.join(res['locked'])})")
        lines.append(f"median of {runs} runs; uv caches warmed by one untimed round (naive pip has no cache: it downloads)")
        head = f"{'row':40} {'wall s':>8} {'x floor':>8} {'x naive':>8} {'pushed MB':>10} {'x floor':>8} {'x naive':>8} {'image MB':>9} {'new layer MB':>13}"
        lines.append(head)
        lines.append("-" * len(head))
        for row in ROWS:
            m = res["median"][row]
            f = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
            lines.append(f"{LABELS[row]:40} {m['wall_s']:8.2f} {f(m['wall_s_x_floor']):>8} {f(m['wall_s_x_naive']):>8} "
                         f"{m['bytes_pushed'] / 1e6:10.2f} {f(m['bytes_pushed_x_floor']):>8} {f(m['bytes_pushed_x_naive']):>8} "
                         f"{m['image_bytes'] / 1e6:9.2f} {m['added_layer_bytes'] / 1e6:13.2f}")
        dl = res["median"]["daemonless"]
        lines.append(f"daemonless: pushed {dl['bytes_pushed'] / 1e6:.2f} MB for a {dl['added_layer_bytes'] / 1e6:.2f} MB new layer "
                     f"(base layers mounted, not sent); same layer digest every run: {res['daemonless_same_layer_every_run']}")
        lines.append(f"new layers in every run (no cache answered): {res['new_layers_every_run']}")
        st = res["floor_stages"]
        lines.append(f"physical floor stages (median s): uv {st['uv']:.2f} + tar {st['tar']:.2f} + compress {st['compress']:.2f} "
                     f"({', '.join(res['floor_fastest'])}) + upload {st['upload']:.2f}")
        lines.append("compressors on the floor's tar (last run, s / MB): " + ", ".join(
            f"{k} {v[0]:.2f}/{v[1] / 1e6:.1f}" for k, v in res["floor_compressors"].items()))
        lk = res["lock"]
        lines.append(f"build --dry-run: {lk['fresh_state_s']:.2f} s when uv makes the lock (warm uv cache), "
                     f"{lk['lock_cached_s']:.2f} s with composer's lock cache: a warm lock costs {lk['lock_s']:.2f} s")
        r = res["readiness"]
        lines.append(f"readiness ({IMPORTS[size]}): pull {r['pull_s']:.2f} + run {r['first_imports_s']:.2f} = {r['wall_s']:.2f} s; "
                     f"floor: new layer GET+unpack {r['layer_get_unpack_s']:.2f} + run {r['imports_s']:.2f} = {r['floor_s']:.2f} s; "
                     f"x floor {r['x_floor']:.2f}")
    return "\n".join(lines)

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="timed runs per row and size (median reported)")
    p.add_argument("--sizes", default="small,large", help=f"comma list of {', '.join(SIZES)}")
    p.add_argument("--out", default=str(ROOT / "bench-results.json"))
    p.add_argument("--registry", default=os.environ.get("COMPOSER_TEST_REGISTRY_ADDR", "127.0.0.1:5000"))
    p.add_argument("--base-ref", default=None)
    p.add_argument("--serve-proxy", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_proxy:
        return serve_proxy(args.serve_proxy)
    args.base_ref = args.base_ref or os.environ.get("COMPOSER_BASE_REF") or f"{args.registry}/bases/python:3.11-bookworm"
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown or args.runs < 1:
        p.error(f"unknown size {unknown[0]!r}" if unknown else "--runs must be at least 1")

    bench = Bench(args)
    try:
        bench.setup()
        started = time.time()
        results = {
            "meta": {
                "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "runs": args.runs, "registry": args.registry, "base": args.base_ref, "upstream_pins": UPSTREAM_PINS,
                "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
                "docker": subprocess.run([DOCKER, "version", "--format", "{{.Client.Version}}/{{.Server.Version}}"],
                                         capture_output=True, text=True).stdout.strip(),
                "uv": subprocess.run([bench.uv, "--version"], capture_output=True, text=True).stdout.strip(),
                "warm_up": "one untimed round of buildkit, daemonless and floor per size fills uv's host cache and "
                           "the BuildKit cache mount; the naive pip build downloads every time (--no-cache-dir)",
                "notes": [
                    "wall_s: whole command as a user runs it (process start included)",
                    "bytes_pushed: request bodies of POST/PUT/PATCH through a counting proxy in front of the registry, "
                    "in one untimed round per size; the timed rounds talk to the registry directly",
                    "bytes_pulled: GET response bodies through the proxy (same round)",
                    "image_bytes: config + all layers (compressed, as stored); added_layer_bytes: layers not in the upstream",
                    "composer rows reuse the lock from the local lock cache (same pins and extras as the warm-up round)",
                    "composer's modules are byte-compiled first (python -m compileall), as pip install does",
                    "cache-hit talks to the registry directly (the proxy's latency is not composer's)",
                    "each round has its own upstream image (one tiny layer of its own) and fresh registry prefixes",
                ],
            },
            "sizes": {},
        }
        for size in sizes:
            results["sizes"][size] = bench.run_size(size)
        results["meta"]["duration_s"] = round(time.time() - started, 1)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        print(table(results, args.runs))
        print(f"\nraw runs and medians: {args.out}")
    finally:
        bench.close()


if __name__ == "__main__":
    main()
