"""PullImage and the rest of the ImageService against a real docker-registry."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as api

from tests.cri.conftest import Daemon, expect_error
from tests.images.conftest import PASSWORD, USER, Images

pytestmark = pytest.mark.vm


def pull(daemon: Daemon, image: str, **auth: str) -> str:
    return daemon.images.PullImage(api.PullImageRequest(
        image=api.ImageSpec(image=image), auth=api.AuthConfig(**auth)), timeout=120).image_ref


def status(daemon: Daemon, image: str) -> api.Image:
    return daemon.images.ImageStatus(api.ImageStatusRequest(
        image=api.ImageSpec(image=image))).image


def listed(daemon: Daemon) -> dict[str, list[str]]:
    return {i.id: list(i.repo_tags)
            for i in daemon.images.ListImages(api.ListImagesRequest()).images}


def test_pull_by_tag_and_status_by_tag_digest_and_id(puller: Daemon, images: Images) -> None:
    name = f"{images.registry.address}/test/app:1"
    image_id = pull(puller, name)
    assert image_id.startswith("sha256:")
    assert listed(puller)[image_id] == [name]
    by_tag = status(puller, name)
    assert by_tag.id == image_id
    assert by_tag.username == "app"
    repo_digest = f"{images.registry.address}/test/app@{images.digests['test/app:1']}"
    assert list(by_tag.repo_digests) == [repo_digest]
    assert status(puller, repo_digest).id == image_id
    assert status(puller, image_id).id == image_id
    assert status(puller, image_id.removeprefix("sha256:")[:16]).id == image_id
    assert not status(puller, "never/pulled:1").id


def test_pull_by_digest(puller: Daemon, images: Images) -> None:
    digest = images.digests["test/tags:a"]
    name = f"{images.registry.address}/test/tags@{digest}"
    image_id = pull(puller, name)
    assert status(puller, name).id == image_id
    assert f"{images.registry.address}/test/tags@{digest}" in status(puller, image_id).repo_digests


def test_pull_through_a_mirror_keeps_the_original_name(puller: Daemon) -> None:
    image_id = pull(puller, "registry.invalid/test/app:1")
    assert "registry.invalid/test/app:1" in listed(puller)[image_id]


def test_index_picks_linux_amd64(puller: Daemon, images: Images, tmp_path: Path) -> None:
    image_id = pull(puller, f"{images.registry.address}/test/multi:1")
    info = puller.images.ImageStatus(api.ImageStatusRequest(
        image=api.ImageSpec(image=image_id), verbose=True)).info["info"]
    import json

    layer_dirs = [Path(p) for p in json.loads(info)["layerDirs"]]
    assert (layer_dirs[0] / "arch.txt").read_text() == "amd64\n"


def test_basic_auth_right_and_wrong(puller: Daemon, images: Images) -> None:
    name = f"{images.secure.address}/secure/app:1"
    details = expect_error(grpc.StatusCode.UNAUTHENTICATED, pull, puller, name)
    assert "credentials" in details
    expect_error(grpc.StatusCode.UNAUTHENTICATED, pull, puller, name,
                 username=USER, password="wrong")
    assert pull(puller, name, username=USER, password=PASSWORD).startswith("sha256:")
    import base64

    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert pull(puller, name, auth=token)


def test_bearer_token_challenge(puller: Daemon, images: Images) -> None:
    name = f"{images.gate.address}/test/app:1"
    details = expect_error(grpc.StatusCode.UNAUTHENTICATED, pull, puller, name,
                           username=USER, password="wrong")
    assert "token service refused" in details
    before = images.gate.token_requests
    assert pull(puller, name, username=USER, password=PASSWORD).startswith("sha256:")
    assert images.gate.token_requests > before


def _layer_digest(images: Images, repo: str, tag: str) -> str:
    import httpx

    manifest = httpx.get(f"http://{images.registry.address}/v2/{repo}/manifests/{tag}",
                         headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}).json()
    return str(manifest["layers"][0]["digest"])


def test_concurrent_pulls_share_one_download(puller: Daemon, images: Images) -> None:
    name = f"{images.registry.address}/test/concurrent:1"
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(pull(puller, name)))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(results) == 3 and len(set(results)) == 1
    layer = _layer_digest(images, "test/concurrent", "1")
    assert images.registry.blob_fetches(layer) == 1


def test_corrupt_blob_is_refused_and_nothing_is_listed(puller: Daemon, images: Images) -> None:
    layer = _layer_digest(images, "test/corrupt", "1").removeprefix("sha256:")
    blob = (images.registry.base / "data/docker/registry/v2/blobs/sha256" / layer[:2] / layer
            / "data")
    data = bytearray(blob.read_bytes())
    data[-20] ^= 0xFF
    blob.write_bytes(bytes(data))
    name = f"{images.registry.address}/test/corrupt:1"
    details = expect_error(grpc.StatusCode.INTERNAL, pull, puller, name)
    assert "does not match its digest" in details
    assert not status(puller, name).id
    leftovers = [p.name for p in (puller.root / "images").rglob("*") if ".partial" in p.name]
    assert not leftovers


def test_pull_interrupted_by_a_crash_leaves_no_half_image(own_vmrtd: Daemon,
                                                         images: Images) -> None:
    import signal
    import time

    name = f"{images.registry.address}/test/interrupted:1"
    own_vmrtd.config.write_text(own_vmrtd.config.read_text() + (
        f'[registry.mirrors."{images.registry.address}"]\n'
        f'endpoints = ["http://{images.registry.address}"]\n'))
    own_vmrtd.restart()
    outcome: list[object] = []

    def attempt() -> None:
        try:
            outcome.append(pull(own_vmrtd, name))
        except grpc.RpcError as exc:
            outcome.append(exc.code())

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    images_dir = own_vmrtd.root / "images"
    deadline = time.monotonic() + 30
    while not any(".partial" in p.name for p in images_dir.rglob("*")):
        assert time.monotonic() < deadline, "the pull never got going"
        time.sleep(0.002)
    # Killed, and the caller sees it, before the test's channel is closed
    # (closing it first would turn the outcome into CANCELLED).
    assert own_vmrtd.proc is not None
    own_vmrtd.proc.send_signal(signal.SIGKILL)
    own_vmrtd.proc.wait(30)
    thread.join(30)
    own_vmrtd.stop()
    assert outcome == [grpc.StatusCode.UNAVAILABLE], "the daemon died mid-pull"
    own_vmrtd.start()
    assert not status(own_vmrtd, name).id
    assert not [p for p in (own_vmrtd.root / "images").rglob("*") if ".partial" in p.name]
    assert pull(own_vmrtd, name).startswith("sha256:")


def test_removal_semantics(puller: Daemon, images: Images) -> None:
    a = f"{images.registry.address}/test/tags:a"
    b = f"{images.registry.address}/test/tags:b"
    image_id = pull(puller, a)
    assert pull(puller, b) == image_id
    assert sorted(listed(puller)[image_id]) == sorted([a, b])
    puller.images.RemoveImage(api.RemoveImageRequest(image=api.ImageSpec(image=a)))
    assert listed(puller)[image_id] == [b]
    puller.images.RemoveImage(api.RemoveImageRequest(image=api.ImageSpec(image=a)))  # again
    # With its last tag the image goes (containerd's rule), no digest-only <none> entry.
    puller.images.RemoveImage(api.RemoveImageRequest(image=api.ImageSpec(image=b)))
    assert image_id not in listed(puller)
    assert pull(puller, a) == image_id and pull(puller, b) == image_id
    puller.images.RemoveImage(api.RemoveImageRequest(image=api.ImageSpec(image=image_id)))
    assert image_id not in listed(puller)
    assert not status(puller, b).id
    puller.images.RemoveImage(api.RemoveImageRequest(image=api.ImageSpec(image=image_id)))
    layers = puller.root / "images" / "layers"
    assert not [p for p in layers.iterdir() if (p / "tagged.txt").exists()]


@pytest.mark.parametrize("name, message", [
    ("evil/traversal:1", "climbs out with '..'"),
    ("evil/absolute:1", "absolute path"),
    ("evil/symlink:1", "goes through a symlink"),
    ("evil/device:1", "device node"),
])
def test_hostile_layers_are_rejected(puller: Daemon, images: Images, name: str,
                                     message: str) -> None:
    details = expect_error(grpc.StatusCode.INVALID_ARGUMENT, pull, puller,
                           f"{images.registry.address}/{name}")
    assert message in details
    assert sorted(p.name for p in images.canary.iterdir()) == ["untouched.txt"]
    assert (images.canary / "untouched.txt").read_text() == "still here\n"
    assert not (images.registry.base.parent / "escape.txt").exists()
    layers = puller.root / "images" / "layers"
    assert not [p for p in layers.iterdir() if p.name.endswith(".partial")]
    assert f"{images.registry.address}/{name}" not in {
        t for tags in listed(puller).values() for t in tags}


def test_bad_references_and_missing_images(puller: Daemon, images: Images) -> None:
    expect_error(grpc.StatusCode.INVALID_ARGUMENT, pull, puller, "UPPER/case:1")
    details = expect_error(grpc.StatusCode.NOT_FOUND, pull, puller,
                           f"{images.registry.address}/test/app:nope")
    assert "not found" in details
    expect_error(grpc.StatusCode.UNAVAILABLE, pull, puller, "unreachable.invalid/x:1")


def test_container_from_a_pulled_image_sees_its_files_env_workdir_and_user(
        puller: Daemon, images: Images) -> None:
    name = f"{images.registry.address}/test/app:1"
    pull(puller, name)
    config = puller.pod_config()
    pod_id = puller.run_pod(config)
    container = puller.create(pod_id, config, ["sleep", "300"], image=name)
    puller.runtime.StartContainer(api.StartContainerRequest(container_id=container))
    reply = puller.exec(container, [
        "sh", "-c", "cat hello.txt; echo $GREETING; pwd; id -u; cat /etc/motd 2>&1; "
                    "ls /app; ls -l /app/setuid | cut -c1-10; cat /etc/passwd | wc -l"])
    lines = reply.stdout.decode().splitlines()
    assert lines[:4] == ["hello from the image", "hello", "/app", "1000"]
    # The top layer's opaque /etc hid the zstd layer's motd; its whiteout hid data-link.
    assert "No such file" in lines[4]
    assert lines[5:7] == ["data", "hello.txt"] and "data-link" not in lines
    assert lines[-2] == "-rwsr-xr-x"
    assert lines[-1] == "2"
    assert status(puller, name).id in {c.image_ref for c in puller.runtime.ListContainers(
        api.ListContainersRequest()).containers}
    puller.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


def test_image_volumes_read_only_with_a_sub_path(puller: Daemon, images: Images) -> None:
    """KEP-4639: a Mount whose image is set is that image's root filesystem, read-only."""
    app, linked = (f"{images.registry.address}/test/{n}:1" for n in ("app", "linked"))
    pull(puller, app)
    pull(puller, linked)
    config = puller.pod_config()
    pod_id = puller.run_pod(config)
    try:
        def volume(image: str, sub_path: str = "", path: str = "/vol") -> api.Mount:
            return api.Mount(container_path=path, readonly=True, image=api.ImageSpec(image=image),
                             image_sub_path=sub_path)

        container = puller.run_container(pod_id, config, ["sleep", "300"], mounts=[
            volume(app), volume(linked, "data", "/data")])
        # Three layers merged (whiteouts too), binaries runnable, nothing writable.
        reply = puller.exec(container, [
            "sh", "-c", "cat /vol/app/hello.txt; ls /vol/app; /vol/bin/echo ran; "
                        "cat /data/x.txt; touch /vol/new 2>&1; touch /data/new 2>&1; true"])
        lines = reply.stdout.decode().splitlines()
        assert lines[:6] == ["hello from the image", "data", "hello.txt", "setuid", "ran",
                             "in the volume"]  # data-link: whited out by the top layer
        assert len(lines) == 8 and all("Read-only file system" in x for x in lines[6:]), lines
        # A sub path the image lacks, or one through the image's symlink, is refused.
        for sub_path in ("missing", "up", "up/etc"):
            details = expect_error(grpc.StatusCode.NOT_FOUND, puller.create, pod_id, config,
                                   ["true"], name=f"bad-{sub_path.replace('/', '-')}",
                                   mounts=[volume(linked, sub_path)])
            assert "image_sub_path" in details, details
        details = expect_error(grpc.StatusCode.INVALID_ARGUMENT, puller.create, pod_id, config,
                               ["true"], name="writable", mounts=[api.Mount(
                                   container_path="/vol", image=api.ImageSpec(image=app))])
        assert details.startswith("config.mounts[0].readonly:"), details
        # The volume's image is in use: removing it keeps its layers for the container.
        puller.images.RemoveImage(api.RemoveImageRequest(image=api.ImageSpec(image=linked)))
        assert puller.exec(container, ["cat", "/data/x.txt"]).stdout == b"in the volume\n"
    finally:
        puller.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


