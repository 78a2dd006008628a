"""The image store: content-addressed blobs, layers unpacked once, image records.

Layout under ``<root>/images``:

* ``blobs/sha256/<hex>``: every blob, verified against its digest and size;
* ``layers/<diff_id hex>/``: each layer unpacked once, an overlayfs lower
  directory shared by every container and image that uses it;
* ``index.json``: the image records, written atomically under a file lock;
  an image is recorded only once all of it is in the store, so an
  interrupted pull never leaves half an image listed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import fcntl
import gzip
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import zstandard

from vmrt import safefs
from vmrt.errors import InvalidArgumentError, NotFoundError
from vmrt.fsutil import RemoveError, naming, private_dir, remove_tree
from vmrt.images import manifest as mf
from vmrt.images.reference import Reference, parse
from vmrt.images.registry import Credentials, Endpoint, IntegrityError, RegistryClient
from vmrt.images.unpack import unpack
from vmrt.sandbox.persist import read_json, write_json

log = logging.getLogger(__name__)


@dataclass
class ImageRecord:
    id: str  # the config's digest, as containerd and Docker use it
    repo_tags: list[str] = field(default_factory=list)
    repo_digests: list[str] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)  # diff_ids, bottom first
    config: dict[str, Any] = field(default_factory=dict)  # the config's "config" object
    blobs: list[str] = field(default_factory=list)  # config and layer blob digests
    size: int = 0
    created: str = ""

    @property
    def user(self) -> str:
        return image_user(self.config)


def image_user(config: dict[str, Any]) -> str:
    """An image config's User; null, as some builders write, is root ("")."""
    return str(config.get("User") or "")


def _hex(digest: str) -> str:
    algorithm, _, value = digest.partition(":")
    if algorithm != "sha256" or len(value) != 64 or not all(c in "0123456789abcdef"
                                                             for c in value):
        raise IntegrityError(f"unsupported or malformed digest {digest!r}")
    return value


