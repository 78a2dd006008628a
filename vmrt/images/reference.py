"""Image references, normalized the way Docker and containerd do it.

``busybox`` is ``docker.io/library/busybox:latest``; a reference with a
digest keeps its tag (if any) for display but is resolved by the digest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vmrt.errors import InvalidArgumentError

DEFAULT_DOMAIN = "docker.io"
# Docker Hub's registry API lives elsewhere than its name.
DOCKER_HUB_API = "registry-1.docker.io"

_PATH_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
# Only sha256: every digest is verified, and sha256 is what we verify with.
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class Reference:
    domain: str
    path: str
    tag: str = ""
    digest: str = ""

    @property
    def repository(self) -> str:
        return f"{self.domain}/{self.path}"

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.domain == DEFAULT_DOMAIN else self.domain

    def __str__(self) -> str:
        if self.digest:
            return f"{self.repository}@{self.digest}"
        return f"{self.repository}:{self.tag or 'latest'}"

    @property
    def tagged(self) -> str:
        """The repo:tag form, or "" for a digest-only reference."""
        return f"{self.repository}:{self.tag}" if self.tag else ""

    @property
    def lookup(self) -> str:
        """What to ask the registry for: the digest when there is one."""
        return self.digest or self.tag or "latest"


def parse(text: str) -> Reference:
    ref = text.strip()
    if not ref or any(c.isspace() for c in ref):
        raise InvalidArgumentError(f"invalid image reference {text!r}")
    name, _, digest = ref.partition("@")
    if digest and not _DIGEST.match(digest):
        raise InvalidArgumentError(f"invalid image reference {text!r}: bad digest {digest!r}")
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        domain, remainder = first, rest
    else:
        domain, remainder = DEFAULT_DOMAIN, name
    tag = ""
    last_slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    if colon > last_slash:
        remainder, tag = remainder[:colon], remainder[colon + 1:]
        if not _TAG.match(tag):
            raise InvalidArgumentError(f"invalid image reference {text!r}: bad tag {tag!r}")
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = f"library/{remainder}"
    for component in remainder.split("/"):
        if not _PATH_COMPONENT.match(component):
            raise InvalidArgumentError(
                f"invalid image reference {text!r}: repository names are lowercase letters, "
                "digits and separators")
    if not digest and not tag:
        tag = "latest"
    return Reference(domain=domain, path=remainder, tag=tag, digest=digest)

