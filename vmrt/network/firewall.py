"""The node's loopback is the node's: no pod reaches 127.0.0.0/8 on the host.

Packets with a loopback destination are dropped as martians when they
arrive on a normal interface, unless ``route_localnet`` is set on it, and
the portmap plugin sets it on the pods' bridge (or ptp veth) so that
``127.0.0.1:HOSTPORT`` reaches a pod. From then on a guest that owns its
kernel can route 127.0.0.0/8 to its gateway and talk to every service the
node keeps on loopback (vmrtd's streaming server, kubelet's healthz...):
CVE-2020-8558. kube-proxy's answer, installed here too: drop anything for
127.0.0.0/8 that did not come in on ``lo`` and was not DNATed there by
portmap itself.
"""

from __future__ import annotations

import asyncio
import logging

from vmrt.errors import VmrtError

log = logging.getLogger(__name__)

RULE = ["INPUT", "!", "-i", "lo", "-d", "127.0.0.0/8", "-m", "conntrack", "!", "--ctstate",
        "RELATED,ESTABLISHED,DNAT", "-m", "comment", "--comment",
        "vmrt: pods must not reach the node's loopback", "-j", "DROP"]


class FirewallError(VmrtError):
    pass


async def _iptables(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "iptables", "-w", "5", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace").strip()


async def protect_node_loopback() -> None:
    """Install the rule once (idempotent: checked first)."""
    code, _ = await _iptables("-C", *RULE)
    if code == 0:
        return
    code, out = await _iptables("-I", *RULE)
    if code != 0:
        raise FirewallError(f"cannot protect the node's loopback from pods: iptables: {out}")
    log.info("installed the rule that keeps pods off the node's loopback")
