"""Probes: one script per task that reads every fact it needs in one round trip, as `[section]`
headers and key=value lines (parsed by tasks.core.parse, read by tasks.core.provision.facts). Probes change nothing."""

from __future__ import annotations

from pathlib import PurePosixPath

from tasks.core.commands import as_service_user, dbcheck, join, lines, offsite, postgres, q, secret_key
from tasks.core.commands.instances import detect
from tasks.core.commands.provision import ALL_PACKAGES, RELEASE_COMPLETE
from tasks.core.commands.service import health_probe, screen_probe
from tasks.core.offsite import APPRISE_CLI, BOTO3_VERSION, RESTIC
from tasks.core.onserver.instances import MANAGED_MARK
from tasks.core.profile import Profile

UNIT_PROPERTIES = ("LoadState", "ActiveState", "SubState", "UnitFileState", "MainPID")

# `os=`, `os_id=` and `os_version=` lines from /etc/os-release (read by `.`: it is shell syntax).
OS_RELEASE = (
    ". /etc/os-release 2>/dev/null; echo \"os=${PRETTY_NAME:-unknown}\"",
    "echo \"os_id=${ID:-}\"; echo \"os_version=${VERSION_ID:-}\"",
)
PYTHON3_VERSION = "echo \"python3=$(python3 -c 'import platform;print(platform.python_version())' 2>/dev/null)\""
SYSTEMD = "if [ -d /run/systemd/system ]; then echo systemd=yes; else echo systemd=no; fi"


# Something answers where Label Studio's settings look for Redis (RQ_QUEUES: localhost:6379)?
REDIS_ANSWERS = ("if python3 -c \"import socket; socket.create_connection(('localhost', 6379), 2).close()\" "
                 "2>/dev/null; then echo redis=yes; else echo redis=no; fi")


def unit_show(unit: str) -> str:
    return f"systemctl show --no-pager -p {','.join(UNIT_PROPERTIES)} {q(unit)} 2>/dev/null || true"


def installed_dist(profile: Profile) -> str:
    """`dist=<path of label_studio-*.dist-info>` and `app_server=<path of gunicorn-*.dist-info>` in the
    current release, `previous_app_server=` in the previous one, `legacy_app_server=` in the single venv of
    earlier toolkit versions, or empty."""
    p = profile.remote
    current, previous, legacy = q(p.venv), q(p.previous), q(p.legacy_venv)
    return "; ".join(
        f"echo \"{key}=$(ls -d {venv}/lib/python3*/site-packages/{package}-*.dist-info 2>/dev/null | head -n 1)\""
        for key, venv, package in (("dist", current, "label_studio"), ("app_server", current, "gunicorn"),
                                   ("previous_app_server", previous, "gunicorn"),
                                   ("legacy_app_server", legacy, "gunicorn")))


def release_lines(profile: Profile) -> tuple[str, ...]:
    """`current=`/`previous=` (link targets), `releases=` (complete release venvs), `legacy_dist=`
    (the dist-info in the single venv of earlier toolkit versions)."""
    p = profile.remote
    return (
        f"echo \"current=$(readlink {q(p.current)} 2>/dev/null)\"",
        f"echo \"previous=$(readlink {q(p.previous)} 2>/dev/null)\"",
        f"echo \"releases=$(for m in {q(p.releases_dir)}/*/{RELEASE_COMPLETE}; do [ -e \"$m\" ] && "
        "basename \"$(dirname \"$m\")\"; done | tr '\\n' ' ')\"",
        f"echo \"legacy_dist=$(ls -d {q(p.legacy_venv)}/lib/python3*/site-packages/label_studio-*.dist-info "
        "2>/dev/null | head -n 1)\"",
    )


def app_server_processes(profile: Profile) -> str:
    """`pid ppid rss_kb` of each gunicorn process (master and workers) run with our config. awk joins
    the two halves of what it looks for, so no command line of this probe matches itself."""
    p = profile.remote
    return (f"ps -eo pid=,ppid=,rss=,args= | awk -v a={q(p.gunicorn_bin)} -v b={q('--config ' + str(p.gunicorn_conf))} "
            "'index($0, a \" \" b) {print $1, $2, $3}'")


