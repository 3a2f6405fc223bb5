"""The site's load balancer: HAProxy from Debian, its probe, its configuration checked before it is put in
place, and its runtime API (root's socket) for drain and ready. Server names come from the site file
(ssh_config aliases, checked there), never from anything a server printed."""

from __future__ import annotations

from pathlib import PurePosixPath

from tasks.core.commands import join, lines, q
from tasks.core.commands.probes import FIREWALL_PROBE, OS_RELEASE, file_content_line, secret_lines, unit_show
from tasks.core.commands.tls import self_signed_request
from tasks.core.site import BACKEND, PATHS

PACKAGES = ("haproxy", "socat", "openssl", "ufw")
UNIT = "haproxy.service"


def probe() -> str:
    """Every fact the balancer's plan compares against, and HAProxy's view of the app VMs."""
    return lines(
        "echo '[packages]'",
        f"dpkg-query -W -f='${{Package}} ${{db:Status-Status}}\\n' {join(*PACKAGES)} 2>/dev/null || true",
        "echo '[host]'",
        *OS_RELEASE,
        "echo '[files]'",
        file_content_line("config", PATHS.config),
        *secret_lines("pem", PATHS.pem),
        "echo '[haproxy]'",
        unit_show(UNIT),
        *FIREWALL_PROBE,
        "echo '[stat]'",
        f"if [ -S {q(PATHS.socket)} ]; then {runtime('show stat')} 2>/dev/null; fi",
    )


def runtime(command: str) -> str:
    """One command to HAProxy's runtime API; its answer on stdout."""
    return f"echo {q(command)} | socat -t 5 stdio UNIX-CONNECT:{q(PATHS.socket)}"


def set_state(server: str, state: str) -> str:
    """drain (no new requests; open ones finish), ready (back in), maint (out, checks stopped)."""
    assert state in ("drain", "ready", "maint")
    return runtime(f"set server {BACKEND}/{server} state {state}")


def _stat_field(server: str, name: str) -> str:
    """Prints one field of the server's `show stat` row (found by the CSV header)."""
    program = ('NR == 1 { sub(/^# /, ""); for (i = 1; i <= NF; i++) col[$i] = i; next } '
               '$1 == px && $2 == sv { print $col[f] }')
    return f"{runtime('show stat')} | awk -F, -v px={q(BACKEND)} -v sv={q(server)} -v f={q(name)} {q(program)}"


def _poll(body: str, timeout: int, give_up: str) -> str:
    """`body` every 0.2 s on the balancer (one round trip): it exits 0 once it sees what is waited for;
    `give_up` (it exits 1) once `timeout` seconds have passed."""
    return (f"end=$(( $(date +%s) + {int(timeout)} )); "
            f"while :; do {body} [ $(date +%s) -ge $end ] && {{ {give_up} }}; sleep 0.2; done")


def wait_drained(server: str, timeout: int) -> str:
    """Until no request is open on the server. Prints the last count; exits 1 at the timeout."""
    return _poll(f"n=$({_stat_field(server, 'scur')}); [ \"$n\" = 0 ] && {{ echo 0; exit 0; }};", timeout,
                 'echo "$n"; exit 1;')


def wait_status(server: str, want: str, timeout: int) -> str:
    """Until HAProxy's own checks give the server the status `want` (UP, DOWN ...). Prints the last one."""
    return _poll(f"s=$({_stat_field(server, 'status')}); [ \"$s\" = {q(want)} ] && {{ echo \"$s\"; exit 0; }};",
                 timeout, 'echo "$s"; exit 1;')


def wait_any_up(servers: list[str], timeout: int) -> str:
    """Until HAProxy's own checks see one of the servers UP; prints its name (exit 1: none within timeout)."""
    return _poll(" ".join(f'[ "$({_stat_field(server, "status")})" = UP ] && {{ echo {q(server)}; exit 0; }};'
                          for server in servers), timeout, "exit 1;")


def install_config(staged: PurePosixPath) -> str:
    """HAProxy checks the new file first (exit 3 when it refuses it: the old one keeps serving); one that
    is not ours is kept aside once; then in place by rename and a reload (no connection dropped)."""
    target = PATHS.config
    return (f"haproxy -c -q -f {q(staged)} >&2 || exit 3; "
            f"if [ -f {q(target)} ] && ! grep -q '^# Managed by labelstudio-vm' {q(target)} && "
            f"[ ! -e {q(str(target) + '.before-lsvm')} ]; then cp -p {q(target)} {q(str(target) + '.before-lsvm')}; fi; "
            f"install -m 0644 -o root -g root {q(staged)} {q(str(target) + '.lsvm-new')} && "
            f"mv -f {q(str(target) + '.lsvm-new')} {q(target)}")


RELOAD = "systemctl enable --quiet haproxy && systemctl reload-or-restart haproxy"


def self_signed_pem(name: str) -> str:
    """A key and a self-signed certificate for `name`, made on the balancer (the key never travels), in
    the one root-only file HAProxy reads (certificate, then key). Prints its SHA-256 fingerprint."""
    pem = PATHS.pem
    key, cert, new = (PurePosixPath(f"{pem}.{n}") for n in ("key-new", "crt-new", "lsvm-new"))
    request = self_signed_request(name, key, cert)
    return (f"install -d -m 0700 -o root -g root {q(pem.parent)} && "
            f"(umask 077 && {request} 2>/dev/null && cat {q(cert)} {q(key)} > {q(new)}) && "
            f"rm -f {q(key)} {q(cert)} && mv -f {q(new)} {q(pem)} && "
            f"openssl x509 -noout -fingerprint -sha256 -in {q(pem)}")
