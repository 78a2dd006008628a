"""A fuzzer for vmrtd's CRI surface: hypothesis builds requests for every RPC
of RuntimeService and ImageService from their protobuf descriptors, with
hostile strings and numbers in every field, and sends them to a real vmrtd.

What counts as a failure (``Outcome.problems``):

* vmrtd is gone (a crash), or answers UNAVAILABLE;
* INTERNAL or UNKNOWN for any request (bad input must be named, not a bug);
* INVALID_ARGUMENT whose message does not start with the field at fault;
* a file made or changed outside vmrt's own directories and the log
  directories the requests asked for (``HostSnapshot``).

Used by ``test_cri_fuzz.py`` (a short run in the suite) and by
``bench/fuzz_cri.py`` (the long run, which writes its counts as JSON).
"""

from __future__ import annotations

import collections
import os
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cri_api.v1 import api_pb2 as api
from google.protobuf import descriptor as pbd
from google.protobuf import message_factory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.cri.conftest import Daemon
from vmrt.errors import names_a_field

EXPECTED = {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "ALREADY_EXISTS",
            "UNIMPLEMENTED", "RESOURCE_EXHAUSTED", "OUT_OF_RANGE"}
# A registry that cannot be reached, or refuses the credentials, is not bad input.
EXPECTED_FOR = {"PullImage": {"UNAVAILABLE", "UNAUTHENTICATED"}}
# RPCs that would take the fuzzer's long-lived pod and container away.
DESTRUCTIVE = {"StopPodSandbox", "RemovePodSandbox", "StopContainer", "RemoveContainer",
               "RemoveImage", "UpdateContainerResources"}
HOSTILE_STRINGS = [
    "", " ", ".", "..", "/", "../../../../etc/passwd", "/etc/shadow", "a/../../b",
    "x" * 300, "y" * 5000, "a\x00b", "\n", "a\nb", "café", "名前", "\u202e", "😀",
    "127.0.0.1:1-:1,tftp=/,hostfwd=tcp:127.0.0.1", "a,b=c", "x;K8S_POD_NAME=evil",
    "%s%s%n", "$(reboot)", "`id`", "-rf", "--help", "*", "?", "\\", "'\"",
    "0", "-1", "99999999999999999999", "NaN", "null", "{}", "[]",
    "/proc/self/mem", "/dev/zero", "/dev/kmsg", "/sys/kernel", "localhost", "::1",
    "kubepods.slice", "-.slice", "a-b-.slice", "/kubepods/../..",
    "sha256:" + "0" * 64, "busybox", "docker.io/library/busybox:latest", "localhost:1/x",
    "net.ipv4.ip_forward", "kernel/../../x", "ALL", "SYS_ADMIN", "CAP_NOPE",
]
REF = "\x01ref:"
INT_EDGES = [0, 1, -1, 2, 7, 42, 255, 256, 65535, 65536, 2**31 - 1, -(2**31), 2**32 - 1,
             2**62, 2**63 - 1, -(2**63)]


@dataclass
class Context:
    """What the fuzzer may point requests at: real objects, and a scratch
    directory for every host path a request may make vmrt create."""

    scratch: Path
    pod_ids: list[str] = field(default_factory=list)
    container_ids: list[str] = field(default_factory=list)

    def ids(self) -> st.SearchStrategy[str]:
        # Real ids are drawn as placeholders and filled in when the request is
        # sent: the objects come and go, and hypothesis must draw the same
        # way each time it replays an example.
        real = st.builds(lambda kind, n, cut: f"{REF}{kind}:{n}:{cut}",
                         st.sampled_from(["pod", "container"]), st.integers(0, 7),
                         st.sampled_from([64, 8, 1]))
        return st.one_of(real, real, st.text("0123456789abcdef", min_size=1, max_size=64),
                         st.sampled_from(HOSTILE_STRINGS))

    def fill_in(self, value: str) -> str:
        """A placeholder from ``ids`` -> a real id (or a prefix of one)."""
        if not value.startswith(REF):
            return value
        kind, n, cut = value[len(REF):].split(":")
        pool = self.pod_ids if kind == "pod" else self.container_ids
        return pool[int(n) % len(pool)][:int(cut)] if pool else "0" * int(cut)

    def host_paths(self) -> st.SearchStrategy[str]:
        inside = st.text("abcdefgh", min_size=1, max_size=8).map(
            lambda name: str(self.scratch / "host" / name))
        return st.one_of(inside, st.sampled_from(
            [str(self.scratch), "relative/path", "/a/../b", "/x\x00y", "", "/",
             str(self.scratch / "host" / ".." / "up")]))

    def log_dirs(self) -> st.SearchStrategy[str]:
        inside = st.text("abcdefgh", min_size=1, max_size=8).map(
            lambda name: str(self.scratch / "logs" / name))
        return st.one_of(inside, st.sampled_from(["", "logs", "/var/log/../../etc", "/\x00"]))


