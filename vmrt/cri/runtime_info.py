"""Version, Status, RuntimeConfig, UpdateRuntimeConfig."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from cri_api.v1 import api_pb2 as api

from vmrt import __version__
from vmrt.cri import validate
from vmrt.cri.base import Base
from vmrt.hypervisor.accel import choose_accel

CRI_VERSION = "v1"


# What every handler honours. SupplementalGroupsPolicy: Merge (the image's
# /etc/group) and Strict (the config's groups alone), the primary gid first.
FEATURES = api.RuntimeFeatures(supplemental_groups_policy=True)
# Recursive read-only mounts: the host makes every mount of the bind read-only
# (mount_setattr), the guest the 9p mount. User namespaces: a pod's own, its
# root filesystem id-mapped on the host (Share.mount_overlay).
HANDLER_FEATURES = api.RuntimeHandlerFeatures(recursive_read_only_mounts=True,
                                              user_namespaces=True)


class RuntimeInfoRPCs(Base):
    async def Version(self, request: api.VersionRequest, context: Any) -> api.VersionResponse:
        return api.VersionResponse(version="0.1.0", runtime_name="vmrt",
                                   runtime_version=__version__,
                                   runtime_api_version=CRI_VERSION)

    async def Status(self, request: api.StatusRequest, context: Any) -> api.StatusResponse:
        conditions = [api.RuntimeCondition(type="RuntimeReady", status=True),
                      self._network_condition()]
        handlers = [api.RuntimeHandler(name=name, features=HANDLER_FEATURES)
                    for name in ["", *sorted(self.rt.config.runtime_handlers)]]
        info = {}
        if request.verbose:
            hv = self.rt.config.hypervisor
            info["config"] = json.dumps({
                "guestImage": str(self.rt.guest_image.directory),
                "kernelRelease": self.rt.guest_image.kernel_release,
                "accel": choose_accel(hv.accel).name,
                "runtimeHandlers": sorted(self.rt.config.runtime_handlers),
            }, sort_keys=True)
            info["tenants"] = json.dumps(self.rt.tenants.describe(), sort_keys=True)
            # What is open right now: streaming sessions, tokens not yet
            # used, and the daemon's own tasks and threads (to spot leaks).
            info["streaming"] = json.dumps({
                "url": self.stream_server.base_url,
                "connections": self.stream_server.active,
                "pendingTokens": len(self.stream_server.tokens),
                "tasks": len(asyncio.all_tasks()),
                "threads": threading.active_count(),
            }, sort_keys=True)
        return api.StatusResponse(status=api.RuntimeStatus(conditions=conditions), info=info,
                                  runtime_handlers=handlers, features=FEATURES)

    def _network_condition(self) -> api.RuntimeCondition:
        problem = self.rt.cni.problem()
        if problem:
            return api.RuntimeCondition(type="NetworkReady", status=False,
                                        reason="NetworkPluginNotReady", message=problem)
        return api.RuntimeCondition(type="NetworkReady", status=True)

    async def RuntimeConfig(self, request: api.RuntimeConfigRequest,
                            context: Any) -> api.RuntimeConfigResponse:
        driver = api.SYSTEMD if self.rt.config.cgroups.driver == "systemd" else api.CGROUPFS
        return api.RuntimeConfigResponse(
            linux=api.LinuxRuntimeConfiguration(cgroup_driver=driver))

    async def UpdateRuntimeConfig(self, request: api.UpdateRuntimeConfigRequest,
                                  context: Any) -> api.UpdateRuntimeConfigResponse:
        cidr = request.runtime_config.network_config.pod_cidr
        validate.pod_cidrs(cidr, "runtime_config.network_config.pod_cidr")
        # Checked, and not kept: pods get their addresses from the CNI
        # network's own ranges (kubelet sends this for kubenet).
        return api.UpdateRuntimeConfigResponse()
