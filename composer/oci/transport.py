"""HTTP to one registry host, written once: the session, TLS, credentials, the 401 challenge,
bounded retries and the mapping of failures to composer's errors.

`Transport` has three layers, and the client (composer.oci.client) composes them:

- `send`: one exchange. The Authorization header is attached here and nowhere else; a 401
  challenge (Basic from the Docker config, or a Bearer token per scope from the realm it
  names) is answered once. Network failures are mapped here: a TLS failure is a
  RegistryError, a reset or a timeout is `Transient`. No status is judged.
- `check`: judges a status. Allowed statuses pass; 401/403 is "refused access", 429/5xx is
  `Transient`, anything else a RegistryError naming the status and the registry's error code.
- `retrying`: the one retry loop. It reruns a whole operation (one request, or several, as
  an upload's POST then PUT) while it raises `Transient`, with bounded exponential backoff,
  and ends in one RegistryError.

`request` (one retried request) and `download` (a streamed GET into a file, hashed on the
way) are those three put together.

oras-py's own transport retries for minutes with no way to bound it, and does not check
digests on reads, so the HTTP work is done here; oras-py parses the token challenge.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, Optional, Tuple, TypeVar

import requests

from composer.errors import ComposerError, RegistryError

DEFAULT_ATTEMPTS = 3
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
BACKOFF_BASE = 0.2  # seconds before the first retry; tripled for each further one
BACKOFF_CAP = 3.0  # seconds, at most, between two attempts
CHUNK = 1 << 20

T = TypeVar("T")


class Transient(Exception):
    """A failure another attempt may cure: a reset, a timeout, 429, 5xx, or a condition the
    caller knows to pass (a blob that is still being committed). `reason` is what the final
    error says; `error`, when given, is raised instead of the generic one once attempts run out."""

    def __init__(self, reason: str, error: Optional[ComposerError] = None):
        super().__init__(reason)
        self.reason = reason
        self.error = error


def backoff(retry: int) -> float:
    """Seconds to wait before retry number `retry` (1 for the second attempt)."""
    return min(BACKOFF_BASE * 3 ** (retry - 1), BACKOFF_CAP)


# -- credentials ---------------------------------------------------------------------------
def docker_config_path() -> str:
    """Docker's own rule: $DOCKER_CONFIG/config.json, else ~/.docker/config.json."""
    root = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return os.path.join(root, "config.json")


def docker_credentials(host: str) -> Optional[str]:
    """Base64 user:password for host from the Docker config: auths, then credHelpers / credsStore.
    None when there are none (the registry's 401 then says what to do)."""
    try:
        with open(docker_config_path(), encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return None
    auths = cfg.get("auths") or {}
    for key in (host, f"https://{host}", f"http://{host}", f"https://{host}/v1/", f"{host}/v1/"):
        entry = auths.get(key) or {}
        if entry.get("auth"):
            return entry["auth"]
        if entry.get("username") and entry.get("password"):
            return base64.b64encode(f"{entry['username']}:{entry['password']}".encode()).decode()
    helper = (cfg.get("credHelpers") or {}).get(host) or cfg.get("credsStore")
    if helper:
        try:
            out = subprocess.run(
                [f"docker-credential-{helper}", "get"], input=host.encode(), capture_output=True, timeout=30, check=True
            ).stdout
            data = json.loads(out)
            return base64.b64encode(f"{data['Username']}:{data['Secret']}".encode()).decode()
        except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError):
            return None
    return None


@dataclass
class _Auth:
    loaded: bool = False  # the Docker config is read at the first challenge, not before
    basic: Optional[str] = None  # base64 user:password from the Docker config
    use_basic: bool = False  # set once the registry asked for Basic auth
    tokens: Dict[str, str] = field(default_factory=dict)  # scope -> bearer token

    def copy(self) -> "_Auth":
        return _Auth(self.loaded, self.basic, self.use_basic, dict(self.tokens))


# -- errors --------------------------------------------------------------------------------
def error_code(resp: requests.Response) -> str:
    """The first error code of a distribution API error body, or ""."""
    try:
        errors = resp.json().get("errors") or []
        return str(errors[0].get("code", "")) if errors else ""
    except (ValueError, AttributeError, IndexError, TypeError):
        return ""


