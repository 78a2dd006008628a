#!/usr/bin/env python3
"""Which capabilities QEMU's 9p server needs: file operations that a
container's root does on its own root filesystem, run with QEMU's default
capability set, then with each capability of it taken away, then with
others added (DAC_READ_SEARCH and SETFCAP, which measured as not needed;
MKNOD and SYS_ADMIN, which the default leaves out on purpose).

Each variant is a runtime handler of one vmrtd whose ``qemu_capabilities``
differ; each gets one pod and one privileged container that shares the
VM's pid namespace (so it can also reach the share as the agent does).
Writes JSON: for every variant, the operations that failed.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cri_api.v1 import api_pb2 as api

from bench import common
from vmrt.hypervisor.confine import DEFAULT_CAPABILITIES


def _in_share(python: str) -> list[str]:
    """``python`` run by the guest's own python3 in the agent's mount namespace,
    with ``p`` the file /t/c of the container's root filesystem in the share."""
    find = ("import os, struct; s = '/run/vmrt/share'; "
            "p = [f'{s}/{c}/rootfs/t/c' for c in os.listdir(s) "
            "if os.path.exists(f'{s}/{c}/rootfs/t/c')][0]; ")
    return ["nsenter", "-t", "1", "-m", "--", "python3", "-c", find + python]


# name -> shell; run as root in the container, on its 9p root filesystem,
# after SETUP. Each prints nothing on success.
SETUP = ("mkdir -p /t && cd /t && touch a b c && chown 1000:1000 a b && chmod 0600 a && "
         "mkdir d && chown 1000:1000 d && chmod 0700 d")
OPERATIONS: dict[str, str | list[str]] = {
    "chown": "cd /t && touch o && chown 1234:1234 o",
    "write another user's 0600 file": "cd /t && echo x >> a",
    "create in another user's 0700 directory": "cd /t && touch d/f",
    "list another user's 0700 directory": "cd /t && ls d > /dev/null",
    "chmod another user's file": "cd /t && chmod 0640 a",
    "set times of another user's file": "cd /t && touch -d '2020-01-01 00:00' a",
    "setgid on a file of another group": "cd /t && chmod 2755 b && "
                                         "[ \"$(stat -c %a b)\" = 2755 ]",
    "setuid on own file": "cd /t && chmod 4755 c && [ \"$(stat -c %a c)\" = 4755 ]",
    "mkfifo": "cd /t && mkfifo p",
    "mknod a character device": "cd /t && mknod n c 1 3",
    # Through the agent's mount namespace: the share, with the guest's python.
    "set security.capability (file capabilities)": _in_share(
        "os.setxattr(p, 'security.capability', "
        "struct.pack('<IIIII', 0x02000001, 1 << 13, 0, 0, 0))"),
    "set a trusted.* xattr (overlay's namespace)": _in_share(
        "os.setxattr(p, 'trusted.vmrt', b'1')"),
}


def variants() -> dict[str, list[str]]:
    out = {"default": list(DEFAULT_CAPABILITIES)}
    for cap in DEFAULT_CAPABILITIES:
        out[f"without {cap}"] = [c for c in DEFAULT_CAPABILITIES if c != cap]
    for extra in ("DAC_READ_SEARCH", "SETFCAP", "MKNOD"):
        out[f"plus {extra}"] = [*DEFAULT_CAPABILITIES, extra]
    out["plus SYS_ADMIN"] = [*DEFAULT_CAPABILITIES, "SYS_ADMIN"]
    return out


def main() -> int:
    parser = common.parser(__doc__, "qemu_caps.json")
    args = parser.parse_args()
    image = common.guest_image(args.root)
    sets = variants()
    handlers = "".join(
        f"[runtime_handlers.v{index}]\nqemu_capabilities = {json.dumps(caps)}\n"
        for index, caps in enumerate(sets.values()))
    results: dict[str, object] = {"default_capabilities": list(DEFAULT_CAPABILITIES)}
    failures: dict[str, dict[str, str]] = {}
    started = time.monotonic()
    with common.vmrtd(image, extra_config=handlers) as daemon:
        for index, name in enumerate(sets):
            config = daemon.pod_config()
            pod_id = daemon.run_pod(config, handler=f"v{index}")
            container = daemon.run_container(
                pod_id, config, ["sleep", "600"], linux=api.LinuxContainerConfig(
                    security_context=api.LinuxContainerSecurityContext(
                        privileged=True, namespace_options=api.NamespaceOption(pid=api.NODE))))
            setup = daemon.exec(container, ["sh", "-c", SETUP])
            failed = {}
            if setup.exit_code != 0:
                failed["set-up (chown to another user)"] = setup.stderr.decode().strip()[-200:]
            for operation, script in OPERATIONS.items():
                argv = ["sh", "-c", script] if isinstance(script, str) else script
                reply = daemon.exec(container, argv)
                if reply.exit_code != 0:
                    failed[operation] = (reply.stderr or reply.stdout).decode().strip()[-200:]
            failures[name] = failed
            print(f"{name}: {len(failed)} failed: {json.dumps(failed, indent=1)}", file=sys.stderr)
            daemon.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    results["failures"] = failures
    results["needed"] = sorted(
        cap for cap in DEFAULT_CAPABILITIES
        if set(failures[f"without {cap}"]) - set(failures["default"]))
    results["seconds"] = round(time.monotonic() - started, 1)
    return common.write_result(args.output, results)


if __name__ == "__main__":
    sys.exit(main())
