"""Template rendering: Jinja2 over templates/, StrictUndefined (a missing value is a bug, not a blank)."""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import jinja2

from tasks.core.database import client_env, label_studio_env
from tasks.core import media
from tasks.core.errors import ProfileError
from tasks.core.offsite import check_words, credential_properties, forget_words, restic_words
from tasks.core.offsite import litestream_config as litestream_yaml
from tasks.core.onserver import (app_server, media_copy, offsite_drill, offsite_files, offsite_history, offsite_watch,
                                 postgres_tool, prepare_database)
from tasks.core.onserver.instances import MANAGED_MARK as MANAGED
from tasks.core.profile import PROJECT_ROOT, Profile

TEMPLATES_DIR = PROJECT_ROOT / "templates"

APP_SERVER_SOURCE = Path(app_server.__file__).read_text()
PREPARE_DATABASE_SOURCE = Path(prepare_database.__file__).read_text()
# The release's read of every table, run by the app server's workers too (app_server.DATABASE_CHECK_PATH).
CHECK_DATABASE_SOURCE = (PROJECT_ROOT / "templates" / "scripts" / "check_database.py").read_text()
OFFSITE_DRILL_SOURCE = Path(offsite_drill.__file__).read_text()
OFFSITE_FILES_SOURCE = Path(offsite_files.__file__).read_text()
MEDIA_COPY_SOURCE = Path(media_copy.__file__).read_text()
OFFSITE_WATCH_SOURCE = Path(offsite_watch.__file__).read_text()
OFFSITE_HISTORY_SOURCE = Path(offsite_history.__file__).read_text()
PGTOOL_SOURCE = Path(postgres_tool.__file__).read_text()

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,
)
_env.filters["shquote"] = lambda value: shlex.quote(str(value))


@dataclass(frozen=True)
class NginxTls:
    """The HTTPS server block's settings, as far as they depend on the server (facts)."""

    certificate: PurePosixPath      # full chain, leaf first
    key: PurePosixPath
    trusted: PurePosixPath          # the issuer chain, for OCSP stapling verification
    http2_directive: bool           # nginx >= 1.25.1 takes `http2 on;` (older: `listen ... http2`)
    stapling: bool
    resolvers: tuple[str, ...] = ()
    hsts: bool = False


@dataclass(frozen=True)
class RenderedFile:
    """A file as it should be on the server."""

    path: PurePosixPath
    content: str
    mode: str  # octal, as `install -m` takes it
    owner: str
    group: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content.encode()).hexdigest()


def render(template: str, **values) -> str:
    return _env.get_template(template).render(**values)


def context(profile: Profile, *, ipv6: bool = False) -> dict:
    return {
        # Cookies travel encrypted only when users open an https:// URL (TLS here, or at a balancer in front).
        "secure": profile.tls.enabled or profile.url.startswith("https://"),
        "url": profile.url,
        "origin": profile.origin,
        "server_name": profile.effective_server_name,
        "http_port": profile.http_port,
        "ipv6": ipv6,
        "paths": profile.remote,
        "label_studio": profile.label_studio,
        "service": profile.service,
        "nginx": profile.nginx,
        "database": profile.database,
        "database_env": label_studio_env(profile.database, str(profile.remote.database_ca)),
        "database_described": profile.database.describe(),
        "offsite": profile.offsite,
        "media": profile.media,
        "media_env": media.label_studio_env(profile.media),
        "media_proxy": media.download_proxy(profile.media),
    }


def env_file(profile: Profile, *, group: str, mode: str) -> RenderedFile:
    """Always root's (the service user must not be able to change what root's scripts read); `group`
    and `mode` say who else reads it."""
    return RenderedFile(profile.remote.env_file, render("label-studio.env.j2", **context(profile)),
                        mode, "root", group)


def unit_file(profile: Profile) -> RenderedFile:
    return RenderedFile(profile.remote.unit_file,
                        render("systemd/label-studio.service.j2", **context(profile)), "0644", "root", "root")


