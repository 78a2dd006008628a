"""Talking to OCI registries: mirrors, auth, manifests and verified blobs.

Each pull tries the configured mirrors of the image's registry host first,
then the host itself over HTTPS. Auth follows the distribution spec: basic
credentials, or the bearer-token challenge (``WWW-Authenticate: Bearer
realm=...,service=...,scope=...``), with tokens cached per endpoint and
repository.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from vmrt.errors import (
    InvalidArgumentError,
    NotFoundError,
    UnauthenticatedError,
    UnavailableError,
    VmrtError,
)
from vmrt.fsutil import naming
from vmrt.images.manifest import ACCEPT
from vmrt.images.reference import Reference

log = logging.getLogger(__name__)

CHUNK = 1 << 20
# Manifests, indexes and token replies are small documents; a bigger one is
# refused rather than read into memory.
MAX_DOCUMENT = 4 << 20
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


class IntegrityError(VmrtError):
    pass


@dataclass(frozen=True)
class Credentials:
    username: str = ""
    password: str = ""
    registry_token: str = ""

    @classmethod
    def from_auth(cls, username: str, password: str, auth: str,
                  registry_token: str) -> Credentials:
        if auth and not username:
            try:
                username, _, password = base64.b64decode(auth).decode().partition(":")
            except ValueError:
                raise InvalidArgumentError("auth.auth: is not base64 of user:password") from None
        return cls(username, password, registry_token)

    @property
    def fingerprint(self) -> str:
        """Tells credentials apart (for caches) without keeping them readable."""
        raw = f"{self.username}\0{self.password}\0{self.registry_token}".encode()
        return hashlib.sha256(raw).hexdigest()[:16]

    @property
    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


@dataclass(frozen=True)
class Endpoint:
    base: str  # scheme://host[:port]
    mirror: bool
    # Whether the pull's credentials may go here: only to the image's own
    # registry host, never to a mirror run by someone else.
    trusted: bool = True


def endpoints(ref: Reference, mirrors: dict[str, list[str]]) -> list[Endpoint]:
    found = []
    for url in mirrors.get(ref.domain, []):
        base = url.rstrip("/")
        host = httpx.URL(base).netloc.decode()
        found.append(Endpoint(base, True, trusted=host in (ref.domain, ref.api_host)))
    found.append(Endpoint(f"https://{ref.api_host}", False))
    return found


async def _read_capped(response: httpx.Response, what: str) -> bytes:
    data = bytearray()
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) > MAX_DOCUMENT:
            raise IntegrityError(f"{what} is larger than {MAX_DOCUMENT >> 20} MiB")
    return bytes(data)


class RegistryClient:
    def __init__(self, mirrors: dict[str, list[str]], timeout: float = 60.0) -> None:
        self._mirrors = mirrors
        self._http = httpx.AsyncClient(
            follow_redirects=True, timeout=httpx.Timeout(timeout, connect=10.0))
        self._tokens: dict[tuple[str, str, str], str] = {}

    async def close(self) -> None:
        await self._http.aclose()

    # -- auth ----------------------------------------------------------------

    async def _authorize(self, response: httpx.Response, endpoint: Endpoint, repo: str,
                         creds: Credentials) -> str:
        if not endpoint.trusted:
            creds = Credentials()
        challenge = response.headers.get("www-authenticate", "")
        scheme = challenge.split(" ", 1)[0].lower()
        if scheme == "basic":
            if not creds.username:
                raise UnauthenticatedError(f"{endpoint.base} requires credentials")
            return creds.basic
        if scheme != "bearer":
            raise UnauthenticatedError(f"{endpoint.base} answered 401 without a usable "
                                       f"challenge ({challenge or 'none'})")
        if creds.registry_token:
            return f"Bearer {creds.registry_token}"
        params = dict(_CHALLENGE.findall(challenge))
        realm = params.pop("realm", "")
        if not realm:
            raise UnauthenticatedError(f"{endpoint.base}: bearer challenge without a realm")
        if realm.startswith("http://") and endpoint.base.startswith("https://"):
            raise UnauthenticatedError(f"{endpoint.base} sent its token realm over plain HTTP "
                                       f"({realm}); refusing to send credentials there")
        params.setdefault("scope", f"repository:{repo}:pull")
        headers = {"Authorization": creds.basic} if creds.username else {}
        try:
            token_response = await self._http.get(realm, params=params, headers=headers)
        except httpx.HTTPError as exc:
            raise UnavailableError(f"token service {realm}: {exc}") from None
        if token_response.status_code in (401, 403):
            raise UnauthenticatedError(f"{endpoint.base}: the token service refused the "
                                       f"credentials (HTTP {token_response.status_code})")
        if token_response.status_code != 200:
            raise UnauthenticatedError(f"{endpoint.base}: token service answered HTTP "
                                       f"{token_response.status_code}")
        if len(token_response.content) > MAX_DOCUMENT:
            raise UnauthenticatedError(f"{endpoint.base}: the token response is too large")
        body = token_response.json()
        token = body.get("token") or body.get("access_token")
        if not token:
            raise UnauthenticatedError(f"{endpoint.base}: the token service sent no token")
        return f"Bearer {token}"

    async def _request(self, method: str, endpoint: Endpoint, repo: str, path: str,
                       creds: Credentials, headers: dict[str, str] | None = None,
                       stream: bool = False) -> httpx.Response:
        url = f"{endpoint.base}/v2/{repo}/{path}"
        headers = dict(headers or {})
        key = (endpoint.base, repo, creds.fingerprint if endpoint.trusted else "")
        for attempt in range(2):
            if key in self._tokens:
                headers["Authorization"] = self._tokens[key]
            request = self._http.build_request(method, url, headers=headers)
            try:
                response = await self._http.send(request, stream=stream)
            except httpx.HTTPError as exc:
                raise UnavailableError(f"{endpoint.base}: {type(exc).__name__}: {exc}") from None
            if response.status_code != 401:
                return response
            await response.aclose()
            if attempt == 1:
                raise UnauthenticatedError(f"{endpoint.base} refused the credentials for "
                                           f"{repo} (HTTP 401)")
            self._tokens[key] = await self._authorize(response, endpoint, repo, creds)
        raise AssertionError("unreachable")

    # -- manifests -------------------------------------------------------------

    async def manifest(self, ref: Reference, creds: Credentials, lookup: str = ""
                       ) -> tuple[Endpoint, bytes, str, str]:
        """(endpoint, body, content type, digest) of ``lookup`` (default: the ref's)."""
        lookup = lookup or ref.lookup
        errors: list[str] = []
        not_found = 0
        refused = False
        for endpoint in endpoints(ref, self._mirrors):
            try:
                response = await self._request("GET", endpoint, ref.path, f"manifests/{lookup}",
                                               creds, {"Accept": ACCEPT}, stream=True)
            except (UnavailableError, UnauthenticatedError) as exc:
                errors.append(str(exc))
                refused = refused or isinstance(exc, UnauthenticatedError)
                continue
            try:
                if response.status_code == 404:
                    not_found += 1
                    errors.append(f"{endpoint.base}: {ref.path}:{lookup} not found")
                    continue
                if response.status_code != 200:
                    errors.append(f"{endpoint.base}: HTTP {response.status_code}")
                    continue
                body = await _read_capped(response, f"{endpoint.base}: the manifest of {ref}")
            finally:
                await response.aclose()
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
            if lookup.startswith("sha256:") and digest != lookup:
                raise IntegrityError(f"{endpoint.base} sent a manifest whose digest is {digest}, "
                                     f"not {lookup}")
            return endpoint, body, response.headers.get("content-type", ""), digest
        # The best explanation first: a registry that refused us, then one that
        # answered that there is no such image, then the unreachable ones.
        if refused:
            raise UnauthenticatedError(f"cannot fetch {ref}: " + "; ".join(errors))
        if not_found:
            raise NotFoundError(f"image {ref} not found: " + "; ".join(errors))
        raise UnavailableError(f"cannot fetch {ref}: " + "; ".join(errors))

    # -- blobs -------------------------------------------------------------------

    async def blob(self, endpoint: Endpoint, ref: Reference, digest: str, size: int,
                   destination: Path, creds: Credentials,
                   progress: Callable[[int], None] = lambda n: None) -> None:
        """Download a blob to ``destination``, verifying its size and digest."""
        algorithm, _, expected = digest.partition(":")
        if algorithm != "sha256":
            raise IntegrityError(f"unsupported digest algorithm in {digest}")
        partial = destination.with_name(f".{destination.name}.{os.getpid()}.partial")
        response = await self._request("GET", endpoint, ref.path, f"blobs/{digest}", creds,
                                       stream=True)
        try:
            if response.status_code != 200:
                raise UnavailableError(f"{endpoint.base}: blob {digest}: HTTP "
                                       f"{response.status_code}")
            h = hashlib.sha256()
            received = 0
            started = time.monotonic()
            with naming(partial), partial.open("wb") as out:
                async for chunk in response.aiter_bytes(CHUNK):
                    received += len(chunk)
                    if received > size:
                        raise IntegrityError(f"blob {digest} is larger than its "
                                             f"descriptor's {size} bytes")
                    h.update(chunk)
                    await asyncio.to_thread(out.write, chunk)
                    progress(len(chunk))
            if received != size:
                raise IntegrityError(f"blob {digest} is {received} bytes, not {size}")
            if h.hexdigest() != expected:
                raise IntegrityError(f"blob {digest} does not match its digest")
            partial.rename(destination)
            log.debug("blob %s: %d bytes in %.2fs", digest[:19], size,
                      time.monotonic() - started)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        finally:
            await response.aclose()
