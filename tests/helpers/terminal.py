"""A child process on a real pseudo-terminal, for the CLI's ``-it`` tests."""

from __future__ import annotations

import os
import pty
import select
import signal
import time
from collections.abc import Mapping, Sequence
from types import TracebackType


class PtyChild:
    """``argv`` run with a pty as its controlling terminal; killed on exit if still alive."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child
            try:
                if env is None:
                    os.execv(argv[0], list(argv))
                os.execve(argv[0], list(argv), dict(env))
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.seen = b""
        self.pos = 0

    def until(self, wanted: bytes, timeout: float = 60) -> bytes:
        """Read until ``wanted`` appears after the previous match; returns the text up
        to and including it."""
        start = self.pos
        deadline = time.monotonic() + timeout
        while (found := self.seen.find(wanted, start)) < 0:
            assert time.monotonic() < deadline, f"never saw {wanted!r} in {self.seen[start:]!r}"
            ready, _, _ = select.select([self.fd], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:  # EIO: the child closed its terminal
                    chunk = b""
                assert chunk, f"the terminal closed before {wanted!r}; saw {self.seen[start:]!r}"
                self.seen += chunk
        self.pos = found + len(wanted)
        return self.seen[start:self.pos]

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def exit_code(self) -> int:
        _, status = os.waitpid(self.pid, 0)
        self.pid = 0
        return os.waitstatus_to_exitcode(status)

    def __enter__(self) -> PtyChild:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.pid:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.fd)