def test_deadline_is_honoured_and_the_image_arrives_whole(puller: Daemon, images: Images) -> None:
    import time

    name = f"{images.registry.address}/test/deadline:1"
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        puller.images.PullImage(api.PullImageRequest(image=api.ImageSpec(image=name)),
                                timeout=0.05)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 5
    # The download goes on for whoever asks next, and is listed only when whole.
    assert pull(puller, name).startswith("sha256:")


def test_list_filter_and_fs_info(puller: Daemon, images: Images) -> None:
    name = f"{images.registry.address}/test/app:1"
    image_id = pull(puller, name)
    filtered = puller.images.ListImages(api.ListImagesRequest(
        filter=api.ImageFilter(image=api.ImageSpec(image=name)))).images
    assert [i.id for i in filtered] == [image_id]
    assert not puller.images.ListImages(api.ListImagesRequest(
        filter=api.ImageFilter(image=api.ImageSpec(image="no/such:1")))).images
    info = puller.images.ImageFsInfo(api.ImageFsInfoRequest())
    assert info.image_filesystems[0].used_bytes.value > 0
    assert info.image_filesystems[0].fs_id.mountpoint.endswith("/images")


def test_entrypoint_and_cmd_merge_with_the_container_config(puller: Daemon,
                                                            images: Images) -> None:
    import time

    name = f"{images.registry.address}/test/entry:1"
    pull(puller, name)
    config = puller.pod_config()
    pod_id = puller.run_pod(config)
    cases = {"image": ([], [], "entry default-arg"),
             "args": ([], ["custom"], "entry custom"),
             "command": (["/bin/echo"], ["cmd"], "cmd")}
    containers = {}
    for key, (command, args, _) in cases.items():
        container = puller.create(pod_id, config, command, name=key, image=name, args=args)
        puller.runtime.StartContainer(api.StartContainerRequest(container_id=container))
        containers[key] = container
    for key, (_, _, expected) in cases.items():
        status = puller.wait_exited(containers[key])
        assert status.exit_code == 0, status
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            text = Path(status.log_path).read_text() if Path(status.log_path).exists() else ""
            if expected in text:
                break
            time.sleep(0.1)
        assert f"stdout F {expected}\n" in Path(status.log_path).read_text()
    puller.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
