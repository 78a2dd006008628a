"""A container's stop signal: the CRI config's, else the image's ``StopSignal``,
else SIGTERM; as a Linux signal number and as the CRI ``Signal`` enum."""

from __future__ import annotations

import re
import signal as signals

from cri_api.v1 import api_pb2 as api

_RT_MIN, _RT_MAX = int(signals.SIGRTMIN), int(signals.SIGRTMAX)
_RT = re.compile(r"RTM(IN|AX)(?:([+-])(\d+))?")
_CRI_RT = re.compile(r"SIGRTM(IN|AX)(?:(PLUS|MINUS)(\d+))?")


def number(name: str) -> int:
    """``SIGTERM``, ``TERM``, ``15``, ``SIGRTMIN+3``, ``RTMAX-1`` -> the signal number;
    0 when it names no signal."""
    name = name.strip().upper()
    if name.isdigit():
        value = int(name)
        return value if 0 < value <= _RT_MAX else 0
    name = name.removeprefix("SIG")
    rt = _RT.fullmatch(name)
    if rt:
        base = _RT_MIN if rt.group(1) == "IN" else _RT_MAX
        offset = int(rt.group(3) or 0) * (-1 if rt.group(2) == "-" else 1)
        value = base + offset
        return value if _RT_MIN <= value <= _RT_MAX else 0
    found = getattr(signals, f"SIG{name}", None)
    return int(found) if isinstance(found, signals.Signals) else 0


def of(config: api.ContainerConfig, image_config: dict[str, object]) -> int:
    if config.stop_signal:
        cri = _CRI_RT.fullmatch(api.Signal.Name(config.stop_signal))
        if cri:
            sign = {"PLUS": "+", "MINUS": "-"}.get(cri.group(2) or "", "")
            return number(f"RTM{cri.group(1)}{sign}{cri.group(3) or ''}")
        return number(api.Signal.Name(config.stop_signal)) or int(signals.SIGTERM)
    return number(str(image_config.get("StopSignal") or "")) or int(signals.SIGTERM)


def to_cri(value: int) -> int:
    """The CRI enum for a signal number (RUNTIME_DEFAULT for none)."""
    if _RT_MIN <= value <= _RT_MAX:
        if value == _RT_MIN:
            return int(api.SIGRTMIN)
        if value == _RT_MAX:
            return int(api.SIGRTMAX)
        if value - _RT_MIN <= 15:
            return int(api.Signal.Value(f"SIGRTMINPLUS{value - _RT_MIN}"))
        return int(api.Signal.Value(f"SIGRTMAXMINUS{_RT_MAX - value}"))
    try:
        return int(api.Signal.Value(signals.Signals(value).name))
    except ValueError:
        return int(api.RUNTIME_DEFAULT)