def screen_launcher(profile: Profile) -> RenderedFile:
    return RenderedFile(profile.remote.screen_launcher,
                        render("screen/start-label-studio.sh.j2", **context(profile)), "0755", "root", "root")


def nginx_site(profile: Profile, *, ipv6: bool, tls: NginxTls | None = None,
               acme_webroot: PurePosixPath | None = None, site_packages: str | None = None) -> RenderedFile:
    """Plain HTTP, or (with `tls`) HTTPS with port 80 redirecting; `acme_webroot` serves http-01 answers;
    the static files come straight from the current release's `site_packages` (relative to it)."""
    static_root = profile.remote.current / site_packages if site_packages else None
    content = render("nginx/label-studio.conf.j2", **context(profile, ipv6=ipv6), tls=tls, acme_webroot=acme_webroot,
                     static_root=static_root)
    return RenderedFile(profile.remote.nginx_site, content, "0644", "root", "root")


def app_server_config(profile: Profile) -> RenderedFile:
    """gunicorn's settings: tasks/core/onserver/app_server.py followed by this host's."""
    content = (f"# {MANAGED} (`fab provision`): edit configs/<host>.yaml instead.\n"
               + APP_SERVER_SOURCE
               + app_server.SETTINGS.format(port=int(profile.label_studio.port), workers=int(profile.label_studio.workers))
               + f"DATABASE_CHECK_SOURCE = {CHECK_DATABASE_SOURCE!r}\n")
    return RenderedFile(profile.remote.gunicorn_conf, content, "0644", "root", "root")


def prepare_database_script(profile: Profile) -> RenderedFile:
    """tasks/core/onserver/prepare_database.py, run before each start of the app server."""
    return RenderedFile(profile.remote.prepare_database,
                        f"# {MANAGED} (`fab provision`).\n" + PREPARE_DATABASE_SOURCE, "0644", "root", "root")


def offsite_unit(profile: Profile) -> RenderedFile:
    """The replication service (Litestream), part of Label Studio's unit; profile.offsite must be on."""
    content = render("systemd/offsite.service.j2", **_offsite_values(profile))
    return RenderedFile(profile.remote.offsite_unit, content, "0644", "root", "root")


def exec_line(*words: str | PurePosixPath) -> str:
    """Words for a unit's ExecStart=: '%' and '$' doubled (systemd's specifiers and its expansion of
    variables: a program given ${CREDENTIALS_DIRECTORY} expands it itself), each word quoted when it
    needs it (the profile's values are checked to hold no quote)."""
    quoted = []
    for word in map(str, words):
        word = word.replace("%", "%%").replace("$", "$$")
        quoted.append(f'"{word}"' if not word or any(c in word for c in " \t;\\'") else word)
    return " ".join(quoted)


def _offsite_values(profile: Profile) -> dict:
    target = profile.offsite.parsed
    assert target is not None
    p = profile.remote
    restic = restic_words(profile.offsite, p.restic_cache)
    history = []
    if profile.offsite.checks_history:
        history = ["--", p.offsite_python, "-I", p.offsite_history, target.bucket, target.prefix,
                   profile.offsite.s3_endpoint or "", profile.offsite.s3_region]
    # PostgreSQL: no stream (offsite_drill.NO_LITESTREAM), no replication unit for the watch to see.
    litestream = p.litestream_bin if profile.offsite_streams_database else "-"
    units = [p.offsite_unit.name] if profile.offsite_streams_database else []
    drill = exec_line("/usr/bin/python3", "-I", p.offsite_drill, litestream, p.litestream_config, p.database,
                      p.offsite_state, p.drill_result, "--", *restic, "--", *check_words(), *history)
    dump = []
    if not profile.offsite_streams_database:
        env = client_env(profile.database, str(p.database_ca))
        dump = ["--", p.database_env, p.venv_python, p.offsite_pgtool, *(f"{key}={value}" for key, value in env)]
    bucket = []
    if profile.media.in_bucket:
        where = profile.media.bucket
        bucket = ["--", "bucket", p.media_env, p.venv_python, p.offsite_copier, "list", p.media_dir, p.media_state,
                  where.bucket, where.prefix, profile.media.endpoint, profile.media.s3_region]
    files = exec_line("/usr/bin/python3", "-I", p.offsite_files, profile.service.user, profile.offsite_user,
                      p.data_dir, p.offsite_state, "--", *restic, "--", *forget_words(profile.offsite), *dump, *bucket)
    watch = exec_line("/usr/bin/python3", "-I", p.offsite_watch, p.watch_state, p.drill_result, p.offsite_python,
                      litestream, p.litestream_config, p.database, "--", *units, "--",
                      p.files_timer.name, p.drill_timer.name, "--", p.files_unit.name, p.drill_unit.name)
    return {**context(profile), "target": target.describe(), "offsite_user": profile.offsite_user,
            "credentials": profile.offsite.needs_credentials,
            "sftp_credentials": credential_properties(profile.offsite, p.offsite_key),
            "target_path": target.path if target.kind == "path" else None, "drill_exec": drill, "files_exec": files,
            "bucket_listing": profile.media.in_bucket,
            "watch_exec": watch}


