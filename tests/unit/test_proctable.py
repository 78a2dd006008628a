"""The agent's process table, run in a child interpreter.

The reaper calls waitpid(-1), which would steal the exit statuses of pytest's
own children, so each scenario runs in a fresh Python process.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def scenario(body: str) -> dict[str, object]:
    code = textwrap.dedent("""
        import json, os, time
        from vmrt.agent.proctable import ProcessTable
        table = ProcessTable()
        table.start()
        null = os.open(os.devnull, os.O_RDWR)
        result = {}
    """) + textwrap.dedent(body) + "\nprint(json.dumps(result))\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=True)
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_exit_codes_and_signals() -> None:
    result = scenario("""
        ok = table.spawn(["true"], stdin=null, stdout=null, stderr=null)
        seven = table.spawn(["sh", "-c", "exit 7"], stdin=null, stdout=null, stderr=null)
        killed = table.spawn(["sleep", "30"], stdin=null, stdout=null, stderr=null)
        os.kill(killed, 9)
        result["ok"] = table.wait(ok, 10).exit_code
        result["seven"] = table.wait(seven, 10).exit_code
        info = table.wait(killed, 10)
        result["killed"] = [info.exit_code, info.signal]
    """)
    assert result == {"ok": 0, "seven": 7, "killed": [137, 9]}


def test_status_of_an_orphan_waits_until_claimed() -> None:
    # The grandchild is re-parented to init, not to us; what we can test is a
    # child we did not spawn through the table (os.fork), reaped before
    # anyone claims it.
    result = scenario("""
        pid = os.fork()
        if pid == 0:
            os._exit(5)
        time.sleep(1.0)          # the reaper files it as unclaimed
        result["late_claim"] = table.wait(pid, 10).exit_code
    """)
    assert result == {"late_claim": 5}


def test_run_captures_output_and_times_out() -> None:
    result = scenario("""
        code, output = table.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
        result["run"] = [code, output.decode()]
        try:
            table.run(["sleep", "30"], timeout=0.5)
        except TimeoutError as exc:
            result["timeout"] = str(exc)
    """)
    assert result["run"] == [3, "out\nerr\n"]
    assert "did not finish" in str(result["timeout"])


def test_wait_times_out_without_losing_the_status() -> None:
    result = scenario("""
        pid = table.spawn(["sleep", "1"], stdin=null, stdout=null, stderr=null)
        result["first"] = table.wait(pid, 0.1) is None
        result["second"] = table.wait(pid, 10).exit_code
    """)
    assert result == {"first": True, "second": 0}
