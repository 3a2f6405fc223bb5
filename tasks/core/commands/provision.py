"""The scripts provision runs as root: packages, user, directories, venv, files, nginx, ufw, admin."""

from __future__ import annotations

from pathlib import PurePosixPath

from tasks.core import parse
from tasks.core.commands import as_service_user, join, q, service_python
from tasks.core.commands.service import service_manager
from tasks.core.database import PASSWORD_KEY
from tasks.core.profile import Profile

BASE_PACKAGES = ("python3-venv", "nginx", "sqlite3", "zstd", "python3-xxhash")
ALL_PACKAGES = (*BASE_PACKAGES, "ufw", "screen", "certbot", "openssl", "postgresql", "postgresql-client", "restic")
DEFAULT_SITE = PurePosixPath("/etc/nginx/sites-enabled/default")


def wanted_packages(profile: Profile) -> list[str]:
    packages = list(BASE_PACKAGES)
    if profile.firewall.enabled:
        packages.append("ufw")
    packages += service_manager(profile).packages
    packages += {"acme": ["certbot"], "self-signed": ["openssl"]}.get(profile.tls.mode, [])
    if profile.database.postgresql:
        # pg_dump and psql for the data tasks; the server itself when it runs on the VM.
        packages.append("postgresql" if profile.database.local else "postgresql-client")
    if profile.offsite.enabled:
        packages.append("restic")    # .env and media to the offsite target
    return packages


def apt_install(packages: list[str]) -> str:
    return ("export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && "
            f"apt-get install -y -qq --no-install-recommends {join(*packages)}")


def create_system_user(name: str, home: PurePosixPath) -> str:
    """A system user with a group of its own, no login, and a home it does not get made."""
    return join("useradd", "--system", "--user-group", "--home-dir", home, "--no-create-home",
                "--shell", "/usr/sbin/nologin", name)


def create_service_user(profile: Profile) -> str:
    return create_system_user(profile.service.user, profile.remote.data_dir)


def make_dir(path: PurePosixPath, owner: str, group: str, mode: str) -> str:
    made = join("install", "-d", "-m", mode, "-o", owner, "-g", group, path)
    if int(mode, 8) & 0o2000:
        return made
    # install (like chmod) keeps a directory's setgid bit under a numeric mode: cleared in words.
    return f"{made} && chmod g-s {q(path)}"


def set_owner_and_mode(path: PurePosixPath, owner: str, group: str, mode: str) -> str:
    return f"chown {q(owner)}:{q(group)} {q(path)} && chmod {q(mode)} {q(path)}"


RELEASE_COMPLETE = ".lsvm-complete"  # in a release's venv once pip finished: anything else is rebuilt
UV = "uv==0.13.9"
APP_SERVER_VERSION = "23.0.0"
APP_SERVER = f"gunicorn=={APP_SERVER_VERSION}"   # the WSGI server in every release venv (docs/app-server.md)


def build_release(profile: Profile, version: str) -> str:
    """A venv of its own for `version` in releases/<version>/ (root's, like every file the service
    runs), built beside the running one: no service impact. A half-built one is removed first.
    label-studio goes in with uv (measured on the test VM: 58 s with uv fetched first, 76 s with pip
    alone), bytecode compiled as pip does (the service user cannot write .pyc files into root's venv).
    uv reads no pip.conf, so pip's `cert` goes to it as SSL_CERT_FILE; should uv fail anyway, pip
    installs as before."""
    venv = profile.release_dir(version)
    python = venv / "bin" / "python"
    pip, uv = pip_options(profile), ["-q", "--python", python, "--compile-bytecode"] + index_options(profile)
    wanted = join("label-studio==" + version, APP_SERVER)
    install = (f"{{ {q(python)} -m pip install {join(*pip)} {q(UV)} && "
               f"cert=$({q(python)} -m pip config list 2>/dev/null | sed -n \"s/^global\\.cert='\\(.*\\)'\\$/\\1/p\" "
               "| tail -n 1) && "
               f"{{ [ -z \"$cert\" ] || export SSL_CERT_FILE=\"$cert\"; }} && "
               f"{q(venv / 'bin' / 'uv')} pip install {join(*uv)} {wanted}; }} || "
               f"{q(python)} -m pip install {join(*pip)} {wanted}")
    # A release built before the toolkit served Label Studio with gunicorn gets it when reused.
    app_server = add_app_server(profile, venv)
    return (f"install -d -m 0755 -o root -g root {q(profile.remote.releases_dir)} && "
            f"{{ [ -e {q(venv / RELEASE_COMPLETE)} ] || {{ rm -rf {q(venv)} && python3 -m venv {q(venv)} && "
            f"{{ {install}; }} && : > {q(venv / RELEASE_COMPLETE)}; }}; }} && "
            f"{{ [ -x {q(venv / 'bin' / 'gunicorn')} ] || {app_server}; }}")


def index_options(profile: Profile) -> list[str]:
    return ["--index-url", profile.pip.index_url] if profile.pip.index_url else []


def pip_options(profile: Profile) -> list[str]:
    return ["--disable-pip-version-check", "--root-user-action=ignore", "-q", *index_options(profile)]


def add_app_server(profile: Profile, release: PurePosixPath | None = None) -> str:
    """gunicorn into a release built before the toolkit served Label Studio with it: the current one, or
    `release` (a release folder, or a link in the app dir)."""
    python = (release or profile.remote.current) / "bin" / "python"
    return join(python, "-m", "pip", "install", *pip_options(profile), APP_SERVER)