def _names() -> st.SearchStrategy[str]:
    valid = st.from_regex(r"[a-z][a-z0-9-]{0,20}[a-z0-9]", fullmatch=True)
    return st.one_of(valid, valid, st.sampled_from(HOSTILE_STRINGS), st.text(max_size=40))


def _string_for(name: str, ctx: Context) -> st.SearchStrategy[str]:
    if name in ("pod_sandbox_id", "container_id", "id", "target_id", "sandbox_id"):
        return ctx.ids()
    if name == "host_path":
        return ctx.host_paths()
    if name == "log_directory":
        return ctx.log_dirs()
    if name in ("name", "namespace", "uid", "hostname"):
        return _names()
    if name == "image" or name == "user_specified_image":
        return st.sampled_from(["busybox", "busybox:latest", "docker.io/library/busybox",
                                "localhost:1/nothing:here", *HOSTILE_STRINGS])
    if name == "log_path":
        return st.sampled_from(["c.log", "sub/c.log", "../c.log", "/abs.log", "", "a//b"])
    if name in ("localhost_ref", "seccomp_profile_path"):
        return st.sampled_from([str(ctx.scratch / "seccomp.json"), "/etc/passwd",
                                "/dev/zero", "localhost/etc/passwd", "runtime/default",
                                "relative", "/no/such/profile"])
    if name in ("container_path", "working_dir"):
        return st.sampled_from(["/data", "/", "data", "/tmp/x", "/proc", "/../etc",
                                *HOSTILE_STRINGS[:8]])
    if name == "host_ip":
        return st.sampled_from(["", "0.0.0.0", "127.0.0.1", "::", "300.1.1.1",
                                "127.0.0.1:1-:1,tftp=/,hostfwd=tcp:127.0.0.1", "localhost"])
    if name == "cgroup_parent":
        return st.sampled_from(["", "/kubepods", "/kubepods/../../x", "kubepods.slice",
                                "/a b", *HOSTILE_STRINGS[:6]])
    return st.one_of(st.sampled_from(HOSTILE_STRINGS), st.text(max_size=60))


