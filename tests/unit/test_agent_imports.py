"""The agent ships alone in the guest: it may import only the stdlib, grpc,
protobuf and itself."""

import ast
import sys
from pathlib import Path

AGENT = Path(__file__).resolve().parents[2] / "vmrt" / "agent"
ALLOWED_THIRD_PARTY = {"grpc", "google"}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_agent_imports_nothing_from_the_host_side() -> None:
    offenders = []
    for path in sorted(AGENT.rglob("*.py")):
        for name in imported_roots(path):
            root = name.split(".")[0]
            if name.startswith("vmrt.agent") or name == "vmrt":
                continue
            if root in sys.stdlib_module_names or root in ALLOWED_THIRD_PARTY:
                continue
            offenders.append(f"{path.relative_to(AGENT.parents[1])}: {name}")
    assert not offenders, "the agent imports host-side or third-party code:\n" + "\n".join(
        offenders)


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from vmrt.hypervisor import qemu\nimport qemu.qmp\n")
    assert {"vmrt.hypervisor", "qemu.qmp"} <= imported_roots(bad)
