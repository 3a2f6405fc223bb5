"""Pure parsers of remote output. Each takes text and returns plain data; tested on recorded output."""

from __future__ import annotations

import re


def sections(text: str) -> dict[str, dict[str, str]]:
    """`[name]` headers followed by key=value lines -> {name: {key: value}}. Other lines are ignored."""
    result: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for raw in text.splitlines():
        line = raw.rstrip("\r")
        header = re.fullmatch(r"\[([A-Za-z0-9_-]+)\]", line.strip())
        if header:
            current = result.setdefault(header.group(1), {})
        elif current is not None and "=" in line:
            key, _, value = line.partition("=")
            current[key.strip()] = value.strip()
    return result


def dist_info_version(path: str) -> str | None:
    """`.../label_studio-1.23.2.dist-info` -> `1.23.2`."""
    match = re.search(r"label_studio-([^/]+?)\.dist-info/?$", path or "")
    return match.group(1) if match else None


def df_avail(value: str) -> tuple[int | None, str]:
    """`12345678 /var` (df -B1 --output=avail,target) -> (bytes, mount point)."""
    parts = (value or "").split(None, 1)
    if len(parts) == 2 and parts[0].isdigit():
        return int(parts[0]), parts[1]
    return None, ""


def health(value: str | None) -> tuple[int, str]:
    """`200 {"status": "UP"}` -> (200, body). Missing or garbled -> (0, text)."""
    if not value:
        return 0, ""
    code, _, body = value.partition(" ")
    return (int(code), body.strip()) if code.isdigit() else (0, value)


def health_is_up(value: str | None) -> bool:
    code, body = health(value)
    return code == 200 and re.search(r'"status"\s*:\s*"UP"', body) is not None


def int_or_none(value: str | None) -> int | None:
    return int(value) if value and value.strip().isdigit() else None
