"""Who runs Label Studio on this host, and whose is its port: read from /proc, /etc/passwd and the
nginx sites. Runs ON the server as root, by the system python3 (stdlib only, `python3 -I -c SOURCE
command args`, like tasks/core/onserver/sqlite.py); the unit tests run it against a fake /proc tree.

Commands (JSON or one line on stdout):
  detect PORT UNIT USER DATA_DIR        every Label Studio the toolkit does not manage, the port's holder,
                                        hand-written nginx sites that proxy to the port (read-only)
  health URL HOST PORT UNIT USER DATA_DIR [TRUST]  `<status> <body>` of GET URL, but `0 <why>` unless
                                        the listener on PORT is our own instance (unit, user, data dir);
                                        an https URL is verified against the CA file TRUST, SNI = HOST
  holder PORT UNIT USER DATA_DIR        `free`, `ours` or `other <description>` for PORT
  stop PID RECORD SITE                  record how the unmanaged instance PID runs (argv, environment,
                                        cwd, user, screen session), disable the hand-written nginx
                                        sites that proxy to its port, then stop it and wait until gone
  revive RECORD SITE                    undo `stop`: its sites back, the process started again as it ran

Names found on the server never leave this program as shell text: `stop` keeps what `revive` needs in a
root-only record file, and `revive` starts the old command from that record with an argv list.
"""

from __future__ import annotations

import glob
import http.client
import json
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

PROC = "/proc"
SCREEN_DIRS = ("/run/screen", "/var/run/screen")
NGINX_SITE_DIRS = ("/etc/nginx/sites-enabled", "/etc/nginx/conf.d")
MANAGED_MARK = "Managed by labelstudio-vm"
LOOPBACK_TAKERS = {"0.0.0.0", "127.0.0.1", "::", "::ffff:127.0.0.1", "::ffff:0.0.0.0"}
STOP_TIMEOUT = 60.0
ROOT_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# Variables that make the dynamic loader, libc or Python load code or data from a path: a record of the
# old process's environment never keeps them (glibc's own list for setuid programs, and Python's).
LOADER_VARIABLES = frozenset({
    "GCONV_PATH", "GETCONF_DIR", "HOSTALIASES", "LOCALDOMAIN", "LOCPATH", "MALLOC_TRACE", "NIS_PATH",
    "NLSPATH", "RESOLV_HOST_CONF", "RES_OPTIONS", "TZDIR",
    "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "PYTHONPLATLIBDIR", "PYTHONBREAKPOINT",
    "PYTHONEXECUTABLE", "PYTHONINSPECT", "PYTHONPYCACHEPREFIX",
})
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# ------------------------------------------------------------------------------------------------
# /proc readers


def _read(path: str, binary: bool = False):
    try:
        with open(path, "rb" if binary else "r", **({} if binary else {"errors": "replace"})) as handle:
            return handle.read()
    except OSError:
        return b"" if binary else ""


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _words(raw: bytes) -> list[str]:
    return [_text(w) for w in raw.split(b"\0") if w] if raw else []


def _address(hex_addr: str) -> str:
    if len(hex_addr) == 8:
        return socket.inet_ntop(socket.AF_INET, struct.pack("<I", int(hex_addr, 16)))
    packed = b"".join(struct.pack("<I", int(hex_addr[i:i + 8], 16)) for i in range(0, 32, 8))
    return socket.inet_ntop(socket.AF_INET6, packed)


def listening_sockets(proc: str = PROC) -> dict[int, tuple[str, int]]:
    """inode -> (address, port) of every listening TCP socket."""
    return {inode: (addr, port) for inode, (addr, port, _) in _listening(proc).items()}


def _listening(proc: str = PROC) -> dict[int, tuple[str, int, int]]:
    """inode -> (address, port, uid) of every listening TCP socket."""
    found = {}
    for name in ("tcp", "tcp6"):
        for line in _read(os.path.join(proc, "net", name)).splitlines()[1:]:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "0A":  # 0A: LISTEN
                continue
            hex_addr, _, hex_port = fields[1].partition(":")
            try:
                found[int(fields[9])] = (_address(hex_addr), int(hex_port, 16), int(fields[7]))
            except (ValueError, OSError):
                continue
    return found


def pids(proc: str = PROC) -> list[int]:
    return sorted(int(n) for n in os.listdir(proc) if n.isdigit())


def socket_inodes(pid: int, proc: str = PROC) -> set[int]:
    return fd_sockets(pid, proc)[0]


