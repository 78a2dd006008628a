"""One holder per CRI name, as containerd's registrar keeps them.

kubelet may retry a RunPodSandbox or CreateContainer whose first attempt is
still running; the name (metadata plus attempt) is reserved for the first,
and the retry is ALREADY_EXISTS until the holder is removed.
"""

from __future__ import annotations

from vmrt.errors import AlreadyExistsError


class NameIndex:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._holders: dict[str, str] = {}

    def reserve(self, name: str, holder: str) -> None:
        current = self._holders.get(name)
        if current is not None and current != holder:
            raise AlreadyExistsError(f"{self.kind} name {name} is already in use by {current}")
        self._holders[name] = holder

    def release(self, name: str, holder: str) -> None:
        """Free ``name`` if ``holder`` has it (a late release never frees a successor's)."""
        if self._holders.get(name) == holder:
            del self._holders[name]

    def holder(self, name: str) -> str | None:
        return self._holders.get(name)

    def __len__(self) -> int:
        return len(self._holders)
