"""Shell command builders. Every interpolated value is quoted here, and only here."""

from __future__ import annotations

import shlex
from pathlib import PurePosixPath
from typing import Iterable

from .profile import Profile

Arg = str | int | PurePosixPath


def q(value: Arg) -> str:
    """One shell word, whatever the value holds (spaces, quotes, ';', '$')."""
    return shlex.quote(str(value))


def join(*words: Arg) -> str:
    """A command line from words, each quoted."""
    return " ".join(q(w) for w in words)


def sh(script: str) -> str:
    """A script run by a POSIX shell as one argument (so sudo covers all of it)."""
    return f"sh -c {q(script)}"


def sudo_noninteractive(script: str) -> str:
    """Root without a prompt: fails at once (instead of hanging) when sudo wants a password."""
    return f"sudo -n {sh(script)}"


def lines(*commands: str) -> str:
    return "\n".join(commands)


SUDO_CHECK = "sudo -n true"


def as_service_user(profile: Profile, *words: Arg) -> str:
    """A command run by root as the service user, in the data dir with HOME there: never in the SSH
    user's working directory, which Debian 13 (0700) and Ubuntu (0750) homes close to other users and
    which Label Studio probes at import."""
    data_dir = profile.remote.data_dir
    return join("runuser", "-u", profile.service.user, "--", "env", "-C", data_dir, f"HOME={data_dir}", *words)


def _show(unit: str, props: Iterable[str]) -> str:
    return f"systemctl show --no-pager -p {','.join(props)} {q(unit)} 2>/dev/null || true"


UNIT_PROPERTIES = ("LoadState", "ActiveState", "SubState", "UnitFileState", "MainPID")


def health_probe(port: int, host_header: str, path: str = "/health", timeout: int = 5) -> str:
    """Print `<status> <body>` of a GET on this host's loopback, using python3 (curl may be absent)."""
    code = (
        "import sys,urllib.request as u\n"
        "r=u.Request(sys.argv[1],headers={'Host':sys.argv[2]})\n"
        "try:\n"
        f" x=u.urlopen(r,timeout={int(timeout)});print(x.status,x.read(200).decode(errors='replace'))\n"
        "except u.HTTPError as e:print(e.code,'')\n"
        "except Exception as e:print(0,type(e).__name__)\n"
    )
    return join("python3", "-c", code, f"http://127.0.0.1:{int(port)}{path}", host_header)


# `os=`, `os_id=` and `os_version=` lines from /etc/os-release (read by `.`: it is shell syntax).
OS_RELEASE = (
    ". /etc/os-release 2>/dev/null; echo \"os=${PRETTY_NAME:-unknown}\"",
    "echo \"os_id=${ID:-}\"; echo \"os_version=${VERSION_ID:-}\"",
)


def screen_probe(profile: Profile) -> str:
    """`screen=yes` when the service user's screen session runs, else `screen=no`."""
    return (f"if command -v screen >/dev/null && [ -d {q(profile.remote.data_dir)} ] && "
            f"{as_service_user(profile, 'screen', '-ls', profile.service.name)} >/dev/null 2>&1; "
            "then echo screen=yes; else echo screen=no; fi")


def status_probe(profile: Profile) -> str:
    """One script that reads every status fact in a single round trip, as `[section]` + key=value lines."""
    p = profile.remote
    svc = f"{profile.service.name}.service"
    return lines(
        "echo '[host]'",
        *OS_RELEASE,
        "echo \"kernel=$(uname -r)\"",
        "echo \"python3=$(python3 -c 'import platform;print(platform.python_version())' 2>/dev/null)\"",
        "if [ -d /run/systemd/system ]; then echo systemd=yes; else echo systemd=no; fi",
        f"d={q(p.data_dir)}; while [ ! -e \"$d\" ]; do d=$(dirname \"$d\"); done",
        "echo \"disk=$(df -B1 --output=avail,target \"$d\" | tail -n 1)\"",
        "echo '[install]'",
        f"if [ -x {q(p.label_studio_bin)} ]; then echo installed=yes; else echo installed=no; fi",
        f"echo \"dist=$(ls -d {q(p.venv)}/lib/python3*/site-packages/label_studio-*.dist-info 2>/dev/null | head -n 1)\"",
        f"echo \"db_size=$(stat -c %s {q(p.database)} 2>/dev/null)\"",
        f"if [ -f {q(p.unit_file)} ]; then echo unit_file=yes; else echo unit_file=no; fi",
        f"if [ -e {q(p.nginx_site_enabled)} ]; then echo nginx_site=yes; else echo nginx_site=no; fi",
        screen_probe(profile),
        "echo '[service]'",
        _show(svc, UNIT_PROPERTIES),
        "echo '[nginx]'",
        _show("nginx.service", UNIT_PROPERTIES),
        "echo '[health]'",
        f"if command -v nginx >/dev/null; then echo \"via_nginx=$({health_probe(profile.http_port, profile.effective_server_name)})\"; fi",
        f"echo \"direct=$({health_probe(profile.label_studio.port, '127.0.0.1')})\"",
    )