def fd_sockets(pid: int, proc: str = PROC) -> tuple[set[int], bool]:
    """(socket inodes among the process's fds, whether its fds could be read at all)."""
    inodes = set()
    fd_dir = os.path.join(proc, str(pid), "fd")
    try:
        names = os.listdir(fd_dir)
    except PermissionError:
        return inodes, False
    except OSError:
        return inodes, True
    for fd in names:
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except PermissionError:
            return inodes, False
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes, True


def process(pid: int, proc: str = PROC) -> dict | None:
    base = os.path.join(proc, str(pid))
    status = _read(os.path.join(base, "status"))
    if not status:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    environ = {}
    for word in _words(_read(os.path.join(base, "environ"), binary=True)):
        key, sep, value = word.partition("=")
        if sep:
            environ[key] = value
    try:
        cwd = os.readlink(os.path.join(base, "cwd"))
    except OSError:
        cwd = ""
    uid = int(fields.get("Uid", "-1").split()[0])
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    return {"pid": pid, "ppid": int(fields.get("PPid", "0").strip() or 0), "uid": uid, "user": user,
            "comm": _read(os.path.join(base, "comm")).strip(),
            "argv": _words(_read(os.path.join(base, "cmdline"), binary=True)),
            "environ": environ, "cwd": cwd, "cgroup": _read(os.path.join(base, "cgroup"))}


APP_SERVERS = ("gunicorn", "uwsgi")
LABEL_STUDIO_APPS = ("core.wsgi:application", "label_studio.core.wsgi:application")


def is_label_studio(argv: list[str]) -> bool:
    """`label-studio ...`, `python .../bin/label-studio ...`, `python -m label_studio...`, or an app
    server (gunicorn, uwsgi; maybe run by python) serving Label Studio's WSGI application."""
    if not argv:
        return False
    first = os.path.basename(argv[0])
    if first == "label-studio":
        return True
    program = os.path.basename(argv[1]) if first.startswith("python") and len(argv) > 1 else first
    if program in APP_SERVERS:
        return any(word in LABEL_STUDIO_APPS or word.endswith(tuple("=" + app for app in LABEL_STUDIO_APPS))
                   for word in argv)
    if first.startswith("python") and len(argv) > 1:
        if program == "label-studio":
            return True
        return argv[1] == "-m" and len(argv) > 2 and argv[2].split(".")[0] in ("label_studio", "label-studio")
    return False


def option(argv: list[str], *names: str) -> str | None:
    for index, word in enumerate(argv):
        for name in names:
            if word == name and index + 1 < len(argv):
                return argv[index + 1]
            if word.startswith(name + "="):
                return word[len(name) + 1:]
    return None


# ------------------------------------------------------------------------------------------------
# What a Label Studio process uses


def home_of(p: dict) -> str:
    if p["environ"].get("HOME"):
        return p["environ"]["HOME"]
    try:
        return pwd.getpwuid(p["uid"]).pw_dir
    except KeyError:
        return "/"


def ls_env(env: dict[str, str], name: str) -> str | None:
    """Label Studio's own lookup (core.utils.params.get_env): LABEL_STUDIO_, HEARTEX_, then bare."""
    for key in ("LABEL_STUDIO_" + name, "HEARTEX_" + name, name):
        if key in env:
            return env[key]
    return None


def _absolute(path: str, cwd: str) -> str:
    return os.path.normpath(path if os.path.isabs(path) else os.path.join(cwd or "/", path))


def data_dir_of(p: dict) -> tuple[str, str]:
    """(data dir, where it came from), decided as Label Studio does: its environment wins over
    `--data-dir` (server.py only setdefault()s it), then the platform default of the user."""
    argv, env, cwd = p["argv"], p["environ"], p["cwd"]
    if "LABEL_STUDIO_BASE_DATA_DIR" in env:
        return _absolute(env["LABEL_STUDIO_BASE_DATA_DIR"], cwd), "LABEL_STUDIO_BASE_DATA_DIR"
    if option(argv, "--data-dir"):
        return _absolute(option(argv, "--data-dir"), cwd), "--data-dir"
    from_env = ls_env(env, "BASE_DATA_DIR")
    if from_env:
        return _absolute(from_env, cwd), "BASE_DATA_DIR"
    base = env.get("XDG_DATA_HOME") or os.path.join(home_of(p), ".local", "share")
    return _absolute(os.path.join(base, "label-studio"), cwd), "default"


