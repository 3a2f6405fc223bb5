"""Pure parsers of remote output. Each takes text and returns plain data; tested on recorded output."""

from __future__ import annotations

import re


def blocks(text: str) -> dict[str, list[str]]:
    """`[name]` headers followed by lines -> {name: [lines]}. Lines before the first header are dropped."""
    result: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in text.splitlines():
        line = raw.rstrip("\r")
        header = re.fullmatch(r"\[([A-Za-z0-9_-]+)\]", line.strip())
        if header:
            current = result.setdefault(header.group(1), [])
        elif current is not None:
            current.append(line)
    return result


def key_values(lines: list[str]) -> dict[str, str]:
    """key=value lines -> dict (the value may itself hold '='). Other lines are ignored."""
    pairs = (line.partition("=") for line in lines if "=" in line)
    return {key.strip(): value.strip() for key, _, value in pairs}


def sections(text: str) -> dict[str, dict[str, str]]:
    """`[name]` headers followed by key=value lines -> {name: {key: value}}."""
    return {name: key_values(lines) for name, lines in blocks(text).items()}


def dpkg_installed(lines: list[str]) -> set[str]:
    """`dpkg-query -W -f='${Package} ${db:Status-Status}\\n'` lines -> names of installed packages."""
    installed = set()
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and parts[1] == "installed":
            installed.add(parts[0].split(":")[0])
    return installed


def ufw_status(lines: list[str]) -> tuple[bool, set[str]]:
    """`ufw status` -> (active, allowed rules such as '22/tcp' and '80/tcp (v6)').

    Only unconditional ALLOW rules from Anywhere count: a rule limited to one source does not
    keep the SSH session we rely on open.
    """
    active = any(line.strip() == "Status: active" for line in lines)
    allowed = set()
    for line in lines:
        match = re.match(r"^(\S+(?: \(v6\))?)\s+ALLOW(?: IN)?\s+Anywhere(?: \(v6\))?\s*$", line.strip())
        if match:
            allowed.add(match.group(1))
    return active, allowed


def sshd_ports(lines: list[str]) -> list[int]:
    """`sshd -T` output -> the ports sshd listens on."""
    ports = []
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and parts[0].lower() == "port" and parts[1].isdigit():
            ports.append(int(parts[1]))
    return sorted(set(ports))


def dist_info_version(path: str) -> str | None:
    """`.../label_studio-1.23.2.dist-info` -> `1.23.2`; None for anything that is not a plain version."""
    match = re.search(r"label_studio-([0-9A-Za-z.+!_-]+?)\.dist-info/?$", path or "")
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
