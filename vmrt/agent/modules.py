"""Kernel modules each guest feature needs, in load order (dependencies
first). Shared by the agent, which loads a group when a feature needs it,
and the host, which has init load some at boot (vmrt.boot_modules)."""

MODULE_GROUPS: dict[str, tuple[str, ...]] = {
    "9p": ("netfs", "fscache", "9pnet", "9pnet_virtio", "9p"),
    "overlay": ("overlay",),
    "net": ("failover", "net_failover", "virtio_net"),
}
