"""A token registry for the integration tests: Debian's distribution registry 2.8 in token-auth
mode, and a small token service of the test's own that it trusts.

The token service does what a hosted registry's does (Docker Hub, GHCR, GitLab, Harbor):

- GET  /token?service=..&scope=..&scope=..  with Basic user:password (or none: anonymous);
  `offline_token=true` also hands out a refresh token (what `docker login` keeps as its
  identity token);
- POST /token  grant_type=password (username, password) or grant_type=refresh_token;

and answers {"token", "access_token", "expires_in", "issued_at"[, "refresh_token"]} with an
RS256 JWT carrying its certificate in the `x5c` header, granting exactly the requested scopes
a user may have (`grants`: user -> repository prefix -> actions), nothing more. Tokens expire
after `ttl` seconds *at the registry*: distribution allows 60 s of clock skew on `exp`, so the
claim is set `ttl - 60` s ahead. The Docker engine (client_id=docker) gets `docker_ttl` (65 s)
tokens: it caches every token for at least 60 s, whatever `expires_in` says. Every request is logged (`log`) for the tests to inspect.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.server
import json
import os
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

REGISTRY_LEEWAY = 60  # seconds distribution's token verifier adds to exp


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TokenService:
    def __init__(self, workdir: Path, users: Dict[str, str], grants: Dict[str, Dict[str, str]], *,
                 ttl: float = 3.0, docker_ttl: float = 65.0, service: str = "composer-test-registry", issuer: str = "composer-test-issuer"):
        self.users, self.grants, self.ttl, self.docker_ttl = users, grants, ttl, docker_ttl
        self.service, self.issuer = service, issuer
        self.log: List[dict] = []
        self.refresh_tokens: Dict[str, str] = {}  # refresh token -> user
        self._lock = threading.Lock()
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "composer test token signer")])
        now = dt.datetime.now(dt.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
                     .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
                     .not_valid_after(now + dt.timedelta(days=2)).sign(self.key, hashes.SHA256()))
        self.cert_path = workdir / "token-signer.pem"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self._x5c = base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()
        service_ref = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _reply(self, status: int, doc: Optional[dict] = None) -> None:
                body = json.dumps(doc or {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                url = urlsplit(self.path)
                q = parse_qs(url.query)
                user = service_ref._basic_user(self.headers.get("Authorization"))
                scopes = [s for v in q.get("scope", []) for s in v.split()]
                offline = q.get("offline_token", [""])[0] == "true"
                self._reply(*service_ref._issue("GET", user, scopes, offline, q.get("client_id", [""])[0]))

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[-1] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                scopes = form.get("scope", "").split()
                grant, client = form.get("grant_type"), form.get("client_id", "")
                if grant == "password":
                    user = form.get("username") if service_ref.users.get(form.get("username", "")) == form.get("password") else False
                    self._reply(*service_ref._issue("POST password", user, scopes, True, client))
                elif grant == "refresh_token":
                    with service_ref._lock:
                        user = service_ref.refresh_tokens.get(form.get("refresh_token", ""), False)
                    self._reply(*service_ref._issue("POST refresh_token", user, scopes, False, client))
                else:
                    self._reply(400, {"error": "unsupported_grant_type"})

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.realm = f"http://127.0.0.1:{self._server.server_address[1]}/token"
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- the service ---------------------------------------------------------------------
    def _basic_user(self, header: Optional[str]):
        """None: anonymous; False: wrong credentials; else the user."""
        if not header:
            return None
        kind, _, value = header.partition(" ")
        if kind.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except ValueError:
            return False
        return user if self.users.get(user) == password else False

    def allowed(self, user: Optional[str], repo: str) -> set:
        for prefix, actions in (self.grants.get(user or "", {}) | self.grants.get("*", {})).items():
            if repo == prefix or repo.startswith(prefix.rstrip("/") + "/") or prefix == "*":
                return set(actions.split(","))
        return set()

    def _issue(self, how: str, user, scopes: List[str], offline: bool, client: str = ""):
        entry = {"how": how, "user": user, "scopes": scopes, "time": time.time(), "client": client}
        with self._lock:
            self.log.append(entry)
        if user is False:
            entry["status"] = 401
            return 401, {"errors": [{"code": "UNAUTHORIZED", "message": "wrong credentials"}]}
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind != "repository":
                continue
            granted = sorted(set(a for a in actions.split(",") if a) & self.allowed(user, name))
            if granted:
                access.append({"type": kind, "name": name, "actions": granted})
        entry["status"], entry["granted"] = 200, access
        # The Docker engine keeps every token for at least 60 s whatever expires_in says
        # (minimumTokenLifetimeSeconds in its registry client): its tokens must live that long.
        ttl = int(self.docker_ttl if client == "docker" else self.ttl)
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": user or "", "aud": self.service, "iat": now - 1, "nbf": now - 1,
                  "exp": now + ttl - REGISTRY_LEEWAY, "jti": uuid.uuid4().hex, "access": access}
        token = self.sign(claims)
        doc = {"token": token, "access_token": token, "expires_in": ttl,
               "issued_at": dt.datetime.now(dt.timezone.utc).isoformat()}
        if offline and user:
            refresh = uuid.uuid4().hex
            with self._lock:
                self.refresh_tokens[refresh] = user
            doc["refresh_token"] = refresh
        return 200, doc

    def sign(self, claims: dict) -> str:
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"


class TokenRegistry:
    """docker-registry serve, token auth from `tokens`, on a free loopback port."""

    def __init__(self, workdir: Path, tokens: TokenService):
        self.tokens = tokens
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        data = workdir / "registry-data"
        data.mkdir(parents=True, exist_ok=True)
        config = workdir / "registry.yml"
        config.write_text(f"""version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {data}
  delete:
    enabled: true
http:
  addr: {self.host}
auth:
  token:
    realm: {tokens.realm}
    service: {tokens.service}
    issuer: {tokens.issuer}
    rootcertbundle: {tokens.cert_path}
""")
        self._log = open(workdir / "registry.log", "wb")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env={**os.environ})
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the token registry did not start: {(workdir / 'registry.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()