def database_of(p: dict, data_dir: str) -> str:
    env = p["environ"]
    name = env.get("LABEL_STUDIO_DATABASE_NAME") or option(p["argv"], "--database", "-db") or ls_env(env, "DATABASE_NAME")
    return _absolute(name, p["cwd"]) if name else os.path.join(data_dir, "label_studio.sqlite3")


def engine_of(p: dict) -> str:
    return "sqlite" if (ls_env(p["environ"], "DJANGO_DB") or "sqlite") == "sqlite" else "postgresql"


def venv_of(p: dict) -> str | None:
    """The virtualenv the process runs from (the folder holding pyvenv.cfg), if any."""
    for word in p["argv"][:2]:
        if "/" in word:
            candidate = os.path.dirname(os.path.dirname(word if os.path.isabs(word) else os.path.join(p["cwd"], word)))
            if os.path.isfile(os.path.join(candidate, "pyvenv.cfg")):
                return os.path.normpath(candidate)
    return p["environ"].get("VIRTUAL_ENV") or None


def version_in(venv: str | None) -> str | None:
    if not venv:
        return None
    found = glob.glob(os.path.join(venv, "lib", "python3*", "site-packages", "label_studio-*.dist-info"))
    return os.path.basename(found[0])[len("label_studio-"):-len(".dist-info")] if found else None


def data_summary(data_dir: str, database: str) -> dict:
    media_files = media_bytes = 0
    for root, _, files in os.walk(os.path.join(data_dir, "media")):
        for name in files:
            try:
                media_bytes += os.lstat(os.path.join(root, name)).st_size
                media_files += 1
            except OSError:
                continue
    try:
        db_size = os.stat(database).st_size
    except OSError:
        db_size = None
    return {"database_size": db_size, "env_file": os.path.isfile(os.path.join(data_dir, ".env")),
            "media_files": media_files, "media_bytes": media_bytes}


def screen_of(p: dict, by_pid: dict[int, dict]) -> dict | None:
    """The screen session the process runs in: {pid, name}, or None."""
    parent = by_pid.get(p["ppid"])
    while parent is not None:
        if parent["comm"].lower() == "screen":
            name = None
            for base in SCREEN_DIRS:
                for entry in glob.glob(os.path.join(base, f"S-{parent['user']}", f"{parent['pid']}.*")):
                    name = os.path.basename(entry).split(".", 1)[1]
            return {"pid": parent["pid"], "name": name}
        parent = by_pid.get(parent["ppid"])
    return None


def kinship(p: dict, unit: str, user: str, data_dir: str) -> str:
    """`ours`: the service user's, on our data dir and, with systemd (`unit` given), in our unit's
    cgroup (screen mode passes no unit: the service user and data dir are ours alone). `ours-elsewhere`:
    ours, but run by the other manager (a switch between systemd and screen stops it). Else `foreign`."""
    if p["user"] != user or p["environ"].get("LABEL_STUDIO_BASE_DATA_DIR") != data_dir:
        return "foreign"
    if not unit or any(line.endswith("/" + unit) for line in p["cgroup"].splitlines()):
        return "ours"
    return "ours-elsewhere"


def describe_process(p: dict) -> str:
    return f"pid {p['pid']}, user {p['user']}: {' '.join(p['argv'])[:160]}"


# ------------------------------------------------------------------------------------------------
# The whole picture


def snapshot_processes(proc: str = PROC) -> dict[int, dict]:
    by_pid = {}
    for pid in pids(proc):
        p = process(pid, proc)
        if p is not None:
            by_pid[pid] = p
    return by_pid


def socket_owners(by_pid: dict[int, dict], proc: str = PROC) -> dict[int, int]:
    """inode -> pid of each listening socket. Where /proc/PID/fd cannot be read (root without
    CAP_SYS_PTRACE, as in some containers), the socket's owner uid (from the kernel's own table)
    names it when exactly one Label Studio runs as that uid and its fds were unreadable; otherwise
    it stays unknown."""
    sockets = _listening(proc)
    owners, hidden = {}, set()
    for pid in by_pid:
        inodes, readable = fd_sockets(pid, proc)
        if not readable:
            hidden.add(pid)
        for inode in inodes & set(sockets):
            owners[inode] = pid
    for inode, (_, _, uid) in sockets.items():
        if inode in owners:
            continue
        tops = [p["pid"] for p in by_pid.values() if p["pid"] in hidden and p["uid"] == uid and is_label_studio(p["argv"])
                and not (p["ppid"] in by_pid and is_label_studio(by_pid[p["ppid"]]["argv"]))]
        if len(tops) == 1:
            owners[inode] = tops[0]
    return owners


