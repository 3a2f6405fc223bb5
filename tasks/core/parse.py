"""Pure parsers of remote output. Each takes text and returns plain data; tested on recorded output."""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
from dataclasses import dataclass

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """Server text made safe to print on a terminal: control characters (escape sequences that could
    rewrite what the user sees) shown as \\xNN; tabs and line ends kept."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


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


def ufw_active(lines: list[str]) -> bool:
    """`ufw status` -> whether the firewall is on."""
    return any(line.strip() == "Status: active" for line in lines)


# Ports of the ufw application profiles people use for SSH and nginx (Debian's openssh-server and nginx).
UFW_APPS = {"openssh": {22}, "nginx full": {80, 443}, "nginx http": {80}, "nginx https": {443},
            "www": {80}, "www full": {80, 443}, "www secure": {443}}


@dataclass(frozen=True)
class UfwRule:
    """One allow (or limit) rule: the ports it opens (None: all) to a source ("any" or a network)."""

    ports: frozenset[int] | None
    source: str = "any"
    spec: str = ""          # the short form's one word (`ufw allow 80/tcp`: "80/tcp"), else ""
    comment: str = ""       # `comment '...'`: the toolkit marks the rules it may remove again

    def covers(self, port: int) -> bool:
        return self.ports is None or port in self.ports

    def admits(self, address: str) -> bool:
        if self.source == "any":
            return True
        try:
            return ipaddress.ip_address(address) in ipaddress.ip_network(self.source, strict=False)
        except ValueError:
            return False


def _ufw_ports(spec: str) -> frozenset[int]:
    """`22`, `22/tcp`, `80,443/tcp`, `8000:8100/tcp` -> ports; an app name -> its ports (or none known)."""
    app = UFW_APPS.get(spec.lower())
    if app is not None:
        return frozenset(app)
    ports: set[int] = set()
    for part in spec.split("/")[0].split(","):
        low, _, high = part.partition(":")
        if not low.isdigit() or (high and not high.isdigit()):
            return frozenset()
        ports.update(range(int(low), int(high or low) + 1))
    return frozenset(ports)


def ufw_rules(lines: list[str]) -> list[UfwRule]:
    """`ufw show added` (rules as the commands that added them, listed even while ufw is off) ->
    the allow and limit rules for incoming traffic."""
    rules = []
    for line in lines:
        try:
            words = shlex.split(line)
        except ValueError:
            continue
        if len(words) < 3 or words[0] != "ufw" or words[1] not in ("allow", "limit"):
            continue
        words = words[2:]
        if words[0] == "out":
            continue
        if words[0] == "in":
            words = words[3:] if len(words) > 2 and words[1] == "on" else words[1:]
        comment = ""
        if "comment" in words:
            at = words.index("comment")
            words, comment = words[:at], " ".join(words[at + 1:])
        if not words:
            continue
        if words[0] not in ("from", "to", "proto"):
            rules.append(UfwRule(_ufw_ports(words[0]), spec=words[0], comment=comment))
            continue
        options = dict(zip(words[::2], words[1::2]))
        if "app" in options or "port" in options:
            ports = _ufw_ports(options.get("app") or options["port"])
        else:
            ports = None
        rules.append(UfwRule(ports, "any" if options.get("from", "any") == "any" else options["from"], comment=comment))
    return rules


def sshd_ports(lines: list[str]) -> list[int]:
    """Ports sshd accepts on: `sshd -T` port and listenaddress lines, and `Listen=` of ssh.socket
    (socket activation) from `systemctl show`."""
    ports = set()
    for line in lines:
        parts = line.split()
        key = parts[0].lower() if parts else ""
        if key == "port" and len(parts) == 2 and parts[1].isdigit():
            ports.add(int(parts[1]))
        elif key == "listenaddress" and len(parts) >= 2:
            match = re.search(r":(\d+)$", parts[1])
            if match:
                ports.add(int(match.group(1)))
        elif key.startswith("listen=") and "(stream)" in line.lower():
            match = re.search(r":(\d+)\s+\(Stream\)", line, re.IGNORECASE) or re.match(r"Listen=(\d+)\s", line)
            if match:
                ports.add(int(match.group(1)))
    return sorted(ports)


def ssh_connection(value: str) -> tuple[str | None, int | None]:
    """$SSH_CONNECTION (`client_ip client_port server_ip server_port`) -> (client ip, server port)."""
    parts = value.split()
    if len(parts) != 4 or not parts[3].isdigit():
        return None, None
    try:
        client = str(ipaddress.ip_address(parts[0]))
    except ValueError:
        client = None
    return client, int(parts[3])


def dist_info_version(path: str, package: str = "label_studio") -> str | None:
    """`.../label_studio-1.23.2.dist-info` -> `1.23.2`; None for anything that is not a plain version."""
    match = re.search(re.escape(package) + r"-([0-9A-Za-z.+!_-]+?)\.dist-info/?$", path or "")
    return match.group(1) if match else None


@dataclass(frozen=True)
class AppServer:
    """gunicorn's processes as `ps` lists them: (pid, parent pid, resident memory in KiB)."""

    processes: tuple[tuple[int, int, int], ...] = ()

    @classmethod
    def from_lines(cls, lines: list[str]) -> "AppServer":
        found = []
        for line in lines:
            words = line.split()
            if len(words) == 3 and all(w.isdigit() for w in words):
                found.append((int(words[0]), int(words[1]), int(words[2])))
        return cls(tuple(found))

    @property
    def masters(self) -> list[int]:
        pids = {pid for pid, _, _ in self.processes}
        return [pid for pid, ppid, _ in self.processes if ppid not in pids]

    def workers(self, master: int) -> list[tuple[int, int, int]]:
        return [p for p in self.processes if p[1] == master]

    @property
    def total_rss(self) -> int:
        """Bytes."""
        return sum(rss for _, _, rss in self.processes) * 1024