def _scalar(fd: pbd.FieldDescriptor, ctx: Context) -> st.SearchStrategy[Any]:
    kind = fd.type
    if kind == pbd.FieldDescriptor.TYPE_STRING:
        return _string_for(fd.name, ctx)
    if kind == pbd.FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=200)
    if kind == pbd.FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == pbd.FieldDescriptor.TYPE_ENUM:
        numbers = [v.number for v in fd.enum_type.values]
        return st.one_of(st.sampled_from(numbers), st.integers(-3, 120))
    if kind in (pbd.FieldDescriptor.TYPE_DOUBLE, pbd.FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    signed = kind in (pbd.FieldDescriptor.TYPE_INT32, pbd.FieldDescriptor.TYPE_INT64,
                      pbd.FieldDescriptor.TYPE_SINT32, pbd.FieldDescriptor.TYPE_SINT64,
                      pbd.FieldDescriptor.TYPE_SFIXED32, pbd.FieldDescriptor.TYPE_SFIXED64)
    wide = kind in (pbd.FieldDescriptor.TYPE_INT64, pbd.FieldDescriptor.TYPE_UINT64,
                    pbd.FieldDescriptor.TYPE_SINT64, pbd.FieldDescriptor.TYPE_FIXED64,
                    pbd.FieldDescriptor.TYPE_SFIXED64)
    bits = 64 if wide else 32
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    edges = [v for v in INT_EDGES if low <= v <= high]
    return st.one_of(st.sampled_from(edges), st.integers(low, high), st.integers(0, 100))


def message(cls: Any, ctx: Context, depth: int = 0,
            density: int = 60) -> st.SearchStrategy[Any]:
    """Any message of ``cls``: each field absent, or (``density`` percent of
    them) ordinary or hostile."""

    @st.composite
    def build(draw: Callable[..., Any]) -> Any:
        msg = cls()
        for fd in cls.DESCRIPTOR.fields:
            if draw(st.integers(0, 99)) >= density:
                continue  # absent
            target = getattr(msg, fd.name)
            sub = fd.message_type
            if sub is not None and sub.GetOptions().map_entry:
                key_fd, value_fd = sub.fields_by_name["key"], sub.fields_by_name["value"]
                entries = draw(st.dictionaries(_scalar(key_fd, ctx), _scalar(value_fd, ctx),
                                               max_size=3))
                target.update(entries)
            elif fd.is_repeated:
                for _ in range(draw(st.integers(0, 3))):
                    if sub is not None:
                        if depth < 4:
                            target.add().CopyFrom(draw(message(
                                message_factory.GetMessageClass(sub), ctx, depth + 1,
                                density)))
                    else:
                        target.append(draw(_scalar(fd, ctx)))
            elif sub is not None:
                if depth < 4:
                    target.CopyFrom(draw(message(message_factory.GetMessageClass(sub), ctx,
                                                 depth + 1, density)))
            else:
                setattr(msg, fd.name, draw(_scalar(fd, ctx)))
        return msg

    return build()


def valid(rpc: str, ctx: Context) -> st.SearchStrategy[Any]:
    """A request that would succeed, for the RPCs whose interesting code lies
    past the checks; ``requests`` mutates a few of its fields."""
    names = st.from_regex(r"[a-z][a-z0-9]{2,10}", fullmatch=True)
    pod_id = st.integers(0, 7).map(lambda n: f"{REF}pod:{n}:64")
    container_id = st.integers(0, 7).map(lambda n: f"{REF}container:{n}:64")

    def pod_config(name: str) -> api.PodSandboxConfig:
        return api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(name=name, namespace="fuzz", uid=f"uid-{name}"),
            hostname=name, log_directory=str(ctx.scratch / "logs" / name))

    if rpc == "RunPodSandbox":
        return names.map(lambda n: api.RunPodSandboxRequest(config=pod_config(n)))
    if rpc == "CreateContainer":
        return st.builds(lambda n, p: api.CreateContainerRequest(
            pod_sandbox_id=p, config=api.ContainerConfig(
                metadata=api.ContainerMetadata(name=n), image=api.ImageSpec(image="busybox"),
                command=["sleep", "1000"], log_path=f"{n}.log",
                mounts=[api.Mount(container_path="/data",
                                  host_path=str(ctx.scratch / "host" / n))])), names, pod_id)
    if rpc == "ExecSync":
        return st.builds(lambda c, cmd: api.ExecSyncRequest(container_id=c, cmd=cmd, timeout=5),
                         container_id, st.sampled_from([["true"], ["sh", "-c", "echo hi"],
                                                        ["ls", "/data"], ["id"]]))
    if rpc in ("Exec", "Attach"):
        cls = api.ExecRequest if rpc == "Exec" else api.AttachRequest
        extra = {"cmd": ["sh"]} if rpc == "Exec" else {}
        return container_id.map(lambda c: cls(container_id=c, stdout=True, **extra))
    if rpc in ("StartContainer", "ContainerStatus", "ContainerStats", "ReopenContainerLog"):
        cls = getattr(api, f"{rpc}Request")
        return container_id.map(lambda c: cls(container_id=c))
    if rpc in ("PodSandboxStatus", "PodSandboxStats", "PortForward"):
        cls = getattr(api, f"{rpc}Request")
        return pod_id.map(lambda p: cls(pod_sandbox_id=p))
    return st.nothing()


@dataclass(frozen=True)
class Rpc:
    service: str
    name: str
    request: Any
    streaming: bool


def rpcs() -> list[Rpc]:
    found = []
    for service in ("RuntimeService", "ImageService"):
        for method in api.DESCRIPTOR.services_by_name[service].methods:
            found.append(Rpc(service, method.name,
                             message_factory.GetMessageClass(method.input_type),
                             method.server_streaming))
    return found


