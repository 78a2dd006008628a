"""Listing filters applied to remembered objects, and merged image lists."""

from __future__ import annotations

from typing import Any

from cri_api.v1 import api_pb2 as api


def _labels_match(labels: Any, selector: Any) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def pod_matches(pod: api.PodSandbox, flt: api.PodSandboxFilter) -> bool:
    """CRI's PodSandboxFilter, as a runtime applies it to its own pods."""
    return ((not flt.id or pod.id.startswith(flt.id))
            and (not flt.HasField("state") or pod.state == flt.state.state)
            and _labels_match(pod.labels, flt.label_selector))


def container_matches(container: api.Container, flt: api.ContainerFilter) -> bool:
    return ((not flt.id or container.id.startswith(flt.id))
            and (not flt.pod_sandbox_id or container.pod_sandbox_id.startswith(flt.pod_sandbox_id))
            and (not flt.HasField("state") or container.state == flt.state.state)
            and _labels_match(container.labels, flt.label_selector))


def merge_images(into: Any, more: Any) -> None:
    """One entry per image id: the same image in two stores is listed once,
    with every tag and digest either store knows it by."""
    by_id = {image.id: image for image in into}
    for image in more:
        mine = by_id.get(image.id)
        if mine is None:
            into.append(image)
            by_id[image.id] = into[-1]
            continue
        mine.repo_tags.extend(t for t in image.repo_tags if t not in mine.repo_tags)
        mine.repo_digests.extend(d for d in image.repo_digests if d not in mine.repo_digests)