def status_probe(profile: Profile) -> str:
    """Every fact `status` shows."""
    p = profile.remote
    return lines(
        "echo '[host]'",
        *OS_RELEASE,
        "echo \"kernel=$(uname -r)\"",
        PYTHON3_VERSION,
        SYSTEMD,
        f"d={q(p.data_dir)}; while [ ! -e \"$d\" ]; do d=$(dirname \"$d\"); done",
        "echo \"disk=$(df -B1 --output=avail,target \"$d\" | tail -n 1)\"",
        "echo '[install]'",
        f"if [ -x {q(p.label_studio_bin)} ]; then echo installed=yes; else echo installed=no; fi",
        installed_dist(profile),
        *release_lines(profile),
        f"echo \"db_size=$(stat -c %s {q(p.database)} 2>/dev/null)\"",
        file_content_line("env_file", p.env_file),  # says which database Label Studio runs on (no secret in it)
        f"if [ -f {q(p.unit_file)} ]; then echo unit_file=yes; else echo unit_file=no; fi",
        # A site of that name written by hand (the seed guide's) is not ours.
        f"if [ -e {q(p.nginx_site_enabled)} ] && grep -qsF {q(MANAGED_MARK)} {q(p.nginx_site)}; "
        "then echo nginx_site=yes; else echo nginx_site=no; fi",
        screen_probe(profile),
        "echo '[service]'",
        unit_show(profile.service.unit),
        "echo '[app_server]'",
        app_server_processes(profile),
        "echo '[nginx]'",
        unit_show("nginx.service"),
        "echo '[health]'",
        f"h=; if command -v nginx >/dev/null; then "
        f"h=$({health_probe(profile, via_nginx=True)}); echo \"via_nginx=$h\"; fi",
        "echo '[database]'",
        # Only when our instance answers UP: that is the one status line the check decides.
        f"case \"$h\" in 200*UP*) if [ -x {q(p.venv_python)} ]; then "
        f"echo \"check=$({dbcheck.read_every_table(profile)} 2>/dev/null | tail -n 1)\"; fi;; esac",
        *served_certificate(profile),
        *postgres.status_lines(profile),
        *([offsite_report(profile)] if profile.offsite.enabled else []),
        "echo '[instances]'",
        detect(profile),
    )


# Reads the Label Studio DB read-only with python3's sqlite3 module (present on every Debian/Ubuntu), as
# the service user (the file is that user's: a view it planted can run an endless query), with a deadline
# inside (a progress handler interrupts the query) and `timeout` around it.
DB_PROBE_SECONDS = 15
_DB_FACTS = (
    "import sqlite3,sys,time\n"
    "try:\n"
    " c=sqlite3.connect('file:'+sys.argv[1]+'?mode=ro',uri=True,timeout=5)\n"
    f" d=time.monotonic()+{DB_PROBE_SECONDS}\n"
    " c.set_progress_handler(lambda:time.monotonic()>d,10000)\n"
    " print('users='+str(c.execute('select count(*) from htx_user').fetchone()[0]))\n"
    " print('admin='+('yes' if c.execute('select 1 from htx_user where email=?',(sys.argv[2],)).fetchone() else 'no'))\n"
    "except Exception as e:print('error='+type(e).__name__+': '+str(e).replace(chr(10),' '))\n"
)


def file_content_line(key: str, path: PurePosixPath) -> str:
    """`key=<base64 of the file>` (one line, whatever the file holds), or `key=-` when it is missing."""
    return (f"if [ -f {q(path)} ]; then printf '%s=' {q(key)}; base64 -w0 {q(path)}; echo; "
            f"else echo {q(key + '=-')}; fi")


def meta_line(key: str, path: PurePosixPath) -> str:
    """`key=owner:group:mode` as stat prints them, or `key=` when the path is missing."""
    return f"echo \"{key}=$(stat -c '%U:%G:%a' {q(path)} 2>/dev/null)\""