@dataclass
class Outcome:
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    per_rpc: dict[str, collections.Counter[str]] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter))
    problems: list[str] = field(default_factory=list)
    requests: int = 0
    started: float = field(default_factory=time.monotonic)

    def record(self, rpc: str, code: str, detail: str, request: Any) -> None:
        self.requests += 1
        self.counts[code] += 1
        self.per_rpc[rpc][code] += 1
        problem = ""
        if code not in EXPECTED | EXPECTED_FOR.get(rpc, set()) and code != "DEADLINE_EXCEEDED":
            problem = f"{rpc} -> {code}: {detail}"
        elif code == "INVALID_ARGUMENT" and not names_a_field(detail):
            problem = f"{rpc} -> INVALID_ARGUMENT without the field first: {detail}"
        if problem and len(self.problems) < 200:
            self.problems.append(f"{problem}\n    request: {_short(request)}")

    def summary(self) -> dict[str, Any]:
        return {"requests": self.requests, "seconds": round(time.monotonic() - self.started, 1),
                "codes": dict(self.counts.most_common()),
                "per_rpc": {k: dict(v) for k, v in sorted(self.per_rpc.items())},
                "problems": len(self.problems), "problem_samples": self.problems[:50]}


def _short(request: Any) -> str:
    text = str(request).replace("\n", " ")
    return text if len(text) < 600 else text[:600] + "..."


class Fuzzer:
    """Sends generated requests to one daemon, keeping a pod and a running
    container for requests to land on, and cleaning up what they create."""

    def __init__(self, daemon: Daemon, scratch: Path) -> None:
        self.daemon = daemon
        self.ctx = Context(scratch)
        self.outcome = Outcome()
        (scratch / "host").mkdir(parents=True, exist_ok=True)
        (scratch / "logs").mkdir(parents=True, exist_ok=True)
        (scratch / "seccomp.json").write_text(
            '{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}')
        self.calls = {rpc.name: rpc for rpc in rpcs()}

    def prepare(self) -> None:
        config = self.daemon.pod_config()
        config.log_directory = str(self.ctx.scratch / "logs" / "main")
        pod_id = self.daemon.run_pod(config)
        container = self.daemon.run_container(pod_id, config, ["sleep", "100000"])
        self.ctx.pod_ids.append(pod_id)
        self.ctx.container_ids.append(container)
        self.keep = {pod_id, container}

    def stub(self, rpc: Rpc) -> Any:
        service = self.daemon.runtime if rpc.service == "RuntimeService" else self.daemon.images
        return getattr(service, rpc.name)

    def send(self, rpc: Rpc, request: Any) -> None:
        _fill_in(request, self.ctx.fill_in)
        if rpc.name in DESTRUCTIVE:
            # Leave the fuzzer's own pod and container be.
            for name in ("pod_sandbox_id", "container_id"):
                if hasattr(request, name) and any(
                        k.startswith(getattr(request, name)) for k in self.keep
                        if getattr(request, name)):
                    setattr(request, name, "f" * 64)
        if rpc.name == "PullImage":
            request.image.image = _local_only(request.image.image)
        if rpc.name == "RemoveImage" and request.image.image:
            request.image.image = "x" + request.image.image  # not the image everything uses
        timeout = 180 if rpc.name in ("RunPodSandbox", "CreateContainer") else 60
        try:
            if rpc.streaming:
                stream = self.stub(rpc)(request, timeout=1.0)
                for _ in stream:
                    pass
                reply = None
            else:
                reply = self.stub(rpc)(request, timeout=timeout)
            code, detail = "OK", ""
        except grpc.RpcError as exc:
            reply = None
            code, detail = exc.code().name, exc.details() or ""
            if rpc.streaming and code == "DEADLINE_EXCEEDED":
                code = "OK"  # our own one-second look at an endless stream
        if self.daemon.proc is None or self.daemon.proc.poll() is not None:
            self.outcome.problems.append(f"vmrtd died after {rpc.name}: {_short(request)}")
            raise AssertionError(f"vmrtd died after {rpc.name}")
        self.outcome.record(rpc.name, code, detail, request)
        self._tidy(rpc, reply)

    def _tidy(self, rpc: Rpc, reply: Any) -> None:
        """Pods and containers a request made: removed, so they neither pile up
        nor eat the VM; a few containers are kept for later requests."""
        runtime = self.daemon.runtime
        if rpc.name == "RunPodSandbox" and reply is not None:
            runtime.RemovePodSandbox(api.RemovePodSandboxRequest(
                pod_sandbox_id=reply.pod_sandbox_id), timeout=120)
        if rpc.name == "CreateContainer" and reply is not None:
            self.ctx.container_ids.append(reply.container_id)
            extra = [c for c in self.ctx.container_ids if c not in self.keep]
            for old in extra[:-3]:
                runtime.RemoveContainer(api.RemoveContainerRequest(container_id=old),
                                        timeout=60)
                self.ctx.container_ids.remove(old)

    def run(self, examples: int, names: Iterable[str] | None = None) -> Outcome:
        chosen = [self.calls[n] for n in names] if names else list(self.calls.values())

        @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
                  suppress_health_check=list(HealthCheck), print_blob=False)
        @given(data=st.data())
        def one(data: st.DataObject) -> None:
            rpc = data.draw(st.sampled_from(chosen))
            base = valid(rpc.name, self.ctx)
            if not base.is_empty and data.draw(st.booleans()):
                # Mostly right, a little wrong: reaches the code past the checks.
                request = data.draw(base)
                request.MergeFrom(data.draw(message(rpc.request, self.ctx, density=6)))
            else:
                request = data.draw(message(rpc.request, self.ctx))
            self.send(rpc, request)

        one()
        return self.outcome