def port_listeners(port: int, by_pid: dict[int, dict], proc: str = PROC,
                   owners: dict[int, int] | None = None) -> list[tuple[str, dict | None]]:
    """(address, process or None) of every socket listening on `port` that takes connections to
    127.0.0.1:`port` (loopback or a wildcard address)."""
    owners = socket_owners(by_pid, proc) if owners is None else owners
    return [(addr, by_pid.get(owners.get(inode, -1)))
            for inode, (addr, p) in listening_sockets(proc).items() if p == port and addr in LOOPBACK_TAKERS]


def holder(port: int, unit: str, user: str, data_dir: str, proc: str = PROC, *,
           by_pid: dict[int, dict] | None = None, owners: dict[int, int] | None = None) -> tuple[str, str, int | None]:
    """('free'|'ours'|'ours-elsewhere'|'other', description, pid) for the port Label Studio must own.
    `detect` passes the processes and socket owners it has read already."""
    by_pid = snapshot_processes(proc) if by_pid is None else by_pid
    listeners = port_listeners(port, by_pid, proc, owners)
    if not listeners:
        return "free", f"nothing listens on port {port}", None
    for addr, p in listeners:
        if p is None:
            return "other", f"port {port} is held on {addr} by a process this check cannot see", None
        kin = kinship(p, unit, user, data_dir)
        if kin == "ours-elsewhere":
            return kin, f"port {port} is held by our Label Studio under the other service manager (pid {p['pid']})", p["pid"]
        if kin != "ours":
            top = p
            while top["ppid"] in by_pid and is_label_studio(by_pid[top["ppid"]]["argv"]):
                top = by_pid[top["ppid"]]
            return "other", f"port {port} is held on {addr} by {describe_process(p)}", top["pid"]
    return "ours", f"port {port} is held by our instance (pid {listeners[0][1]['pid']})", listeners[0][1]["pid"]


def nginx_sites(port: int, exclude_managed: bool = True) -> list[dict]:
    """Enabled nginx sites that proxy to 127.0.0.1/localhost:`port` (hand-written unless marked ours)."""
    pattern = re.compile(r"proxy_pass\s+https?://(?:127\.0\.0\.1|localhost|0\.0\.0\.0|\[::1\])?:" + str(port) + r"\b")
    sites = []
    for base in NGINX_SITE_DIRS:
        for path in sorted(glob.glob(os.path.join(base, "*"))):
            text = _read(path)
            if not pattern.search(text):
                continue
            ours = MANAGED_MARK in text
            if exclude_managed and ours:
                continue
            sites.append({"path": path, "target": os.path.realpath(path), "ours": ours,
                          "link": os.path.islink(path)})
    return sites


