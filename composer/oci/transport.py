"""HTTP to one registry host, written once: the session, TLS, credentials, token auth, bounded
retries, size caps and the mapping of failures to composer's errors.

`Transport` has three layers, and the client (composer.oci.client) composes them:

- `send`: one exchange. The Authorization header is attached here and nowhere else, and only
  to the registry's own origin (scheme, host and port) and never over plain HTTP to a host
  that is not loopback; redirects are followed here, one hop at a time, so a `Location` on
  another host gets no credentials. A 401 is answered once: Basic from the Docker config, or
  a Bearer token for every scope the operation needs (one token request), fetched again when
  the registry refuses the one that was sent (it expired). Network failures are mapped here:
  a TLS failure is a RegistryError, a reset or a timeout is `Transient`. No status is judged.
- `check`: judges a status. Allowed statuses pass; 401/403 is "refused access", 429/5xx is
  `Transient` (with the registry's Retry-After), anything else a RegistryError naming the
  status and the registry's error code.
- `retrying`: the one retry loop. It reruns a whole operation (one request, or several, as
  an upload's POST then PUT) while it raises `Transient`, waiting with exponential backoff and
  jitter (or what Retry-After asks), bounded in attempts and in total time (`RetryPolicy`),
  and ends in one RegistryError.

`request` (one retried request), `fetch` (one retried GET whose body is read, capped) and
`download` (a streamed GET into a file, hashed on the way) are those three put together.

Tokens follow the distribution token spec as Docker and go-containerregistry use it: the
challenge names the realm and service; the token request carries every scope (a mount needs
push,pull on the target and pull on the source); identity tokens from `docker login` (and
refresh tokens a token service hands out) use the OAuth2 refresh-token grant, user and
password the Basic-authenticated GET, and without credentials an anonymous token is asked
for (public pulls). Tokens are cached per scope set until their `expires_in`.
"""

from __future__ import annotations

import base64
import datetime as _dt
import email.utils
import hashlib
import json
import os
import random
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple, TypeVar
from urllib.parse import urljoin, urlsplit

from composer.errors import ComposerError, RegistryError, VerificationError
from composer.model.refs import credential_key, is_loopback
from composer.oci.http import ConnectionFailed, HTTPError, Response, Session, TimedOut, TLSError

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
CHUNK = 1 << 20
# Everything composer reads into memory from a registry (manifests, indexes, records, tag and
# referrer pages, token responses) is at most this big: distribution itself refuses manifests
# over 4 MiB.
MAX_DOCUMENT = 4 << 20
TOKEN_CLIENT_ID = "composer"

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard a registry operation is tried: at most `attempts` times, waiting `backoff`
    seconds before the second, doubling each time up to `max_wait`, each wait drawn between
    half and all of that (jitter), and never retrying past `budget` seconds after the first
    attempt started. A Retry-After the registry sends replaces the computed wait."""

    attempts: int = 5
    backoff: float = 0.5
    max_wait: float = 30.0
    budget: float = 60.0

    def __post_init__(self):
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {self.attempts}")

    def wait(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1 for the second attempt)."""
        ceiling = min(self.backoff * 2 ** (retry - 1), self.max_wait)
        return ceiling * random.uniform(0.5, 1.0)


DEFAULT_RETRY = RetryPolicy()
DEFAULT_ATTEMPTS = DEFAULT_RETRY.attempts


class Transient(Exception):
    """A failure another attempt may cure: a reset, a timeout, 429, 5xx, or a condition the
    caller knows to pass (a blob that is still being committed). `reason` is what the final
    error says; `error`, when given, is raised instead of the generic one once attempts run
    out; `retry_after` is the wait the registry asked for, in seconds."""

    def __init__(self, reason: str, error: Optional[ComposerError] = None, retry_after: Optional[float] = None):
        super().__init__(reason)
        self.reason = reason
        self.error = error
        self.retry_after = retry_after