def _fill_in(msg: Any, fill: Callable[[str], str]) -> None:
    """Replace id placeholders in every string field of ``msg``, recursively."""
    for fd, value in msg.ListFields():
        if fd.type == pbd.FieldDescriptor.TYPE_STRING:
            if fd.is_repeated:
                getattr(msg, fd.name)[:] = [fill(v) for v in value]
            else:
                setattr(msg, fd.name, fill(value))
        elif fd.message_type is not None and not fd.message_type.GetOptions().map_entry:
            for item in (value if fd.is_repeated else [value]):
                _fill_in(item, fill)


def _local_only(reference: str) -> str:
    """Pulls go nowhere this machine cannot reach at once: hostile names stay
    (they fail to parse), anything that would be looked up on the network is
    sent to a closed local port instead."""
    if "/" in reference and "." in reference.split("/")[0] and "localhost" not in reference:
        return "localhost:1/" + reference.split("/", 1)[1]
    return reference


# -- what must not change on the host ------------------------------------------

WATCHED = ("/", "/etc", "/root", "/tmp", "/var/lib", "/run")


@dataclass
class HostSnapshot:
    """Names, sizes and times of the top level of each watched directory."""

    entries: dict[str, tuple[int, int, int]]

    @classmethod
    def take(cls) -> HostSnapshot:
        entries = {}
        for directory in WATCHED:
            for name in os.listdir(directory):
                path = os.path.join(directory, name)
                try:
                    info = os.lstat(path)
                except FileNotFoundError:
                    continue
                entries[path] = (info.st_mode, info.st_size, info.st_mtime_ns)
        return cls(entries)

    def changes(self, after: HostSnapshot, allowed: Iterable[str]) -> list[str]:
        allowed = [a.rstrip("/") for a in allowed]

        def permitted(path: str) -> bool:
            return any(path == a or path.startswith(a + "/") or a.startswith(path + "/")
                       for a in allowed)

        out = []
        for path in sorted(set(self.entries) | set(after.entries)):
            if self.entries.get(path) == after.entries.get(path) or permitted(path):
                continue
            if path.startswith("/tmp/") and path in self.entries and path in after.entries:
                continue  # every process on the node writes into /tmp's entries
            if path not in self.entries:
                out.append(f"created {path}")
            elif path not in after.entries:
                out.append(f"removed {path}")
            else:
                out.append(f"changed {path}")
        return out


def allowed_paths(daemon: Daemon, scratch: Path) -> list[str]:
    """vmrt's own storage and state, the requested log directories, and what
    CNI plugins keep: netns pins, IPAM leases, their iptables (not files)."""
    return [str(daemon.base), str(scratch), "/var/run/netns", "/run/netns", "/var/lib/cni",
            "/run/xtables.lock"]


def new_scratch() -> Path:
    path = Path("/tmp") / f"vmrt-fuzz-{secrets.token_hex(4)}"
    path.mkdir()
    return path