def detect(port: int, unit: str, user: str, data_dir: str, proc: str = PROC, records_dir: str = "") -> dict:
    by_pid = snapshot_processes(proc)
    adopted = adopted_data_dirs(records_dir) if records_dir else []
    sockets = listening_sockets(proc)
    owners = socket_owners(by_pid, proc)
    listening_by_pid: dict[int, list[str]] = {}
    for inode, pid in owners.items():
        addr, p = sockets[inode]
        listening_by_pid.setdefault(pid, []).append(f"[{addr}]:{p}" if ":" in addr else f"{addr}:{p}")
    ls = {pid: p for pid, p in by_pid.items() if is_label_studio(p["argv"])}
    instances, seen_dirs = [], {os.path.normpath(data_dir)}
    for pid, p in ls.items():
        if p["ppid"] in ls or kinship(p, unit, user, data_dir) != "foreign":
            continue  # a child of another Label Studio process, or our own
        listen = sorted({a for member in family(pid, by_pid) for a in listening_by_pid.get(member, [])})
        data, source = data_dir_of(p)
        database = database_of(p, data)
        venv = venv_of(p)
        seen_dirs.add(data)
        instances.append({
            "running": True, "pid": pid, "user": p["user"], "uid": p["uid"], "home": home_of(p),
            "command": p["argv"], "cwd": p["cwd"], "venv": venv, "version": version_in(venv),
            "data_dir": data, "data_dir_from": source, "database": database,
            "engine": engine_of(p),
            "listen": listen, "screen": screen_of(p, by_pid), **data_summary(data, database),
        })
    for entry in pwd.getpwall():
        if not 1000 <= entry.pw_uid < 60000 or entry.pw_name == user:
            continue
        data = os.path.normpath(os.path.join(entry.pw_dir, ".local", "share", "label-studio"))
        database = os.path.join(data, "label_studio.sqlite3")
        if data in seen_dirs or data in adopted or not os.path.isfile(database):
            continue  # running (listed above), ours, or taken over already (its files stay in place)
        venvs = sorted(os.path.dirname(os.path.dirname(b)) for pattern in ("*/bin/label-studio", "*/*/bin/label-studio")
                       for b in glob.glob(os.path.join(entry.pw_dir, pattern)))
        instances.append({
            "running": False, "pid": None, "user": entry.pw_name, "uid": entry.pw_uid, "home": entry.pw_dir,
            "command": [], "cwd": "", "venv": venvs[0] if venvs else None,
            "version": version_in(venvs[0]) if venvs else None, "data_dir": data, "data_dir_from": "default",
            "database": database, "engine": "sqlite", "listen": [], "screen": None,
            **data_summary(data, database),
        })
    state, said, pid = holder(port, unit, user, data_dir, proc, by_pid=by_pid, owners=owners)
    return {"instances": instances, "port": {"state": state, "said": said, "pid": pid}, "sites": nginx_sites(port),
            "adopted": adopted}


def family(pid: int, by_pid: dict[int, dict]) -> list[int]:
    """`pid` and every process below it."""
    return [pid] + [q["pid"] for q in by_pid.values() if _descends(q, pid, by_pid)]


def _descends(p: dict, ancestor: int, by_pid: dict[int, dict]) -> bool:
    parent = by_pid.get(p["ppid"])
    while parent is not None:
        if parent["pid"] == ancestor:
            return True
        parent = by_pid.get(parent["ppid"])
    return False


# ------------------------------------------------------------------------------------------------
# Health: an answer counts only when our own instance holds the port.


def health(url: str, host_header: str, port: int, unit: str, user: str, data_dir: str, trust: str = "") -> str:
    state, said, _ = holder(port, unit, user, data_dir)
    if state != "ours":
        return f"0 {said}"
    if url.startswith("https://"):
        return https_get(url, host_header, trust)
    return http_get(url, host_header)


def read_every_table(port: int, unit: str, user: str, data_dir: str, path: str) -> tuple[str, int]:
    """Our own instance's workers' read of every table of the live database (app_server.py's
    DATABASE_CHECK_PATH): (its JSON, 0 or 1 for an error), or ('', 3) when our instance does not hold
    the port or does not answer that path (a start before its workers learnt to): ask the release then."""
    state, _, _ = holder(port, unit, user, data_dir)
    if state != "ours":
        return "", 3
    try:
        with _OPENER.open(urllib.request.Request(f"http://127.0.0.1:{port}{path}"), timeout=60) as answer:
            found = json.loads(answer.read(4096).decode())
    except Exception:  # noqa: BLE001 - no answer of the workers' own: the release answers instead
        return "", 3
    if not isinstance(found, dict) or found.pop("answered_by", None) != "worker":
        return "", 3
    return json.dumps(found), 1 if "error" in found else 0


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None   # a 3xx is the answer: root's probe never goes where the answer points


# No proxy from root's environment, no redirects.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())


def http_get(url: str, host_header: str = "") -> str:
    """`<status> <first 200 bytes>` of a plain GET, `0 <error>` when nothing answers."""
    request = urllib.request.Request(url, headers={"Host": host_header} if host_header else {})
    try:
        with _OPENER.open(request, timeout=5) as answer:
            return f"{answer.status} {answer.read(200).decode(errors='replace')}"
    except urllib.error.HTTPError as exc:
        return f"{exc.code} "
    except Exception as exc:  # noqa: BLE001 - the answer is the report
        return f"0 {type(exc).__name__}"