def switch_release(profile: Profile, target: str) -> str:
    """Point `current` at `target` (relative to the app dir: releases/<version>, or the venv of
    earlier toolkit versions), keeping the release it pointed at as `previous`: renames of links, so
    the unit never sees a half switch."""
    p = profile.remote
    current, previous = q(p.current), q(p.previous)
    return (f"old=$(readlink {current} || true); "
            f"if [ -n \"$old\" ] && [ \"$old\" != {q(target)} ]; then "
            f"ln -sfn \"$old\" {previous}.lsvm-new && mv -T {previous}.lsvm-new {previous}; fi; "
            f"ln -sfn {q(target)} {current}.lsvm-new && mv -T {current}.lsvm-new {current}")


def pip_install_label_studio(profile: Profile, *, copy_database_from: str | None) -> str:
    """Build the pinned release; `copy_database_from` (the installed version) first keeps a consistent
    copy of the database: a new release migrates it one way."""
    script = build_release(profile, profile.label_studio.version)
    if copy_database_from is None:
        return script
    return f"{pre_upgrade_copy(profile, copy_database_from)} && {script}"


def pre_upgrade_copy(profile: Profile, old_version: str) -> str:
    """SQLite's online backup of the database into <data_dir>/pre-upgrade/, made by the service user
    in its own data dir (root never writes through a path that user can replace); prints where."""
    copy = ('umask 077 && mkdir -p pre-upgrade && '
            'sqlite3 -init /dev/null label_studio.sqlite3 ".backup pre-upgrade/label_studio-$1-$2.sqlite3" && '
            'echo "database copied to $(pwd)/pre-upgrade/label_studio-$1-$2.sqlite3 before the upgrade"')
    return ("stamp=$(date -u +%Y%m%dT%H%M%SZ) && "
            + as_service_user(profile, "sh", "-c", copy, "sh", old_version) + ' "$stamp"')


def apply_nginx_site(profile: Profile, staged: PurePosixPath | None, *, previous_exists: bool) -> str:
    """Site file (from `staged`, when it changed), enable link and default site in one step, validated
    by `nginx -t`. If the test fails, everything goes back as it was (exit 3, the error on stderr) and
    nginx keeps serving; reloading is the caller's next step."""
    p = profile.remote
    path, link, default = p.nginx_site, p.nginx_site_enabled, DEFAULT_SITE
    keep = PurePosixPath(f"{path}.lsvm-previous")
    if staged is not None:
        save = f"cp -p {q(path)} {q(keep)}" if previous_exists else f"rm -f {q(keep)}"
        put_back = f"mv -f {q(keep)} {q(path)}" if previous_exists else f"rm -f {q(path)}"
        write = (f"{save} && install -m 0644 -o root -g root {q(staged)} {q(path)}.lsvm-new && "
                 f"mv -f {q(path)}.lsvm-new {q(path)}")
    else:
        write, put_back = "true", "true"
    return (
        f"had_link=$(readlink {q(link)} || true); had_default=$(readlink {q(default)} || true); "
        f"{write} && ln -sfn {q(path)} {q(link)} && rm -f {q(default)} && "
        f"if out=$(nginx -t 2>&1); then rm -f {q(keep)}; else "
        f"{put_back}; "
        f"if [ -n \"$had_link\" ]; then ln -sfn \"$had_link\" {q(link)}; else rm -f {q(link)}; fi; "
        f"if [ -n \"$had_default\" ]; then ln -sfn \"$had_default\" {q(default)}; fi; "
        "echo \"$out\" | grep -v 'test failed' | grep -m1 -E 'emerg|error' >&2; exit 3; fi"
    )


RELOAD_NGINX = "systemctl reload-or-restart nginx"
DAEMON_RELOAD = "systemctl daemon-reload"
ENABLE_UFW = "ufw --force enable"


def ufw_allow(rule: str) -> str:
    return join("ufw", "allow", rule)


def ufw_allow_from(source: str, port: int, comment: str = "") -> str:
    words = ["comment", comment] if comment else []
    return join("ufw", "allow", "from", source, "to", "any", "port", int(port), "proto", "tcp", *words)


def ufw_delete_allow(port: int) -> str:
    """The rule `ufw_allow(f"{port}/tcp")` adds, removed."""
    return join("ufw", "delete", "allow", f"{int(port)}/tcp")


def ensure_admin(profile: Profile, script: PurePosixPath, request: PurePosixPath) -> str:
    """Run templates/scripts/ensure_admin.py (uploaded to `script`) with the service's venv, as the
    service user, with the service's environment; the request (with the password) comes on stdin."""
    return f"{release_python(profile)} \"$(cat {q(script)})\" < {q(request)}"


def release_python(profile: Profile, *extra: str, timeout: int | None = None,
                   python: PurePosixPath | None = None) -> str:
    """service_python with the service's environment (`extra` assignments after it), for `-c SOURCE`.
    The environment comes from the env file as we render it, never by root sourcing a file on the server."""
    environment = [f"{key}={value}" for key, value in parse.env_assignments(service_manager(profile).env_file().content)]
    password = ""
    if profile.database.postgresql:
        # Inherited from this root shell (runuser keeps the environment): never argv.
        password = (f"POSTGRE_PASSWORD=$(sed -n {q('s/^' + PASSWORD_KEY + '=//p')} {q(profile.remote.database_env)}) "
                    "&& export POSTGRE_PASSWORD && ")
    return f"{password}{service_python(profile, *environment, *extra, timeout=timeout, python=python)}"