def managed_files(profile: Profile) -> dict[str, PurePosixPath]:
    """The files provision writes whole (their content is read so that plan mode can show a diff)."""
    p = profile.remote
    return {"env_file": p.env_file, "unit_file": p.unit_file, "screen_launcher": p.screen_launcher,
            "gunicorn_conf": p.gunicorn_conf, "prepare_database": p.prepare_database,
            "nginx_site": p.nginx_site, "deploy_hook": p.acme_deploy_hook, "database_ca": p.database_ca,
            "litestream_config": p.litestream_config, "offsite_unit": p.offsite_unit,
            "offsite_drill": p.offsite_drill, "drill_unit": p.drill_unit, "drill_timer": p.drill_timer,
            "offsite_files": p.offsite_files, "files_unit": p.files_unit, "files_timer": p.files_timer,
            "offsite_watch": p.offsite_watch, "watch_unit": p.watch_unit, "watch_timer": p.watch_timer,
            "offsite_history": p.offsite_history, "offsite_pgtool": p.offsite_pgtool, "offsite_copier": p.offsite_copier,
            "site_marker": p.site_marker}


# The `[sshd]`, `[ufw]` and `[ufw_rules]` sections: which ports SSH listens on and what ufw lets in.
FIREWALL_PROBE = (
    "echo '[sshd]'",
    "sshd -T 2>/dev/null | grep -iE '^(port|listenaddress) ' || true",
    "systemctl show --no-pager -p Listen ssh.socket 2>/dev/null || true",
    "echo '[ufw]'",
    "if command -v ufw >/dev/null; then ufw status 2>/dev/null; fi",
    "echo '[ufw_rules]'",
    "if command -v ufw >/dev/null; then ufw show added 2>/dev/null; fi",
)


def provision_probe(profile: Profile, admin_email: str) -> str:
    """Every fact provision compares against."""
    p = profile.remote
    user = profile.service.user
    return lines(
        "echo '[packages]'",
        f"dpkg-query -W -f='${{Package}} ${{db:Status-Status}}\\n' {join(*ALL_PACKAGES)} 2>/dev/null || true",
        "echo '[host]'",
        *OS_RELEASE,
        PYTHON3_VERSION,
        SYSTEMD,
        "if [ \"$(cat /proc/sys/net/ipv6/conf/all/disable_ipv6 2>/dev/null)\" = 0 ] && "
        "[ -s /proc/net/if_inet6 ]; then echo ipv6=yes; else echo ipv6=no; fi",
        f"if id -u {q(user)} >/dev/null 2>&1; then echo user=yes; else echo user=no; fi",
        meta_line("app_dir", p.app_dir),
        meta_line("data_dir", p.data_dir),
        meta_line("env_file_meta", p.env_file),
        # Read as the service user (empty when it or the data dir is missing yet: absent).
        f"echo \"secret_key=$({secret_key.on_server(profile, secret_key.state)} 2>/dev/null)\"",
        f"echo \"secret_key_sha256=$({secret_key.on_server(profile, secret_key.value_digest)} 2>/dev/null)\"",
        installed_dist(profile),
        *release_lines(profile),
        f"if [ -x {q(p.venv_python)} ]; then echo venv=yes; else echo venv=no; fi",
        REDIS_ANSWERS,
        # Whether the release's settings keep Redis off (then no background job is ever queued there).
        f"f=$(ls {q(p.venv)}/lib/python3*/site-packages/label_studio/core/settings/base.py 2>/dev/null | head -n 1); "
        "if [ -z \"$f\" ]; then echo redis_enabled=; elif grep -Eq '^REDIS_ENABLED *= *False' \"$f\"; "
        "then echo redis_enabled=no; else echo redis_enabled=maybe; fi",
        f"if [ -e {q(p.database)} ]; then echo db=yes; else echo db=no; fi",
        f"echo \"site_enabled=$(readlink {q(p.nginx_site_enabled)} 2>/dev/null)\"",
        "if [ -e /etc/nginx/sites-enabled/default ]; then echo default_site=yes; else echo default_site=no; fi",
        screen_probe(profile),
        "echo '[files]'",
        *(file_content_line(key, path) for key, path in managed_files(profile).items()),
        "echo '[db]'",
        f"if [ -e {q(p.database)} ]; then timeout -k 5 {DB_PROBE_SECONDS + 10} "
        f"{as_service_user(profile, 'python3', '-I', '-c', _DB_FACTS, p.database, admin_email)} "
        "|| echo 'error=the database could not be read in time'; fi",
        "echo '[service]'",
        unit_show(profile.service.unit),
        "echo '[nginx]'",
        unit_show("nginx.service"),
        *FIREWALL_PROBE,
        "echo '[instances]'",
        detect(profile),
        *tls_probe(profile),
        *postgres.probe(profile, admin_email),
        *offsite_probe(profile),
        *media_probe(profile),
    )