def retry_after(resp: Response) -> Optional[float]:
    """The Retry-After header in seconds (delta-seconds or an HTTP date), or None."""
    value = (resp.headers.get("Retry-After") or "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return max(0.0, (when - _dt.datetime.now(_dt.timezone.utc)).total_seconds())


# -- credentials ---------------------------------------------------------------------------
def docker_config_path() -> str:
    """Docker's own rule: $DOCKER_CONFIG/config.json, else ~/.docker/config.json."""
    root = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return os.path.join(root, "config.json")


@dataclass(frozen=True)
class Credential:
    """What the Docker config holds for one registry: user and password, or an identity token
    (what `docker login` stores when the token service hands out a refresh token)."""

    username: str = ""
    password: str = ""
    identity_token: str = ""

    def basic(self) -> Optional[str]:
        if not self.username and not self.password:
            return None
        return base64.b64encode(f"{self.username}:{self.password}".encode()).decode()

    def __repr__(self) -> str:  # never print a secret, even in a traceback
        return f"Credential(username={self.username!r}, ...)"


def _hostname(key: str) -> str:
    """Docker's ConvertToHostname: an auths key may be a URL (https://host/v1/)."""
    for scheme in ("http://", "https://"):
        if key.startswith(scheme):
            key = key[len(scheme):]
    return key.split("/", 1)[0]


def docker_credentials(host: str) -> Optional[Credential]:
    """The credential for registry host from the Docker config, resolved as Docker does it (by
    the docker SDK): credHelpers for the host, else credsStore, else auths (keys compared as
    host names; Docker Hub's key is https://index.docker.io/v1/). None when there is none."""
    import docker.auth
    import docker.errors

    path = docker_config_path()
    if not os.path.isfile(path):
        return None
    try:
        config = docker.auth.load_config(config_path=path)
        config["auths"] = {_hostname(k): v for k, v in config.auths.items()}
        entry = config.resolve_authconfig(credential_key(host))
    except (docker.errors.DockerException, OSError, ValueError, TypeError) as exc:
        raise RegistryError(f"cannot read the credentials for {host} from {path} ({type(exc).__name__})",
                            "fix the Docker config or its credential helper (docker login)") from exc
    if not entry:
        return None
    identity = entry.get("IdentityToken") or ""
    username = entry.get("username") or entry.get("Username") or ""
    password = entry.get("password") or entry.get("Password") or ""
    if not (identity or username or password):
        return None
    return Credential(str(username), str(password), str(identity))


# -- the challenge and scopes --------------------------------------------------------------
_PARAM = re.compile(r'\s*([A-Za-z][A-Za-z0-9_.-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))\s*,?')


def parse_challenge(header: str) -> Tuple[str, Dict[str, str]]:
    """('bearer', {realm, service, scope, error, ...}) from a WWW-Authenticate header."""
    scheme, _, rest = header.strip().partition(" ")
    params: Dict[str, str] = {}
    for m in _PARAM.finditer(rest):
        params[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", m.group(2)) if m.group(2) is not None else m.group(3)
    return scheme.lower(), params


def scope_set(scope: str) -> Tuple[str, ...]:
    """A request's scopes (space separated) as a sorted tuple without duplicates."""
    return tuple(sorted({s for s in scope.split() if s}))


def _actions(scopes: Iterable[str]) -> Dict[Tuple[str, str], set]:
    out: Dict[Tuple[str, str], set] = {}
    for s in scopes:
        kind, _, rest = s.partition(":")
        name, _, actions = rest.rpartition(":")
        out.setdefault((kind, name), set()).update(a for a in actions.split(",") if a)
    return out


def covers(granted: Iterable[str], needed: Iterable[str]) -> bool:
    """Whether a token for `granted` scopes is enough for `needed` (push,pull covers pull)."""
    have = _actions(granted)
    return all(actions <= have.get(key, set()) or "*" in have.get(key, set()) for key, actions in _actions(needed).items())


@dataclass
class _Token:
    scopes: Tuple[str, ...]
    value: str = field(repr=False)
    expires: float  # time.monotonic() after which it is not sent any more


@dataclass
class _Auth:
    loaded: bool = False  # the Docker config is read at the first challenge, not before
    credential: Optional[Credential] = None
    use_basic: bool = False  # set once the registry asked for Basic auth
    realm: Optional[str] = None  # the token service, once the registry named it
    service: str = ""
    refresh_token: Optional[str] = field(default=None, repr=False)  # an identity token, or one a token service handed out
    tokens: List[_Token] = field(default_factory=list, repr=False)

    def copy(self) -> "_Auth":
        return _Auth(self.loaded, self.credential, self.use_basic, self.realm, self.service, self.refresh_token,
                     list(self.tokens))


# -- errors --------------------------------------------------------------------------------
def _error_body(resp: Response) -> Optional[dict]:
    if not resp.headers.get("Content-Type", "").startswith("application/json"):
        return None
    try:  # at most 64 KiB of it, streamed or not
        raw = next(resp.iter_content(64 << 10), b"")
    except (HTTPError, RuntimeError, OSError):
        return None  # the body only decorates an error already decided
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _first_error(resp: Response) -> Optional[dict]:
    cached = getattr(resp, "composer_error", False)
    if cached is not False:
        return cached
    doc = _error_body(resp)
    errors = doc.get("errors") if doc else None
    first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else None
    resp.composer_error = first
    return first


def error_code(resp: Response) -> str:
    """The first error code of a distribution API error body, or ""."""
    first = _first_error(resp)
    return str(first.get("code", "")) if first else ""


def error_detail(resp: Response) -> str:
    """' (CODE: message)' from a distribution API error body, or ""."""
    first = _first_error(resp)
    return f" ({first.get('code', '')}: {first.get('message', '')})" if first else ""


def _short_reason(exc: Exception) -> str:
    text = str(exc).lower()
    for marker in ("Connection refused", "Name or service not known", "timed out", "Connection reset", "No route to host"):
        if marker.lower() in text:
            return marker.lower()
    return type(exc).__name__


def _attempts(n: int, kind: str) -> str:
    return f"{n} {kind + ' ' if kind else ''}attempt{'' if n == 1 else 's'}"


def origin(url: str) -> Tuple[str, str, int]:
    """(scheme, host, port) of a URL, the port filled in from the scheme."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or (443 if scheme == "https" else 80)


def safe_for_credentials(url: str) -> bool:
    """Credentials travel only over TLS, or to loopback."""
    scheme, host, _ = origin(url)
    return scheme == "https" or (scheme == "http" and is_loopback(host))


def read_capped(resp: Response, limit: int, what: str) -> bytes:
    """The body of a streamed response, refused (VerificationError) once it passes limit bytes."""
    declared = resp.headers.get("Content-Length", "")
    too_big = VerificationError(f"{what} is larger than {limit >> 20} MiB",
                                "composer reads at most that much; the registry holds something it did not write")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    body = bytearray()
    for block in resp.iter_content(CHUNK):
        body += block
        if len(body) > limit:
            raise too_big
    return bytes(body)


def parse_json_object(body: bytes, what: str) -> dict:
    """body as a JSON object, or a VerificationError."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise VerificationError(f"{what} is not valid JSON", "the registry is misbehaving or holds corrupt content") from exc
    if not isinstance(doc, dict):
        raise VerificationError(f"{what} is not a JSON object", "the registry is misbehaving or holds corrupt content")
    return doc


class Transport:
    """HTTP to one registry host. Not thread-safe (its Session is not): `clone` gives
    another thread a transport of its own with the same settings and credentials.

    `host` is the registry's name (docker.io for Docker Hub), `base` the scheme://endpoint
    requests go to (https://registry-1.docker.io)."""

    def __init__(self, host: str, base: str, *, verify: object = True, attempts: Optional[int] = None,
                 retry: Optional[RetryPolicy] = None, timeout: Tuple[float, float] = (5.0, 120.0)):
        retry = retry or DEFAULT_RETRY
        if attempts is not None:
            retry = RetryPolicy(attempts, retry.backoff, retry.max_wait, retry.budget)
        self.host = host
        self.base = base.rstrip("/")
        # TLS is always verified for https: a CA bundle (a path) replaces the default roots,
        # nothing here ever turns verification off.
        self.verify: object = verify or True
        self.retry = retry
        self.timeout = timeout
        self.session = Session()
        self._auth = _Auth()

    @property
    def attempts(self) -> int:
        return self.retry.attempts

    @attempts.setter
    def attempts(self, value: int) -> None:
        self.retry = RetryPolicy(value, self.retry.backoff, self.retry.max_wait, self.retry.budget)

    def clone(self) -> "Transport":
        twin = Transport(self.host, self.base, verify=self.verify, retry=self.retry, timeout=self.timeout)
        twin._auth = self._auth.copy()
        return twin

    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else self.base + path

    def own(self, url: str) -> bool:
        """Whether url is on this registry's origin: the only place its credentials go."""
        return origin(url) == origin(self.base)

    # -- the one retry loop ------------------------------------------------------------------
    def retrying(self, operation: Callable[[], T], kind: str = "") -> T:
        """operation(), rerun with backoff while it raises Transient, within the retry policy.
        `kind` names the operation in the final error ("upload": "failed after 3 upload attempts")."""
        policy = self.retry
        start = time.monotonic()
        last: Optional[Transient] = None
        tried = 0
        cut_short = ""
        for attempt in range(policy.attempts):
            if attempt:
                assert last is not None
                wait = last.retry_after if last.retry_after is not None else policy.wait(attempt)
                left = policy.budget - (time.monotonic() - start)
                if wait > left:
                    asked = f"it asked to wait {wait:.0f} s" if last.retry_after is not None else f"the next wait is {wait:.1f} s"
                    cut_short = f" ({asked}, past the {policy.budget:g} s retry budget)"
                    break
                time.sleep(wait)
            tried += 1
            try:
                return operation()
            except Transient as exc:
                last = exc
        assert last is not None
        if last.error is not None:
            raise last.error from last
        raise RegistryError(
            f"registry {self.host} failed after {_attempts(tried, kind)}: {last.reason}{cut_short}",
            "check that it is running and reachable, and --registry / COMPOSER_REGISTRY "
            "(COMPOSER_REGISTRY_ATTEMPTS and COMPOSER_REGISTRY_RETRY_TIME bound the retries)",
        ) from last

    # -- one exchange ------------------------------------------------------------------------
    @contextmanager
    def _network(self, what: str) -> Iterator[None]:
        """Map the HTTP layer's exceptions raised in the block: TLS is fatal, resets and timeouts are Transient."""
        try:
            yield
        except TLSError as exc:
            raise RegistryError(
                f"TLS verification failed for registry {self.host} ({type(exc).__name__})",
                "set COMPOSER_CA_BUNDLE to the CA that signed it, or list the host in insecure_registries",
            ) from exc
        except (ConnectionFailed, TimedOut) as exc:
            raise Transient(f"{_short_reason(exc)} ({what})") from exc
        except HTTPError as exc:
            raise RegistryError(f"request to registry {self.host} failed: {what} ({type(exc).__name__})",
                                "check the registry address and the reference") from exc

    def _what(self, method: str, url: str) -> str:
        return f"{method} {url[len(self.base):] if url.startswith(self.base) else url}"

    def send(self, method: str, url: str, *, scope: str, headers: Optional[dict] = None, data=None,
             stream: bool = False) -> Response:
        """One exchange (redirects followed, a 401 challenge answered once), its status not
        judged. url may be a path. `scope` is every scope the request needs, space separated."""
        url = self.url(url)
        scopes = scope_set(scope)
        with self._network(self._what(method, url)):
            resp = self._exchange(method, url, scopes, headers, data, stream)
            if resp.status_code == 401 and self.own(resp.url) and self._authenticate(resp, scopes):
                resp.close()
                resp = self._exchange(method, url, scopes, headers, data, stream)
            return resp

    def _exchange(self, method: str, url: str, scopes: Tuple[str, ...], headers: Optional[dict], data,
                  stream: bool) -> Response:
        for _ in range(MAX_REDIRECTS + 1):
            hdrs = dict(headers or {})
            if self.own(url) and safe_for_credentials(url):
                authorization = self._authorization(scopes)
                if authorization:
                    hdrs["Authorization"] = authorization
            resp = self.session.request(method, url, headers=hdrs, data=data, stream=stream, timeout=self.timeout,
                                        verify=self.verify, allow_redirects=False)
            location = resp.headers.get("Location")
            if resp.status_code not in REDIRECTS or not location:
                return resp
            resp.close()
            url = urljoin(url, location)
            if resp.status_code == 303 or (resp.status_code in (301, 302) and method not in ("GET", "HEAD")):
                method, data = "GET", None
        raise RegistryError(f"registry {self.host} redirected more than {MAX_REDIRECTS} times ({url})",
                            "the registry is misconfigured")

    def _authorization(self, scopes: Tuple[str, ...]) -> Optional[str]:
        """The Authorization header for a request needing scopes, if any: a cached token that
        covers them, a new one when the registry is known to want tokens, or Basic."""
        auth = self._auth
        now = time.monotonic()
        auth.tokens = [t for t in auth.tokens if t.expires > now]
        for token in auth.tokens:
            if covers(token.scopes, scopes):
                return f"Bearer {token.value}"
        if auth.realm and scopes:
            token = self._fetch_token(scopes)  # no round trip to be refused first
            if token:
                return f"Bearer {token}"
        if auth.use_basic and auth.credential and auth.credential.basic():
            return f"Basic {auth.credential.basic()}"
        return None

    def _load_credentials(self) -> None:
        if not self._auth.loaded:
            self._auth.credential = docker_credentials(self.host)
            if self._auth.credential and self._auth.credential.identity_token:
                self._auth.refresh_token = self._auth.credential.identity_token
            self._auth.loaded = True

    def _authenticate(self, resp: Response, scopes: Tuple[str, ...]) -> bool:
        """Answer a 401 challenge; True when there is a new credential to retry with."""
        if not safe_for_credentials(self.base):
            raise RegistryError(
                f"registry {self.host} asks for credentials over plain HTTP",
                "composer never sends credentials unencrypted to a host that is not loopback; serve the registry "
                "over TLS (COMPOSER_CA_BUNDLE for a private CA)",
            )
        self._load_credentials()
        kind, params = parse_challenge(resp.headers.get("WWW-Authenticate", ""))
        if kind == "basic":
            basic = self._auth.credential.basic() if self._auth.credential else None
            if not basic or self._auth.use_basic:
                return False  # nothing to offer, or the credentials were refused
            self._auth.use_basic = True
            return True
        if kind == "bearer" and params.get("realm"):
            self._auth.realm, self._auth.service = params["realm"], params.get("service", "")
            wanted = scope_set(" ".join(scopes + tuple((params.get("scope") or "").split())))
            # The token sent (if any) was refused: it expired or was revoked. Fetch a new one, once.
            self._auth.tokens = [t for t in self._auth.tokens if not covers(t.scopes, scopes)]
            return self._fetch_token(wanted) is not None
        return False

    def _fetch_token(self, scopes: Tuple[str, ...]) -> Optional[str]:
        """A token for scopes from the realm, cached; None when the token service refuses."""
        auth = self._auth
        realm = auth.realm or ""
        self._load_credentials()
        credential = auth.credential
        has_secret = bool(auth.refresh_token or (credential and credential.basic()))
        if has_secret and not safe_for_credentials(realm):
            raise RegistryError(
                f"registry {self.host} names a token service on plain HTTP ({realm})",
                "composer never sends credentials unencrypted to a host that is not loopback; fix the registry's realm",
            )
        what = f"the token service at {realm}"
        with self._network(what):
            if auth.refresh_token:
                form = {"grant_type": "refresh_token", "refresh_token": auth.refresh_token, "service": auth.service,
                        "client_id": TOKEN_CLIENT_ID, "scope": " ".join(scopes)}
                resp = self.session.request("POST", realm, data=form, timeout=self.timeout, verify=self.verify,
                                            allow_redirects=False, stream=True)
            else:
                params = [("service", auth.service)] + [("scope", s) for s in scopes]
                basic = credential.basic() if credential else None
                resp = self.session.request("GET", realm, params=params, timeout=self.timeout, verify=self.verify,
                                            headers={"Authorization": f"Basic {basic}"} if basic else {},
                                            allow_redirects=False, stream=True)
            with resp:
                if resp.status_code in RETRY_STATUSES:
                    raise Transient(f"HTTP {resp.status_code} from {what}", retry_after=retry_after(resp))
                if resp.status_code != 200:
                    return None  # the 401 that follows says what to do
                body = read_capped(resp, MAX_DOCUMENT, f"the answer of {what}")
        doc = parse_json_object(body, f"the answer of {what}")
        token = doc.get("token") or doc.get("access_token")
        if not isinstance(token, str) or not token:
            raise VerificationError(f"{what} answered without a token", "the token service is misbehaving")
        if isinstance(doc.get("refresh_token"), str) and doc["refresh_token"]:
            auth.refresh_token = doc["refresh_token"]
        lifetime = doc.get("expires_in")
        lifetime = float(lifetime) if isinstance(lifetime, (int, float)) and lifetime > 0 else 60.0  # the spec's default
        # Stop sending it a little before it expires: an upload refused halfway is sent again.
        expires = time.monotonic() + lifetime - min(10.0, lifetime / 4)
        auth.tokens = [t for t in auth.tokens if t.scopes != scopes] + [_Token(scopes, token, expires)]
        return token

    # -- statuses ----------------------------------------------------------------------------
    def check(self, resp: Response, *, scope: str, allow: Tuple[int, ...], what: str) -> Response:
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
                raise Transient(f"HTTP {code} for {what}", retry_after=retry_after(resp))
            raise RegistryError(f"registry {self.host} answered HTTP {code} to {what}{error_detail(resp)}",
                                "check the registry and the reference")
        finally:
            resp.close()

    # -- whole requests ----------------------------------------------------------------------
    def request(self, method: str, path: str, *, scope: str, headers: Optional[dict] = None, data=None,
                allow: Tuple[int, ...] = (200,)) -> Response:
        """One registry call (path or URL), retried on resets, timeouts, 429 and 5xx; a response
        whose status is in allow, else a RegistryError. Its body is not for reading: use fetch."""
        what = f"{method} {path}"
        return self.retrying(lambda: self.check(self.send(method, path, scope=scope, headers=headers, data=data),
                                                scope=scope, allow=allow, what=what))

    def fetch(self, path: str, *, scope: str, headers: Optional[dict] = None, allow: Tuple[int, ...] = (200,),
              limit: int = MAX_DOCUMENT, what: Optional[str] = None) -> Tuple[Response, bytes]:
        """GET path (or URL), retried like request: (response, body read whole). A body over
        limit bytes is a VerificationError; the body of a status other than 200 is b""."""
        label = what or f"GET {path}"

        def attempt() -> Tuple[Response, bytes]:
            with self.send("GET", path, scope=scope, headers=headers, stream=True) as resp:
                self.check(resp, scope=scope, allow=allow, what=f"GET {path}")
                if resp.status_code != 200:
                    return resp, b""
                with self._network(f"GET {path}"):
                    return resp, read_capped(resp, limit, label)

        return self.retrying(attempt)

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