def _program(path: PurePosixPath, source: str) -> RenderedFile:
    return RenderedFile(path, f"# {MANAGED} (`fab provision`).\n" + source, "0644", "root", "root")


def _unit(path: PurePosixPath, template: str, values: dict) -> RenderedFile:
    return RenderedFile(path, render(template, **values), "0644", "root", "root")


def offsite_drill_files(profile: Profile) -> dict[str, RenderedFile]:
    """The restore drill, the snapshots of .env and media and the watch: their programs, units and
    timers (probes.managed_files' keys)."""
    p = profile.remote
    values = _offsite_values(profile)
    return {
        "offsite_drill": _program(p.offsite_drill, OFFSITE_DRILL_SOURCE),
        "drill_unit": _unit(p.drill_unit, "systemd/offsite-drill.service.j2", values),
        "drill_timer": _unit(p.drill_timer, "systemd/offsite-drill.timer.j2", values),
        "offsite_files": _program(p.offsite_files, OFFSITE_FILES_SOURCE),
        "files_unit": _unit(p.files_unit, "systemd/offsite-files.service.j2", values),
        "files_timer": _unit(p.files_timer, "systemd/offsite-files.timer.j2", values),
        "offsite_watch": _program(p.offsite_watch, OFFSITE_WATCH_SOURCE),
        "watch_unit": _unit(p.watch_unit, "systemd/offsite-watch.service.j2", values),
        "watch_timer": _unit(p.watch_timer, "systemd/offsite-watch.timer.j2", values),
        "offsite_history": _program(p.offsite_history, OFFSITE_HISTORY_SOURCE),
        **({} if profile.offsite_streams_database else {"offsite_pgtool": _program(p.offsite_pgtool, PGTOOL_SOURCE)}),
        **({"offsite_copier": _program(p.offsite_copier, MEDIA_COPY_SOURCE)} if profile.media.in_bucket else {}),
    }


def litestream_config(profile: Profile) -> RenderedFile:
    """Litestream's settings (no secret in them); profile.offsite must be on."""
    p = profile.remote
    return RenderedFile(p.litestream_config, litestream_yaml(profile.offsite, p.database, p.litestream_meta),
                        "0644", "root", "root")


def database_ca(profile: Profile) -> RenderedFile | None:
    """database.ca_file, read on this machine, for the server (public: the service user reads it too);
    None without one. ProfileError when it is not a readable PEM certificate."""
    local = profile.database.ca_file
    if local is None:
        return None
    path = Path(local).expanduser()
    try:
        content = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"database.ca_file {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    if "-----BEGIN CERTIFICATE-----" not in content:
        raise ProfileError(f"database.ca_file {path}: not a PEM certificate (no BEGIN CERTIFICATE line)")
    return RenderedFile(profile.remote.database_ca, content, "0644", "root", "root")


def certbot_deploy_hook(profile: Profile) -> RenderedFile:
    return RenderedFile(profile.remote.acme_deploy_hook, render("certbot/deploy-hook.sh.j2", **context(profile)),
                        "0755", "root", "root")
