"""Trim and compile the agent's Python for the guest image.

Run by the build with the *guest's* interpreter (Debian's python3.11,
started through the guest's own dynamic loader), so the bytecode matches the
interpreter that will load it. It:

1. imports the agent and serves one Health call over a real gRPC unix
   socket, which pulls in every module the agent needs at start-up;
2. adds the extra modules named on the command line (lazy imports);
3. writes each needed standard-library module, and all of grpc, protobuf
   and the agent, as sourceless unchecked-hash .pyc files into OUT.

Usage: pyprep.py OUT SITE_DIR AGENT_DIR EXTRA_MODULES_FILE
"""

import importlib
import json
import os
import py_compile
import shutil
import sys
import sysconfig
import tempfile

# 0: keep docstrings and asserts; -OO bytecode measured no faster to start.
OPTIMIZE = 0
GUEST_STDLIB = "/usr/lib/python3.11"
GUEST_SITE = "/usr/lib/python3/site-packages"
GUEST_AGENT = "/usr/lib/vmrt"
SKIP_DIRS = {"__pycache__", "tests", "test", "testing"}
# Imported only optionally (inside try/except ImportError) by modules the
# agent uses; leaving them out saves libssl, libcrypto, libbz2 and their
# import time under TCG.
DENY = {"ssl", "_ssl", "_hashlib", "bz2", "_bz2", "lzma", "_lzma"}


def exercise_agent():
    from concurrent import futures

    import grpc

    import vmrt.agent.__main__  # noqa: F401 - the import is the point
    from vmrt.agent.containers import ContainerManager
    from vmrt.agent.crun import Crun
    from vmrt.agent.events import EventBus
    from vmrt.agent.guest import Guest
    from vmrt.agent.proctable import ProcessTable
    from vmrt.agent.service import AgentService
    from vmrt.agent.v1 import agent_pb2, agent_pb2_grpc

    table = ProcessTable()
    events = EventBus()
    guest = Guest(table)
    service = AgentService(
        ContainerManager(table, Crun(table), events, guest.mount), guest, events, "serial",
        lambda: 0.0,
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "agent.sock")
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        agent_pb2_grpc.add_AgentServicer_to_server(service, server)
        server.add_insecure_port(f"unix:{path}")
        server.start()
        with grpc.insecure_channel(f"unix:{path}") as channel:
            reply = agent_pb2_grpc.AgentStub(channel).Health(agent_pb2.HealthRequest(), timeout=30)
        server.stop(None)
    if not reply.agent_version:
        raise SystemExit("pyprep: the agent's Health call returned no version")


def compile_to(src, dst, guest_path):
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    py_compile.compile(
        src, cfile=dst, dfile=guest_path, doraise=True, optimize=OPTIMIZE,
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )


def copy_tree(src_root, out_root, guest_root):
    """Every .py compiled, every extension module copied; tests and stubs dropped."""
    for dirpath, dirnames, filenames in os.walk(src_root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS
                             and not d.endswith(".dist-info"))
        rel = os.path.relpath(dirpath, src_root)
        for name in sorted(filenames):
            src = os.path.join(dirpath, name)
            rel_file = os.path.normpath(os.path.join(rel, name))
            if name.endswith(".py"):
                rel_pyc = rel_file[:-3] + ".pyc"
                compile_to(src, os.path.join(out_root, rel_pyc), os.path.join(guest_root, rel_file))
            elif name.endswith(".so"):
                dst = os.path.join(out_root, rel_file)
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                shutil.copy2(src, dst)


def main():
    out, site_dir, agent_dir, extras_file = sys.argv[1:5]
    sys.path[:0] = [agent_dir, site_dir]
    stdlib = sysconfig.get_paths()["stdlib"]
    exercise_agent()
    with open(extras_file) as f:
        extras = [line.split("#")[0].strip() for line in f]
    for name in filter(None, extras):
        importlib.import_module(name)

    kept = []
    for name, module in sorted(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if not path or not os.path.abspath(path).startswith(stdlib + os.sep):
            continue
        if name in DENY:
            continue
        rel = os.path.relpath(path, stdlib)
        if rel.endswith(".py"):
            compile_to(path, os.path.join(out, GUEST_STDLIB.lstrip("/"), rel[:-3] + ".pyc"),
                       os.path.join(GUEST_STDLIB, rel))
        else:
            dst = os.path.join(out, GUEST_STDLIB.lstrip("/"), rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy2(path, dst)
        kept.append(name)
    # getpath looks for this landmark to find the standard library.
    compile_to(os.path.join(stdlib, "os.py"),
               os.path.join(out, GUEST_STDLIB.lstrip("/"), "os.pyc"),
               os.path.join(GUEST_STDLIB, "os.py"))
    os.makedirs(os.path.join(out, GUEST_STDLIB.lstrip("/"), "lib-dynload"), exist_ok=True)

    for entry in sorted(os.listdir(site_dir)):
        src = os.path.join(site_dir, entry)
        if os.path.isdir(src) and not entry.endswith(".dist-info"):
            copy_tree(src, os.path.join(out, GUEST_SITE.lstrip("/"), entry),
                      os.path.join(GUEST_SITE, entry))
        elif entry.endswith(".py"):
            compile_to(src, os.path.join(out, GUEST_SITE.lstrip("/"), entry[:-3] + ".pyc"),
                       os.path.join(GUEST_SITE, entry))
    copy_tree(os.path.join(agent_dir, "vmrt"), os.path.join(out, GUEST_AGENT.lstrip("/"), "vmrt"),
              os.path.join(GUEST_AGENT, "vmrt"))
    json.dump({"python": sys.version.split()[0], "stdlib_modules": kept},
              sys.stdout, indent=1)


if __name__ == "__main__":
    main()
