"""Tenants: the tenant a CRI namespace belongs to, and the limits of each.

A tenant is a set of namespaces: the one of its own name, and those its
``[tenants.NAME]`` block lists. Membership comes from the pod's namespace,
which every pod has, never from a label a caller may leave out.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from vmrt.config import NAMESPACE_NAME, TenantConfig
from vmrt.errors import InvalidArgumentError, ResourceExhaustedError
from vmrt.runtime.records import PodRecord, PodState


def check_name(name: str, where: str) -> str:
    if not NAMESPACE_NAME.fullmatch(name):
        raise InvalidArgumentError(f"{where}: {name[:80]!r} is not a tenant name (a namespace "
                                   "name: lower-case letters, digits and '-', at most 63)")
    return name


class Tenants:
    def __init__(self, config: dict[str, TenantConfig]) -> None:
        self._config = config
        self._owner = {namespace: name for name, tenant in config.items()
                       for namespace in (name, *tenant.namespaces)}

    def of(self, namespace: str) -> str:
        return self._owner.get(namespace, namespace)

    def network_of(self, namespace: str) -> str:
        """The CNI network of the namespace's tenant; "" for the node's default."""
        config = self._config.get(self.of(namespace))
        return config.cni_network if config is not None else ""

    def namespaces(self, tenant: str) -> list[str]:
        """The tenant's namespaces; the first is where its new pods go."""
        config = self._config.get(tenant)
        if config is None:
            return [tenant]
        return list(dict.fromkeys([*config.namespaces, tenant]))

    def primary(self, tenant: str) -> str:
        return self.namespaces(tenant)[0]

    def describe(self) -> dict[str, Any]:
        """The configured tenants, as Status(verbose) shows them."""
        return {name: {"namespaces": self.namespaces(name), "maxPods": tenant.max_pods,
                       "maxMemoryMiB": tenant.max_memory_mib, "cniNetwork": tenant.cni_network}
                for name, tenant in sorted(self._config.items())}

    def admit(self, pods: Iterable[PodRecord], namespace: str, memory_mib: int) -> None:
        """Refuse a pod its tenant's limits cannot hold (RESOURCE_EXHAUSTED).
        The limits count running pods (starting or ready) at their VMs' full size."""
        tenant = self.of(namespace)
        limits = self._config.get(tenant)
        if limits is None:
            return
        running = [p for p in pods if p.state in (PodState.STARTING, PodState.READY)
                   and self.of(p.namespace) == tenant]
        if limits.max_pods and len(running) >= limits.max_pods:
            raise ResourceExhaustedError(
                f"tenant {tenant!r} already runs {len(running)} pods, its limit "
                f"(tenants.{tenant}.max_pods = {limits.max_pods})")
        used = sum(p.vm.settings.memory_mib for p in running if p.vm is not None)
        if limits.max_memory_mib and used + memory_mib > limits.max_memory_mib:
            raise ResourceExhaustedError(
                f"tenant {tenant!r} cannot have another VM of {memory_mib} MiB: its pods' VMs "
                f"take {used} MiB of its {limits.max_memory_mib} MiB "
                f"(tenants.{tenant}.max_memory_mib)")