def site_packages(dist_path: str, python3: str | None) -> str | None:
    """A release's site-packages relative to its folder (`lib/python3.11/site-packages`): read from where
    its label_studio dist-info is, else what the system python3 (which builds the release venvs) gives;
    made from the digits only, whatever else the server printed."""
    match = re.search(r"/lib/python3\.([0-9]+)/site-packages/", dist_path or "")
    minor = match.group(1) if match else None
    if minor is None and python3:
        found = re.match(r"3\.([0-9]+)(\.|$)", python3)
        minor = found.group(1) if found else None
    return f"lib/python3.{int(minor)}/site-packages" if minor is not None else None


RELEASE_NAME = re.compile(r"[0-9][0-9A-Za-z.+!_-]*")


def release_names(value: str) -> tuple[str, ...]:
    """`releases=1.22.0 1.23.2 ` -> the names that look like versions (anything else is ignored)."""
    return tuple(name for name in (value or "").split() if RELEASE_NAME.fullmatch(name))


def release_of(link_target: str) -> str | None:
    """`releases/1.23.2` -> `1.23.2`; `venv` (the single venv of earlier versions) -> `venv`; else None."""
    if link_target == "venv":
        return "venv"
    match = re.fullmatch(r"releases/([0-9][0-9A-Za-z.+!_-]*)", link_target or "")
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


def env_assignments(text: str) -> list[tuple[str, str]]:
    """KEY=value lines of an env file we rendered (comments and blanks skipped), in order."""
    pairs = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            pairs.append((key.strip(), value))
    return pairs


def is_loopback(address: str) -> bool:
    """`127.0.0.1:8080`, `[::1]:8080`, `[::ffff:127.0.0.1]:8080` -> True; wildcard or other -> False."""
    host = address.rsplit(":", 1)[0].strip("[]")
    return host.startswith("127.") or host in ("::1", "localhost") or host.startswith("::ffff:127.")


# The release's read of every table (templates/scripts/check_database.py).


def database_problem(stdout: str, stderr: str = "") -> str | None:
    """The check's verdict from its last JSON line: None when it read its tables."""
    return check_problem(check_answer(stdout, stderr))


def check_problem(answer: dict) -> str | None:
    """What check_answer's answer says is wrong, in words; None when the tables were read."""
    return None if "tables" in answer else str(answer.get("error") or f"{answer['pending']} migration(s) pending")


def last_json(text: str) -> dict | None:
    """A server program's answer: the last line of its output that is a JSON object (None: there is none).
    Programs run on the server print exactly one such line, last; anything before it is talk."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def check_answer(stdout: str, stderr: str = "") -> dict:
    """The check's last JSON line: {"tables": N>0}, {"pending": N>0} or {"error": words} (also for no answer)."""
    for line in reversed(stdout.strip().splitlines()):
        try:
            answer = json.loads(line)
        except ValueError:
            continue
        if not isinstance(answer, dict):
            continue
        for key in ("tables", "pending"):
            if isinstance(answer.get(key), int) and not isinstance(answer[key], bool) and answer[key] > 0:
                return {key: answer[key]}
        if "error" in answer:
            return {"error": printable(str(answer["error"]))}
    lines = (stderr.strip() or stdout.strip()).splitlines()
    return {"error": printable(lines[-1]) if lines else "no answer from the check"}
