"""crictl's pod and container config files: JSON or YAML, CRI field names.

crictl reads them with Go's JSON decoder into the CRI types, so a file
names fields as the .proto does (``log_directory``, ``security_context``)
and gives enums as numbers; protobuf's JSON mapping takes that, and its
camelCase names and enum names too. An unknown field is an error, as a
typo should be.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypeVar

import yaml
from google.protobuf.json_format import ParseDict, ParseError
from google.protobuf.message import Message

from vmrt.errors import InvalidArgumentError

M = TypeVar("M", bound=Message)

MAX_FILE = 1024 * 1024


def load(path: Path, message: type[M]) -> M:
    try:
        if path.stat().st_size > MAX_FILE:
            raise InvalidArgumentError(f"{path}: larger than {MAX_FILE // 1024} KiB")
        text = path.read_text()
    except OSError as exc:
        raise InvalidArgumentError(f"cannot read {path}: {exc.strerror}") from None
    try:
        # YAML, of which JSON is a part, unless the name says JSON.
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise InvalidArgumentError(f"{path}: not valid {kind}: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidArgumentError(f"{path}: expected a mapping of "
                                   f"{message.DESCRIPTOR.name} fields")
    try:
        return ParseDict(data, message())
    except ParseError as exc:
        raise InvalidArgumentError(f"{path}: {exc}") from None