def media_probe(profile: Profile) -> list[str]:
    """The `[media]` section: the bucket's keys as a hash, and whether uploads are kept as local files."""
    p = profile.remote
    return ["echo '[media]'", *secret_lines("credentials", p.media_env),
            # As the service user: the media folder is its tree, never root's to walk.
            f"if [ -n \"$({as_service_user(profile, 'find', p.media_dir, '-mindepth', '2', '-type', 'f', '-print', '-quit')} "
            "2>/dev/null)\" ]; then echo local_files=yes; else echo local_files=no; fi"]


def secret_lines(key: str, path: PurePosixPath) -> list[str]:
    """`key_meta=owner:group:mode` and `key_sha256=` of a root-only file: a hash, never its content."""
    return [meta_line(f"{key}_meta", path),
            f"echo \"{key}_sha256=$(sha256sum {q(path)} 2>/dev/null | cut -d' ' -f1)\""]


def offsite_probe(profile: Profile) -> list[str]:
    """The `[offsite]` section and the units' of the provision probe (always: turning offsite off stops
    what runs). The secrets are read as hashes, never their content; restic's repository is looked for
    on the target once restic and its password are there."""
    p = profile.remote
    user = profile.offsite_user
    target = profile.offsite.parsed
    repository = []
    if target is not None:
        needed = offsite.env_files(profile) + ((p.offsite_key,) if profile.offsite.needs_key else ())
        ready = " && ".join(f"[ -f {q(path)} ]" for path in needed)
        look = offsite.as_replication_user(profile, *offsite.restic(profile, "cat", "config"))
        repository = [f"if [ -x {q(RESTIC)} ] && {ready} && {look} >/dev/null 2>&1; then echo restic_repository=yes; "
                      "else echo restic_repository=no; fi"]
    return [
        "echo '[offsite]'",
        f"if id -u {q(user)} >/dev/null 2>&1; then echo \"user=yes\"; echo \"groups=$(id -nG {q(user)})\"; "
        "else echo user=no; fi",
        meta_line("state_meta", p.offsite_state),
        meta_line("database_meta", p.database),
        *secret_lines("credentials", p.offsite_env),
        *secret_lines("restic_password", p.restic_env),
        *secret_lines("sftp_key", p.offsite_key),
        *secret_lines("notify", p.notify_env),
        f"echo \"litestream=$({q(p.litestream_bin)} version 2>/dev/null)\"",
        f"echo \"apprise=$({join(p.offsite_python, '-I', '-c', APPRISE_CLI, '--version')} 2>/dev/null | head -n 1)\"",
        f"echo \"boto3=$({join(p.offsite_python, '-I', '-c', BOTO3_VERSION)} 2>/dev/null)\"",
        *([meta_line("target_meta", target.path)] if target is not None and target.kind == "path" else []),
        *repository,
        *offsite_units(profile),
    ]