def error_detail(resp: requests.Response) -> str:
    """' (CODE: message)' from a distribution API error body, or ""."""
    try:
        errors = resp.json().get("errors") or []
        if errors:
            return f" ({errors[0].get('code', '')}: {errors[0].get('message', '')})"
    except (ValueError, AttributeError, IndexError, TypeError):
        pass
    return ""


def _short_reason(exc: Exception) -> str:
    text = str(exc).lower()
    for marker in ("Connection refused", "Name or service not known", "timed out", "Connection reset", "No route to host"):
        if marker.lower() in text:
            return marker.lower()
    return type(exc).__name__


def _attempts(n: int, kind: str) -> str:
    return f"{n} {kind + ' ' if kind else ''}attempt{'' if n == 1 else 's'}"


class Transport:
    """HTTP to one registry host. Not thread-safe (requests sessions are not): `clone` gives
    another thread a transport of its own with the same settings and credentials."""

    def __init__(self, host: str, base: str, *, verify: object = True, attempts: int = DEFAULT_ATTEMPTS,
                 timeout: Tuple[float, float] = (5.0, 120.0)):
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {attempts}")
        self.host = host
        self.base = base  # scheme://host
        # TLS is always verified for https: a CA bundle (a path) replaces the default roots,
        # nothing here ever turns verification off.
        self.verify: object = verify or True
        self.attempts = attempts
        self.timeout = timeout
        self.session = requests.Session()
        self._auth = _Auth()

    def clone(self) -> "Transport":
        twin = Transport(self.host, self.base, verify=self.verify, attempts=self.attempts, timeout=self.timeout)
        twin._auth = self._auth.copy()
        return twin

    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else self.base + path

    # -- the one retry loop ------------------------------------------------------------------
    def retrying(self, operation: Callable[[], T], kind: str = "") -> T:
        """operation(), rerun with backoff while it raises Transient, at most `attempts` times.
        `kind` names the operation in the final error ("upload": "failed after 3 upload attempts")."""
        last: Optional[Transient] = None
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(backoff(attempt))
            try:
                return operation()
            except Transient as exc:
                last = exc
        assert last is not None
        if last.error is not None:
            raise last.error from last
        raise RegistryError(
            f"registry {self.host} failed after {_attempts(self.attempts, kind)}: {last.reason}",
            "check that it is running and reachable, and --registry / COMPOSER_REGISTRY",
        ) from last

    # -- one exchange ------------------------------------------------------------------------
    @contextmanager
    def _network(self, what: str) -> Iterator[None]:
        """Map the requests exceptions raised in the block: TLS is fatal, resets and timeouts are Transient."""
        try:
            yield
        except requests.exceptions.SSLError as exc:
            raise RegistryError(
                f"TLS verification failed for registry {self.host} ({type(exc).__name__})",
                "set COMPOSER_CA_BUNDLE to the CA that signed it, or list the host in insecure_registries",
            ) from exc
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                requests.exceptions.ChunkedEncodingError) as exc:
            raise Transient(f"{_short_reason(exc)} ({what})") from exc
        except requests.exceptions.RequestException as exc:
            raise RegistryError(f"request to registry {self.host} failed: {what} ({type(exc).__name__})",
                                "check the registry address and the reference") from exc

    def send(self, method: str, url: str, *, scope: str, headers: Optional[dict] = None, data=None,
             stream: bool = False) -> requests.Response:
        """One exchange (a 401 challenge answered once), its status not judged. url may be a path."""
        url = self.url(url)
        with self._network(f"{method} {url[len(self.base):] if url.startswith(self.base) else url}"):
            resp = self._exchange(method, url, scope, headers, data, stream)
            if resp.status_code == 401 and self._authenticate(resp, scope):
                resp.close()
                resp = self._exchange(method, url, scope, headers, data, stream)
            return resp

    def _exchange(self, method: str, url: str, scope: str, headers: Optional[dict], data, stream: bool) -> requests.Response:
        hdrs = dict(headers or {})
        authorization = self._authorization(scope)
        if authorization:
            hdrs["Authorization"] = authorization
        return self.session.request(method, url, headers=hdrs, data=data, stream=stream, timeout=self.timeout,
                                    verify=self.verify, allow_redirects=True)

    def _authorization(self, scope: str, *, token_service: bool = False) -> Optional[str]:
        """The Authorization header for a request in scope (or to the token service), if any."""
        token = None if token_service else self._auth.tokens.get(scope)
        if token:
            return f"Bearer {token}"
        if self._auth.basic and (self._auth.use_basic or token_service):
            return f"Basic {self._auth.basic}"
        return None

    def _authenticate(self, resp: requests.Response, scope: str) -> bool:
        """Answer a 401 challenge; True when there is a new credential to retry with."""
        if not self._auth.loaded:
            self._auth.basic = docker_credentials(self.host)
            self._auth.loaded = True
        challenge = resp.headers.get("WWW-Authenticate", "")
        kind = challenge.split(" ", 1)[0].lower()
        if kind == "basic":
            if not self._auth.basic or self._auth.use_basic:
                return False  # nothing to offer, or the credentials were refused
            self._auth.use_basic = True
            return True
        if kind == "bearer":
            token = self._fetch_token(challenge, scope)  # also when one was sent: it may have expired
            if token:
                self._auth.tokens[scope] = token
                return True
        return False

    def _fetch_token(self, challenge: str, scope: str) -> Optional[str]:
        from oras.auth.utils import parse_auth_header  # only when a registry asks for a token

        info = parse_auth_header(challenge)
        if not info.realm:
            return None
        authorization = self._authorization(scope, token_service=True)
        with self._network(f"the token service at {info.realm}"):
            resp = self.session.request(
                "GET", info.realm, params={"service": info.service, "scope": scope},
                headers={"Authorization": authorization} if authorization else {},
                timeout=self.timeout, verify=self.verify,
            )
        if resp.status_code in RETRY_STATUSES:
            raise Transient(f"HTTP {resp.status_code} from the token service at {info.realm}")
        if resp.status_code != 200:
            return None  # the 401 that follows says what to do
        try:
            body = resp.json()
        except ValueError:
            return None
        token = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
        return token if isinstance(token, str) and token else None

    # -- statuses ----------------------------------------------------------------------------
    def check(self, resp: requests.Response, *, scope: str, allow: Tuple[int, ...], what: str) -> requests.Response:
        """resp when its status is allowed; else the error it means. `what` names the request
        in messages ("PUT /v2/...", "the upload of sha256:... to repo")."""
        code = resp.status_code
        if code in allow:
            return resp
        try:
            if code in (401, 403):
                raise RegistryError(
                    f"registry {self.host} refused access to {scope} ({code})",
                    f"run 'docker login {self.host}' or fix the credentials in DOCKER_CONFIG",
                )
            if code in RETRY_STATUSES:
                raise Transient(f"HTTP {code} for {what}")
            raise RegistryError(f"registry {self.host} answered HTTP {code} to {what}{error_detail(resp)}",
                                "check the registry and the reference")
        finally:
            resp.close()

    # -- whole requests ----------------------------------------------------------------------
    def request(self, method: str, path: str, *, scope: str, headers: Optional[dict] = None, data=None,
                allow: Tuple[int, ...] = (200,)) -> requests.Response:
        """One registry call (path or URL), retried on resets, timeouts, 429 and 5xx; a response
        whose status is in allow, else a RegistryError."""
        what = f"{method} {path}"
        return self.retrying(lambda: self.check(self.send(method, path, scope=scope, headers=headers, data=data),
                                                scope=scope, allow=allow, what=what))

    def download(self, path: str, dest, *, scope: str) -> Optional[Tuple[str, int]]:
        """GET path streamed into the file dest, hashed while it is written, retried as a whole:
        (sha256 digest of what was written, size), or None when the registry says 404."""
        what = f"GET {path}"

        def attempt() -> Optional[Tuple[str, int]]:
            with self.send("GET", path, scope=scope, stream=True) as resp:
                if self.check(resp, scope=scope, allow=(200, 404), what=what).status_code == 404:
                    return None
                h, size = hashlib.sha256(), 0
                with open(dest, "wb") as out, self._network(what):
                    for block in resp.iter_content(CHUNK):
                        h.update(block)
                        size += len(block)
                        out.write(block)
            return "sha256:" + h.hexdigest(), size

        return self.retrying(attempt, "download")