def open_layer(path: Path, media_type: str) -> IO[bytes]:
    """The uncompressed tar stream of a layer blob (by media type, else by magic)."""
    raw = path.open("rb")
    head = raw.peek(4)[:4] if hasattr(raw, "peek") else b""
    if media_type in mf.LAYER_ZSTD or head == b"\x28\xb5\x2f\xfd":
        return zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
    if media_type in mf.LAYER_GZIP or head[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


class ImageStore:
    def __init__(self, root: Path, registry: RegistryClient | None = None) -> None:
        self.dir = root / "images"
        self.blobs = self.dir / "blobs" / "sha256"
        self.layers = self.dir / "layers"
        self._index = self.dir / "index.json"
        self._lock_file = self.dir / "index.lock"
        self.registry = registry
        self._images: dict[str, ImageRecord] = {}
        self._loaded_mtime = -1.0
        # The index could not be read: until the next save puts it aside, its
        # layers and blobs are not garbage (they may be all the images).
        self._unreadable = False
        self._pulls: dict[str, asyncio.Task[ImageRecord]] = {}
        self._pins: collections.Counter[str] = collections.Counter()
        self._pin_lock = threading.Lock()
        self._blob_jobs: dict[str, asyncio.Task[None]] = {}
        self._layer_jobs: dict[str, asyncio.Task[None]] = {}
        private_dir(self.dir)
        for directory in (self.blobs, self.layers):
            directory.mkdir(parents=True, exist_ok=True)

    def remove_partials(self) -> None:
        """Downloads and unpacks cut short by a crash; only the daemon calls this."""
        for directory in (self.blobs, self.layers):
            for leftover in directory.glob(".*.partial"):
                try:
                    if leftover.is_dir():
                        remove_tree(leftover)
                    else:
                        leftover.unlink(missing_ok=True)
                except (OSError, RemoveError) as exc:
                    log.error("cannot remove %s: %s", leftover, exc)

    # -- the index --------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive access to index.json, shared with ``vmrt image import``."""
        with self._lock_file.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._reload(force=True)
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _reload(self, force: bool = False) -> None:
        try:
            mtime = self._index.stat().st_mtime
        except FileNotFoundError:
            self._images = {}
            return
        if not force and mtime == self._loaded_mtime:
            return
        fields = {f.name for f in dataclasses.fields(ImageRecord)}
        try:
            self._images = {r["id"]: ImageRecord(**{k: v for k, v in r.items() if k in fields})
                            for r in read_json(self._index)}
            self._unreadable = False
        except (ValueError, TypeError, KeyError) as exc:
            # A truncated or garbled index must not keep vmrtd from serving:
            # the store works as empty (images can be pulled again) and the
            # file stays for a person to look at (``_save`` puts it aside).
            if not self._unreadable:
                log.error("image index %s is unreadable (%s); serving no images until the "
                          "next pull, which keeps the file aside", self._index, exc)
            self._images = {}
            self._unreadable = True
        self._loaded_mtime = mtime

    def _save(self) -> None:
        """Under ``_locked``."""
        if self._unreadable:
            kept = self._index.with_name(f"{self._index.name}.unreadable-{time.time_ns()}")
            with contextlib.suppress(FileNotFoundError):
                os.replace(self._index, kept)
                log.error("the unreadable image index is kept as %s", kept)
            self._unreadable = False
        write_json(self._index, [asdict(i) for i in self._images.values()])
        self._loaded_mtime = self._index.stat().st_mtime

    def images(self) -> list[ImageRecord]:
        self._reload()
        return list(self._images.values())

    def find(self, reference: str) -> ImageRecord | None:
        self._reload()
        if reference in self._images:
            return self._images[reference]
        if reference.startswith("sha256:"):
            return None
        if len(reference) >= 12 and all(c in "0123456789abcdef" for c in reference):
            matches = [i for i in self._images.values()
                       if i.id.removeprefix("sha256:").startswith(reference)]
            if len(matches) == 1:
                return matches[0]
        try:
            ref = parse(reference)
        except InvalidArgumentError:
            return None
        wanted = str(ref)
        for image in self._images.values():
            if wanted in image.repo_tags or wanted in image.repo_digests:
                return image
        return None

    def resolve(self, reference: str) -> ImageRecord:
        image = self.find(reference)
        if image is None:
            raise NotFoundError(f"image {reference!r} is not present on this node")
        return image

    def layer_dirs(self, image: ImageRecord) -> list[Path]:
        """Overlay lower directories, top layer first."""
        return [self.layers / _hex(d) for d in reversed(image.layers)]

    def read_file(self, image: ImageRecord, path: str, limit: int = 1 << 20) -> bytes | None:
        """A regular file as the container would see it: the topmost layer that
        has the path wins, a whiteout hides it, and symlinks resolve inside
        their layer, never on the host (an image is untrusted input)."""
        for layer in self.layer_dirs(image):
            found = safefs.lookup_in_root(layer, path)
            if found is None:
                continue
            if found == "regular":
                return safefs.read_in_root(layer, path, limit)
            return None  # a whiteout, a directory, a device...
        return None

    def _record(self, image: ImageRecord, tags: list[str], digests: list[str]) -> ImageRecord:
        with self._locked():
            missing = [d for d in image.layers if not (self.layers / _hex(d)).is_dir()]
            if missing:
                raise IntegrityError(f"image {image.id}: layers {', '.join(missing)} vanished "
                                     "before the image could be recorded")
            existing = self._images.setdefault(image.id, image)
            for tag in tags:
                for other in self._images.values():
                    if other is not existing and tag in other.repo_tags:
                        other.repo_tags.remove(tag)
                if tag not in existing.repo_tags:
                    existing.repo_tags.append(tag)
            for digest in digests:
                if digest not in existing.repo_digests:
                    existing.repo_digests.append(digest)
            # An image left with no name at all by a moved tag is gone.
            for other_id in [i for i, o in self._images.items()
                             if o is not existing and not o.repo_tags and not o.repo_digests]:
                del self._images[other_id]
            self._save()
            return existing

    def remove(self, reference: str, layers_in_use: set[str]) -> None:
        """By id (or id prefix): the image and all its names. By name: that name; the
        image goes with its last tag (its digests name no one's choice, as in
        containerd, where no `<none>` entry stays behind)."""
        with self._locked():
            image = self.find(reference)
            if image is None:
                return
            by_id = reference == image.id or image.id.removeprefix("sha256:").startswith(
                reference)
            if not by_id:
                name = str(parse(reference))
                image.repo_tags = [t for t in image.repo_tags if t != name]
                image.repo_digests = [d for d in image.repo_digests if d != name]
            if by_id or not image.repo_tags:
                del self._images[image.id]
            self._save()
        self.collect_garbage(layers_in_use)

    @contextlib.contextmanager
    def pinned(self, digests: Iterable[str]) -> Iterator[None]:
        """Keep these layers and blobs from garbage collection while in use
        (a pull in progress, a container root filesystem being built)."""
        held = [_hex(d) for d in digests]
        with self._pin_lock:
            self._pins.update(held)
        try:
            yield
        finally:
            with self._pin_lock:
                self._pins.subtract(held)
                self._pins += collections.Counter()  # drop the zeros

    def collect_garbage(self, layers_in_use: set[str]) -> None:
        """Delete layers and blobs no image, container or pull in progress refers to."""
        with self._locked(), self._pin_lock:
            if self._unreadable:
                log.warning("not collecting image garbage: the image index is unreadable")
                return
            wanted = {_hex(d) for image in self._images.values() for d in image.layers}
            wanted |= {_hex(d) for d in layers_in_use} | set(self._pins)
            blobs = {_hex(b) for image in self._images.values() for b in image.blobs}
            blobs |= set(self._pins)
            for layer in self.layers.iterdir():
                if layer.name not in wanted and not layer.name.startswith("."):
                    remove_tree(layer)
            for blob in self.blobs.iterdir():
                if blob.name not in blobs and not blob.name.startswith("."):
                    blob.unlink(missing_ok=True)

    # -- pulling -------------------------------------------------------------------

    async def pull(self, reference: str, creds: Credentials,
                   progress: Callable[[str], None] | None = None,
                   on_bytes: Callable[[int, int], None] | None = None) -> ImageRecord:
        """Pull ``reference``; ``on_bytes(received, total)`` follows the download."""
        ref = parse(reference)
        # Pulls are shared only between callers with the same credentials.
        key = f"{ref}\0{creds.fingerprint}"
        task = self._pulls.get(key)
        if task is None:
            # One pull per reference however many ask at once; it runs to the end
            # even if the caller that started it goes away (its result is kept).
            task = asyncio.create_task(self._pull(ref, creds, progress or log.info,
                                                  on_bytes or (lambda received, total: None)))
            self._pulls[key] = task
            task.add_done_callback(lambda _t: self._pulls.pop(key, None))
        return await asyncio.shield(task)

    async def _pull(self, ref: Reference, creds: Credentials, say: Callable[[str], None],
                    on_bytes: Callable[[int, int], None]) -> ImageRecord:
        assert self.registry is not None
        started = time.monotonic()
        endpoint, body, content_type, top_digest = await self.registry.manifest(ref, creds)
        kind = mf.media_type(body, content_type)
        if kind in mf.INDEX_TYPES:
            chosen = mf.pick_platform(body)
            endpoint, body, content_type, _ = await self.registry.manifest(ref, creds,
                                                                           chosen.digest)
            kind = mf.media_type(body, content_type)
        manifest = mf.parse_manifest(body, kind)
        with self.pinned([manifest.config.digest, *(layer.digest for layer in manifest.layers)]):
            return await self._pull_manifest(ref, creds, say, on_bytes, endpoint, manifest,
                                             top_digest, started)

    async def _pull_manifest(self, ref: Reference, creds: Credentials,
                             say: Callable[[str], None], on_bytes: Callable[[int, int], None],
                             endpoint: Endpoint, manifest: mf.Manifest, top_digest: str,
                             started: float) -> ImageRecord:
        await self._fetch_blob(endpoint, ref, manifest.config, creds)
        config = json.loads((self.blobs / _hex(manifest.config.digest)).read_bytes())
        diff_ids = list(config.get("rootfs", {}).get("diff_ids", []))
        if len(diff_ids) != len(manifest.layers):
            raise IntegrityError(f"{ref}: {len(manifest.layers)} layers but "
                                 f"{len(diff_ids)} diff_ids in the config")
        with self.pinned(diff_ids):
            return await self._pull_layers(ref, creds, say, on_bytes, endpoint, manifest,
                                           top_digest, started, config, diff_ids)

    async def _pull_layers(self, ref: Reference, creds: Credentials, say: Callable[[str], None],
                           on_bytes: Callable[[int, int], None], endpoint: Endpoint,
                           manifest: mf.Manifest, top_digest: str, started: float,
                           config: dict[str, Any], diff_ids: list[str]) -> ImageRecord:
        total = sum(layer.size for layer in manifest.layers)
        say(f"pulling {ref}: {len(manifest.layers)} layers, {total} bytes from {endpoint.base}")
        received = 0

        def count(n: int) -> None:
            nonlocal received
            received += n
            on_bytes(received, total)

        for index, (layer, diff_id) in enumerate(zip(manifest.layers, diff_ids, strict=True)):
            if (self.layers / _hex(diff_id)).is_dir() or (self.blobs / _hex(layer.digest)).exists():
                count(layer.size)
            await self._fetch_layer(endpoint, ref, layer, diff_id, creds, count)
            say(f"pulling {ref}: layer {index + 1}/{len(manifest.layers)} done")
        elapsed = time.monotonic() - started
        say(f"pulled {ref} ({total} bytes) in {elapsed:.2f}s")
        image = ImageRecord(
            id=manifest.config.digest, layers=diff_ids,
            config=config.get("config", {}),
            blobs=[manifest.config.digest, *(layer.digest for layer in manifest.layers)],
            size=total + manifest.config.size, created=str(config.get("created", "")))
        return self._record(image, [ref.tagged] if ref.tagged else [],
                            [f"{ref.repository}@{top_digest}"])

    async def _fetch_blob(self, endpoint: Endpoint, ref: Reference, desc: mf.Descriptor,
                          creds: Credentials,
                          count: Callable[[int], None] = lambda n: None) -> None:
        target = self.blobs / _hex(desc.digest)
        if target.exists() and target.stat().st_size == desc.size:
            return
        job = self._blob_jobs.get(desc.digest)
        if job is None:
            assert self.registry is not None
            job = asyncio.create_task(self.registry.blob(endpoint, ref, desc.digest, desc.size,
                                                         target, creds, count))
            self._blob_jobs[desc.digest] = job
            job.add_done_callback(lambda _t: self._blob_jobs.pop(desc.digest, None))
        await asyncio.shield(job)

    async def _fetch_layer(self, endpoint: Endpoint, ref: Reference, desc: mf.Descriptor,
                           diff_id: str, creds: Credentials,
                           count: Callable[[int], None]) -> None:
        if (self.layers / _hex(diff_id)).is_dir():
            return
        await self._fetch_blob(endpoint, ref, desc, creds, count)
        job = self._layer_jobs.get(diff_id)
        if job is None:
            job = asyncio.create_task(asyncio.to_thread(
                self.unpack_blob, self.blobs / _hex(desc.digest), desc.media_type, diff_id))
            self._layer_jobs[diff_id] = job
            job.add_done_callback(lambda _t: self._layer_jobs.pop(diff_id, None))
        await asyncio.shield(job)

    def unpack_blob(self, blob: Path, media_type: str, diff_id: str) -> None:
        final = self.layers / _hex(diff_id)
        if final.is_dir():
            return
        work = self.layers / f".{_hex(diff_id)}.{os.getpid()}.partial"
        remove_tree(work)
        work.mkdir()
        try:
            with naming(work), open_layer(blob, media_type) as stream:
                actual, _size = unpack(stream, str(work))
            if actual != diff_id:
                raise IntegrityError(f"layer {blob.name[:12]} unpacks to {actual}, but the image "
                                     f"config says {diff_id}")
            os.chmod(work, 0o755)
            work.rename(final)
        except BaseException:
            remove_tree(work)
            raise

    # -- adding images from files ------------------------------------------------------

    def add_local(self, tags: list[str], config: dict[str, Any],
                  layer_blobs: list[tuple[Path, str]], digests: tuple[str, ...] = ()
                  ) -> ImageRecord:
        """Record an image whose config and layer blobs are already files."""
        config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
        config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
        (self.blobs / _hex(config_digest)).write_bytes(config_bytes)
        diff_ids = list(config.get("rootfs", {}).get("diff_ids", []))
        blob_digests = [config_digest]
        for (blob, media_type), diff_id in zip(layer_blobs, diff_ids, strict=True):
            self.unpack_blob(blob, media_type, diff_id)
            blob_digests.append("sha256:" + blob.name)
        size = sum(blob.stat().st_size for blob, _ in layer_blobs)
        image = ImageRecord(id=config_digest, layers=diff_ids, config=config.get("config", {}),
                            blobs=blob_digests, size=size, created=str(config.get("created", "")))
        return self._record(image, [str(parse(t)) for t in tags], list(digests))