def offsite_units(profile: Profile) -> list[str]:
    p = profile.remote
    return ["echo '[offsite_unit]'", unit_show(p.offsite_unit.name), "echo '[drill_timer]'", unit_show(p.drill_timer.name),
            "echo '[files_timer]'", unit_show(p.files_timer.name), "echo '[files_unit]'", unit_show(p.files_unit.name),
            "echo '[watch_timer]'", unit_show(p.watch_timer.name)]


def _json_line(key: str, command: str) -> str:
    """`key=<its JSON on one line>`, or `key_error=<the last line it printed on stderr>` when it fails."""
    return (f"e=$(mktemp) && if out=$({command} 2>\"$e\"); then printf '%s=' {q(key)}; printf '%s' \"$out\" | "
            f"tr -d '\\n'; echo; else printf '%s=' {q(key + '_error')}; tail -n 1 \"$e\"; echo; fi; rm -f \"$e\"")


def offsite_report(profile: Profile) -> str:
    """`[offsite_report]`: Litestream's position in the database (`status -json`), the replica's restore
    points (`ltx -json -level all`), the last drill's result and restic's snapshots of .env and media,
    run as the replication user; then the units, in one round trip."""
    p = profile.remote
    as_user = offsite.as_replication_user
    status = as_user(profile, p.litestream_bin, "status", "-json", "-config", p.litestream_config)
    points = offsite.list_points(profile)
    # No result yet (the first drill runs at night, the first look within 10 minutes): an empty line.
    drill, watch = (as_user(profile, "sh", "-c", '[ ! -e "$1" ] || cat "$1"', "sh", path, secrets=())
                    for path in (p.drill_result, p.watch_state))
    # PostgreSQL streams nothing: its dumps are in restic's snapshots.
    stream = [_json_line("status", status), _json_line("points", points)] if profile.offsite_streams_database else []
    return lines("echo '[offsite_report]'", *stream,
                 _json_line("drill", drill), _json_line("files", offsite.list_files(profile)),
                 _json_line("watch", watch), *offsite_units(profile))


def tls_probe(profile: Profile) -> list[str]:
    """`[tls]` and `[certbot_timer]` sections of the provision probe (public files only: the key is
    read as a hash and an owner:group:mode, never its content)."""
    full, _, key = profile.remote.tls_files(profile.tls.mode)
    return [
        "echo '[tls]'",
        "echo \"nginx_version=$(nginx -v 2>&1 | sed -n 's|^nginx version: [a-z]*/\\([0-9.]*\\).*|\\1|p')\"",
        file_content_line("cert", full),
        f"echo \"key_sha256=$(sha256sum {q(key)} 2>/dev/null | cut -d' ' -f1)\"",
        meta_line("key_meta", key),
        file_content_line("renewal", profile.remote.acme_renewal),
        "echo \"resolvers=$(awk '/^nameserver/ {print $2}' /etc/resolv.conf 2>/dev/null | tr '\\n' ' ')\"",
        "echo '[certbot_timer]'",
        unit_show("certbot.timer"),
    ]


def served_certificate(profile: Profile) -> list[str]:
    """`[tls]` section of the status probe: the certificate nginx is configured to serve."""
    if not profile.tls.enabled:
        return []
    return ["echo '[tls]'", file_content_line("cert", profile.remote.tls_files(profile.tls.mode)[0])]


# Run as the login user (sudo drops it): where this SSH session comes from and which port it reached.
SSH_CONNECTION = "printf 'ssh_connection=%s\\n' \"$SSH_CONNECTION\""


# The source address of a host's route to another (a UDP socket's connect sends nothing): what the other's
# firewall and pg_hba see it as.
ROUTE_SOURCE = ("import socket, sys\n"
                "family, _, _, _, where = socket.getaddrinfo(sys.argv[1], 80, 0, socket.SOCK_DGRAM)[0]\n"
                "s = socket.socket(family, socket.SOCK_DGRAM)\n"
                "s.connect(where)\n"
                "print(s.getsockname()[0])\n")


def source_toward(address: str) -> str:
    """The address this host's connections to `address` come from (its route's source)."""
    return join("python3", "-I", "-c", ROUTE_SOURCE, address)