def wanted_packages(profile: Profile) -> list[str]:
    packages = ["python3-venv", "nginx", "sqlite3", "zstd"]
    if profile.firewall.enabled:
        packages.append("ufw")
    if profile.service.manager == "screen":
        packages.append("screen")
    return packages


ALL_PACKAGES = ("python3-venv", "nginx", "sqlite3", "zstd", "ufw", "screen")

# Reads the Label Studio DB read-only with python3's sqlite3 module (present on every Debian/Ubuntu).
_DB_FACTS = (
    "import sqlite3,sys\n"
    "try:\n"
    " c=sqlite3.connect('file:'+sys.argv[1]+'?mode=ro',uri=True)\n"
    " print('users='+str(c.execute('select count(*) from htx_user').fetchone()[0]))\n"
    " print('admin='+('yes' if c.execute('select 1 from htx_user where email=?',(sys.argv[2],)).fetchone() else 'no'))\n"
    "except Exception as e:print('error='+type(e).__name__+': '+str(e).replace(chr(10),' '))\n"
)


def sha_line(key: str, path: PurePosixPath) -> str:
    """`key=<sha256>` of a file, or `key=` when it does not exist."""
    return f"echo \"{key}=$(sha256sum {q(path)} 2>/dev/null | cut -d' ' -f1)\""


def provision_probe(profile: Profile, admin_email: str) -> str:
    """Every fact provision compares against, read in one round trip."""
    p = profile.remote
    user = profile.service.user
    return lines(
        "echo '[packages]'",
        f"dpkg-query -W -f='${{Package}} ${{db:Status-Status}}\\n' {' '.join(ALL_PACKAGES)} 2>/dev/null || true",
        "echo '[host]'",
        *OS_RELEASE,
        "echo \"python3=$(python3 -c 'import platform;print(platform.python_version())' 2>/dev/null)\"",
        "if [ -d /run/systemd/system ]; then echo systemd=yes; else echo systemd=no; fi",
        "if [ \"$(cat /proc/sys/net/ipv6/conf/all/disable_ipv6 2>/dev/null)\" = 0 ] && "
        "[ -s /proc/net/if_inet6 ]; then echo ipv6=yes; else echo ipv6=no; fi",
        f"if id -u {q(user)} >/dev/null 2>&1; then echo user=yes; else echo user=no; fi",
        f"echo \"app_dir=$(stat -c '%U:%G:%a' {q(p.app_dir)} 2>/dev/null)\"",
        f"echo \"data_dir=$(stat -c '%U:%G:%a' {q(p.data_dir)} 2>/dev/null)\"",
        f"echo \"env_file_meta=$(stat -c '%U:%G:%a' {q(p.env_file)} 2>/dev/null)\"",
        f"echo \"dist=$(ls -d {q(p.venv)}/lib/python3*/site-packages/label_studio-*.dist-info 2>/dev/null | head -n 1)\"",
        f"if [ -x {q(p.venv_python)} ]; then echo venv=yes; else echo venv=no; fi",
        f"if [ -e {q(p.database)} ]; then echo db=yes; else echo db=no; fi",
        f"echo \"site_enabled=$(readlink {q(p.nginx_site_enabled)} 2>/dev/null)\"",
        "if [ -e /etc/nginx/sites-enabled/default ]; then echo default_site=yes; else echo default_site=no; fi",
        screen_probe(profile),
        "echo '[files]'",
        sha_line("env_file", p.env_file),
        sha_line("unit_file", p.unit_file),
        sha_line("screen_launcher", p.screen_launcher),
        sha_line("nginx_site", p.nginx_site),
        "echo '[db]'",
        f"if [ -e {q(p.database)} ]; then {join('python3', '-c', _DB_FACTS, p.database, admin_email)}; fi",
        "echo '[service]'",
        _show(f"{profile.service.name}.service", UNIT_PROPERTIES),
        "echo '[nginx]'",
        _show("nginx.service", UNIT_PROPERTIES),
        "echo '[sshd]'",
        "sshd -T 2>/dev/null | grep -i '^port ' || true",
        "echo '[ufw]'",
        "if command -v ufw >/dev/null; then ufw status 2>/dev/null; fi",
    )
