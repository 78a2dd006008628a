"""ImageService: pulls through the registry client, everything else from the store."""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from cri_api.v1 import api_pb2 as api

from vmrt.cri.base import Base
from vmrt.errors import InvalidArgumentError, about
from vmrt.images.registry import Credentials
from vmrt.images.store import ImageRecord


def image_message(image: ImageRecord) -> api.Image:
    uid, username = None, ""
    user = image.user.split(":")[0]
    if user.isdigit():
        uid = api.Int64Value(value=int(user))
    elif user:
        username = user
    return api.Image(id=image.id, repo_tags=image.repo_tags, repo_digests=image.repo_digests,
                     size=image.size, uid=uid, username=username,
                     spec=api.ImageSpec(image=image.id))


class ImageRPCs(Base):
    async def ListImages(self, request: api.ListImagesRequest,
                         context: Any) -> api.ListImagesResponse:
        images = self.rt.images.images()
        if request.filter.image.image:
            with about("filter.image.image"):
                wanted = self.rt.images.find(request.filter.image.image)
            images = [wanted] if wanted else []
        return api.ListImagesResponse(images=[image_message(i) for i in images])

    async def ImageStatus(self, request: api.ImageStatusRequest,
                          context: Any) -> api.ImageStatusResponse:
        if not request.image.image:
            raise InvalidArgumentError("image.image: is required")
        with about("image.image"):
            image = self.rt.images.find(request.image.image)
        if image is None:
            # CRI: an image that is not present is an empty reply, not an error.
            return api.ImageStatusResponse()
        reply = api.ImageStatusResponse(image=image_message(image))
        if request.verbose:
            reply.info["info"] = json.dumps({
                "id": image.id, "config": image.config, "layers": image.layers,
                "layerDirs": [str(p) for p in self.rt.images.layer_dirs(image)],
                "created": image.created}, sort_keys=True)
        return reply

    async def PullImage(self, request: api.PullImageRequest,
                        context: Any) -> api.PullImageResponse:
        if not request.image.image:
            raise InvalidArgumentError("image.image: is required")
        auth = request.auth
        creds = Credentials.from_auth(auth.username, auth.password, auth.auth,
                                      auth.registry_token)
        with about("image.image"):
            image = await self.rt.images.pull(request.image.image, creds)
        return api.PullImageResponse(image_ref=image.id)

    async def RemoveImage(self, request: api.RemoveImageRequest,
                          context: Any) -> api.RemoveImageResponse:
        if not request.image.image:
            raise InvalidArgumentError("image.image: is required")
        # Removal deletes layer trees: off the event loop.
        with about("image.image"):
            await asyncio.to_thread(self.rt.images.remove, request.image.image,
                                    self.rt.layers_in_use())
        return api.RemoveImageResponse()

    async def ImageFsInfo(self, request: api.ImageFsInfoRequest,
                          context: Any) -> api.ImageFsInfoResponse:
        def usage(path: str) -> api.FilesystemUsage:
            used = inodes = 0
            if os.path.exists(path):
                info = os.statvfs(path)
                used = (info.f_blocks - info.f_bfree) * info.f_frsize
                inodes = info.f_files - info.f_ffree
            return api.FilesystemUsage(timestamp=time.time_ns(),
                                       fs_id=api.FilesystemIdentifier(mountpoint=path),
                                       used_bytes=api.UInt64Value(value=used),
                                       inodes_used=api.UInt64Value(value=inodes))

        return api.ImageFsInfoResponse(
            image_filesystems=[usage(str(self.rt.images.dir))],
            container_filesystems=[usage(str(self.rt.root / "containers"))])
