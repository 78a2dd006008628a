"""The committed generated code is what the committed .proto generates."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GENERATED = ("agent_pb2.py", "agent_pb2.pyi", "agent_pb2_grpc.py")


def test_regenerating_the_agent_stubs_changes_nothing(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{REPO / 'proto'}",
         f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}",
         str(REPO / "proto/vmrt/agent/v1/agent.proto")],
        check=True,
    )
    for name in GENERATED:
        fresh = (tmp_path / "vmrt/agent/v1" / name).read_text()
        committed = (REPO / "vmrt/agent/v1" / name).read_text()
        assert fresh == committed, f"vmrt/agent/v1/{name} is stale: run 'make proto'"