def https_get(url: str, name: str, trust: str) -> str:
    """GET url as a browser opening https://NAME/ would: SNI and Host are `name`, the served chain must
    verify up to `trust` (a CA file; an intermediate is enough) and name `name`."""
    parts = urllib.parse.urlsplit(url)
    context = ssl.create_default_context(cafile=trust)
    context.verify_flags |= getattr(ssl, "VERIFY_X509_PARTIAL_CHAIN", 0)
    connection = http.client.HTTPSConnection(name, parts.port or 443, timeout=5, context=context)
    try:
        raw = socket.create_connection((parts.hostname, parts.port or 443), timeout=5)
        connection.sock = context.wrap_socket(raw, server_hostname=name)
        connection.request("GET", parts.path or "/")
        answer = connection.getresponse()
        return f"{answer.status} {answer.read(200).decode(errors='replace')}"
    except Exception as exc:  # noqa: BLE001 - the answer is the report
        return f"0 {type(exc).__name__}: {str(exc)[:160]}".replace("\n", " ")
    finally:
        connection.close()


# ------------------------------------------------------------------------------------------------
# Taking over: stop (recorded) and revive


def _write_record(path: str, record: dict) -> None:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(record, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not _read(f"{PROC}/{pid}/stat").split(") ")[-1].startswith("Z")


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _wait_gone(pids_: list[int], timeout: float = STOP_TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    killed = False
    while any(_alive(p) for p in pids_):
        if time.monotonic() > deadline:
            if killed:
                return False
            for p in pids_:
                _signal(p, signal.SIGKILL)
            killed, deadline = True, time.monotonic() + 10
        time.sleep(0.2)
    return True


def revivable_environment(environ: dict) -> dict:
    """What of a process's environment may be given back to it: plain names only (an `env` word never
    reads as an option), nothing that makes a loader or Python load code."""
    return {key: value for key, value in environ.items()
            if ENV_NAME.fullmatch(key) and not key.startswith("LD_") and key not in LOADER_VARIABLES}


def revive_command(record: dict) -> list[str]:
    """How root starts the recorded command again: runuser drops to the old user first, with root's own
    clean environment; only then `env -i` hands the recorded variables to the old user's process."""
    def root_tool(name: str, fallback: str) -> str:
        return shutil.which(name, path=ROOT_PATH) or fallback

    environ = [f"{key}={value}" for key, value in sorted(revivable_environment(record.get("environ") or {}).items())]
    command = [root_tool("runuser", "/usr/sbin/runuser"), "-u", record["user"], "--",
               root_tool("env", "/usr/bin/env"), "-i", "-C", record["cwd"] or "/", *environ]
    if record.get("screen"):
        return command + [root_tool("screen", "/usr/bin/screen"), "-dmS",
                          record["screen"].get("name") or "label-studio", *record["argv"]]
    return command + [root_tool("setsid", "/usr/bin/setsid"), *record["argv"]]


def default_data_dir(uid: int) -> str:
    return os.path.normpath(os.path.join(pwd.getpwuid(uid).pw_dir, ".local", "share", "label-studio"))


def stop(pid: int, uid: int, port: int, record_path: str, our_site: str) -> dict:
    """Take an unmanaged instance out of the way, keeping in `record_path` all that `revive` needs:
    the running process `pid` (0: data at rest in the home of `uid`, nothing runs), the hand-written
    nginx sites that proxy to its port (their links removed), the site file ours replaces (a copy)."""
    by_pid = snapshot_processes()
    members: list[int] = []
    ports = {port}
    if pid:
        p = by_pid.get(pid)
        if p is None or not is_label_studio(p["argv"]):
            return {"error": f"process {pid} is no Label Studio (any more)"}
        screen = screen_of(p, by_pid)
        members = family(pid, by_pid)
        sockets = listening_sockets()
        ports |= {sockets[inode][1] for inode, owner in socket_owners(by_pid).items() if owner in members}
        data_dir = data_dir_of(p)[0]
        record = {"pid": pid, "user": p["user"], "uid": p["uid"], "argv": p["argv"],
                  "environ": revivable_environment(p["environ"]),
                  "cwd": p["cwd"], "screen": screen}
    else:
        data_dir = default_data_dir(uid)
        record = {"pid": None, "user": pwd.getpwuid(uid).pw_name, "uid": uid, "argv": [], "environ": {},
                  "cwd": "", "screen": None}
    site_backup = None
    if os.path.isfile(our_site) and MANAGED_MARK not in _read(our_site):
        site_backup = our_site + ".before-adopt"
        shutil.copy2(our_site, site_backup)
    record.update({"data_dir": data_dir, "disabled_sites": [], "site_backup": site_backup,
                   "stopped": time.time(), "adopted": False})
    _write_record(record_path, record)
    for listen_port in sorted(ports):
        for site in nginx_sites(listen_port):
            if site["link"] and os.path.realpath(site["path"]) != os.path.realpath(our_site):
                record["disabled_sites"].append({"path": site["path"], "target": os.readlink(site["path"])})
                _write_record(record_path, record)
                os.unlink(site["path"])
    for target in members:
        _signal(target, signal.SIGTERM)
    if not _wait_gone(members):
        return {"error": f"Label Studio (pid {pid}) did not exit"}
    if record["screen"] is not None:  # the session only held Label Studio (and the shell it was typed in)
        _signal(record["screen"]["pid"], signal.SIGTERM)
        _wait_gone([record["screen"]["pid"]])
    return {"stopped": pid, "data_dir": data_dir, "screen": record["screen"],
            "disabled_sites": [s["path"] for s in record["disabled_sites"]], "site_backup": site_backup}


def revive(record_path: str, our_site: str) -> dict:
    """Undo `stop`: the site file and links back, nginx reloaded, the old command started again."""
    with open(record_path) as handle:
        record = json.load(handle)
    if record.get("site_backup") and os.path.isfile(record["site_backup"]):
        shutil.copy2(record["site_backup"], our_site)
    for site in record.get("disabled_sites", []):
        if not os.path.lexists(site["path"]):
            os.symlink(site["target"], site["path"])
    root_path = {"PATH": ROOT_PATH}
    nginx = shutil.which("nginx", path=ROOT_PATH)
    if nginx and subprocess.run([nginx, "-t"], capture_output=True, check=False, env=root_path).returncode == 0:
        subprocess.run(["systemctl", "reload-or-restart", "nginx"], capture_output=True, check=False, env=root_path)
    argv = record["argv"]
    if not argv:
        return {"revived": None}
    subprocess.Popen(revive_command(record), env=root_path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True)
    return {"revived": " ".join(argv)[:160], "screen": record.get("screen")}


def wait_serving(port: int, timeout: float) -> str:
    """Poll until a Label Studio process listens on `port` and answers /health UP (after `revive`)."""
    deadline, last = time.monotonic() + timeout, "nothing listens"
    while time.monotonic() < deadline:
        listeners = port_listeners(port, snapshot_processes())
        if any(p is not None and is_label_studio(p["argv"]) for _, p in listeners):
            last = http_get(f"http://127.0.0.1:{port}/health")
            if last.startswith("200 ") and "UP" in last:
                return f"UP {last}"
        time.sleep(0.3)
    return f"DOWN {last}"


def mark_adopted(record_path: str) -> dict:
    """The take-over is done: the data left in place is no longer an instance to report."""
    with open(record_path) as handle:
        record = json.load(handle)
    record["adopted"] = time.time()
    _write_record(record_path, record)
    return {"adopted": record["data_dir"]}


def adopted_data_dirs(records_dir: str) -> list[str]:
    found = []
    for path in glob.glob(os.path.join(records_dir, "*.json")):
        try:
            with open(path) as handle:
                record = json.load(handle)
        except (OSError, ValueError):
            continue
        if record.get("adopted") and record.get("data_dir"):
            found.append(os.path.normpath(record["data_dir"]))
    return found


def main(argv: list[str]) -> int:
    command, args = argv[0], argv[1:]
    if command == "detect":
        print(json.dumps(detect(int(args[0]), args[1], args[2], args[3], records_dir=args[4])))
    elif command == "health":
        print(health(args[0], args[1], int(args[2]), args[3], args[4], args[5], *args[6:7]))
    elif command == "read-every-table":
        answer, status = read_every_table(int(args[0]), args[1], args[2], args[3], args[4])
        print(answer)
        return status
    elif command == "holder":
        state, said, _ = holder(int(args[0]), args[1], args[2], args[3])
        print(f"{state} {said}")
    elif command == "stop":
        result = stop(int(args[0]), int(args[1]), int(args[2]), args[3], args[4])
        print(json.dumps(result))
        return 1 if "error" in result else 0
    elif command == "revive":
        print(json.dumps(revive(args[0], args[1])))
    elif command == "wait-serving":
        answer = wait_serving(int(args[0]), float(args[1]))
        print(answer)
        return 0 if answer.startswith("UP") else 1
    elif command == "adopted":
        print(json.dumps(mark_adopted(args[0])))
    else:
        print(json.dumps({"error": f"unknown command {command}"}))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
