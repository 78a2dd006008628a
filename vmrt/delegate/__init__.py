"""Delegating handlers: pods a VM cannot run (the node's own namespaces, or a
RuntimeClass for trusted workloads) run by another CRI runtime behind vmrt's
one socket, as Frakti's mixed runtimes did."""
