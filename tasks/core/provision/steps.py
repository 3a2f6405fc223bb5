"""Provision as a plan: each step is a pure function of (facts, profile) returning Changes; what the
steps notify decides the handlers (daemon-reload, nginx reload, service start/restart, health gate,
admin), which run once, after every step. Unit-tested as a table in tests/unit/tables/test_steps.py."""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
from pathlib import PurePosixPath

from packaging.version import Version

from tasks.core import media, render
from tasks.core.commands import postgres, secret_key
from tasks.core.commands.provision import (
    APP_SERVER,
    APP_SERVER_VERSION,
    DAEMON_RELOAD,
    ENABLE_UFW,
    RELOAD_NGINX,
    add_app_server,
    apt_install,
    create_service_user,
    make_dir,
    pip_install_label_studio,
    set_owner_and_mode,
    switch_release,
    ufw_allow,
    ufw_allow_from,
    ufw_delete_allow,
    wanted_packages,
)
from tasks.core.commands.service import HTTPS_PORT, service_manager
from tasks.core.defaults import APT_TIMEOUT, PIP_TIMEOUT
from tasks.core.profile import Profile
from tasks.core.provision import offsite_steps, tls_steps
from tasks.core.provision.facts import ProvisionFacts
from tasks.core.provision.plan import (
    DAEMON_RELOAD_NEEDED,
    HEALTH,
    NGINX_RELOAD,
    RESTART,
    AdminRequest,
    Change,
    EnsureAdmin,
    NginxSite,
    Run,
    RunWithSecret,
    StoreDatabasePassword,
    WaitForHealth,
    managed_file,
    notified,
    unified_diff,
)
from tasks.core.provision.tls import Eab, LocalPair
from tasks.core.render import RenderedFile

# ------------------------------------------------------------------------------------------------
# Comparisons


def missing_packages(profile: Profile, facts: ProvisionFacts) -> list[str]:
    return [p for p in wanted_packages(profile) if p not in facts.installed_packages]


def wanted_dirs(profile: Profile) -> list[tuple[PurePosixPath, str, str]]:
    """(path, owner:group:mode as stat prints it, mode for install -d)."""
    user = profile.service.user
    p = profile.remote
    # offsite: the replication user (in the service user's group) makes the database's -wal and -shm
    # when Label Studio has not; setgid keeps them in that group.
    data = ("2770", "2770") if profile.offsite.enabled else ("750", "0750")
    return [(p.app_dir, "root:root:755", "0755"), (p.data_dir, f"{user}:{user}:{data[0]}", data[1])]


def ssh_ports(facts: ProvisionFacts) -> list[int]:
    """Every port sshd accepts on, and always the one this session came in on (22 when nothing says)."""
    ports = set(facts.sshd_ports) | ({facts.login_port} if facts.login_port else set())
    return sorted(ports or {22})


def firewall_rules_missing(profile: Profile, facts: ProvisionFacts) -> list[tuple[str, str]]:
    return rules_missing([profile.http_port] + ([HTTPS_PORT] if profile.tls.enabled else []), facts)


def rules_missing(ports: list[int], facts) -> list[tuple[str, str]]:
    """(ufw command, what it allows) for each port no rule opens yet: SSH first (so enabling never
    locks us out), then `ports`. A port opened only to some sources keeps that restriction; when this
    session's own address is not among them, only that address is added for the login port. `facts`:
    any with sshd_ports, login_port, client_ip and ufw_rules (a server's or a balancer's)."""
    missing = []
    for port in ssh_ports(facts) + ports:
        rules = [rule for rule in facts.ufw_rules if rule.covers(port)]
        if not rules:
            missing.append((ufw_allow(f"{port}/tcp"), f"{port}/tcp"))
        elif (port == facts.login_port and facts.client_ip
              and not any(rule.admits(facts.client_ip) for rule in rules)):
            missing.append((ufw_allow_from(facts.client_ip, port),
                            f"{port}/tcp from {facts.client_ip} (this SSH session; the existing restriction stays)"))
    return missing


def needs_password(facts: ProvisionFacts, admin: AdminRequest) -> bool:
    return admin.reset or (admin.email is not None and not facts.admin_exists)


# ------------------------------------------------------------------------------------------------
# Steps


def packages(facts: ProvisionFacts, profile: Profile) -> Change:
    missing = missing_packages(profile, facts)
    if not missing:
        return Change("packages are installed: " + ", ".join(wanted_packages(profile)))
    names = ", ".join(missing)
    return Change(f"installed {names}", True, plan=f"install {names}",
                  action=Run(apt_install(missing), "apt-get install", timeout=APT_TIMEOUT,
                             status=f"apt-get install {' '.join(missing)}"))


def service_user(facts: ProvisionFacts, profile: Profile) -> Change:
    user = profile.service.user
    if facts.user_exists:
        return Change(f"service user {user} exists")
    return Change(f"created system user {user}", True, plan=f"create system user {user}",
                  action=Run(create_service_user(profile), "useradd"))


def directories(facts: ProvisionFacts, profile: Profile) -> list[Change]:
    current = {profile.remote.app_dir: facts.app_dir_meta, profile.remote.data_dir: facts.data_dir_meta}
    changes = []
    for path, meta, mode in wanted_dirs(profile):
        if current[path] == meta:
            changes.append(Change(f"{path} is {meta}"))
            continue
        owner, group, _ = meta.split(":")
        state = f"was {current[path]}" if current[path] else "was missing"
        changes.append(Change(f"{path} set to {meta} ({state})", True, plan=f"set {path} to {meta} ({state})",
                              action=Run(make_dir(path, owner, group, mode), "install -d")))
    return changes


def label_studio_secret_key(facts: ProvisionFacts, profile: Profile, site_key: str | None = None) -> Change:
    """Written before Label Studio first starts (see commands.secret_key for why). A site's app VMs all
    get the site's key (`site_key`): sessions and API tokens made on one are valid on the others."""
    path = profile.remote.secret_env
    if site_key is not None:
        if facts.secret_key == secret_key.OK and facts.secret_key_sha256 == hashlib.sha256(site_key.encode()).hexdigest():
            return Change(f"Label Studio's SECRET_KEY is the site's ({path})")
        verb = "set" if facts.secret_key == secret_key.ABSENT else "replaced"
        restart = frozenset({RESTART}) if facts.secret_key != secret_key.ABSENT else frozenset()
        return Change(f"{verb} the SECRET_KEY in {path} with the site's (0600)", True,
                      plan=f"{'set' if verb == 'set' else 'replace'} the SECRET_KEY in {path} with the site's",
                      action=RunWithSecret(secret_key.on_server(profile, secret_key.install_from_stdin), f"{site_key}\n".encode(),
                                           "writing the site's SECRET_KEY"), notifies=restart)
    if facts.secret_key == secret_key.OK:
        return Change(f"Label Studio's SECRET_KEY is in {path}")
    if facts.secret_key == secret_key.UNREADABLE:
        done = (f"replaced the SECRET_KEY in {path}: Label Studio reads it back as empty (it starts with $), so it "
                "would make a new one at its next start")
        planned = f"replace the SECRET_KEY in {path}, which Label Studio reads back as empty (it starts with $)"
    else:
        done, planned = f"made Label Studio's SECRET_KEY ({path}, 0600)", f"make Label Studio's SECRET_KEY in {path}"
    return Change(done, True, plan=planned, action=Run(secret_key.on_server(profile, secret_key.ensure), "writing the SECRET_KEY"))


def version_problem(facts: ProvisionFacts, profile: Profile) -> str | None:
    """A release older than the installed one would run on a database a newer release migrated."""
    wanted, have = profile.label_studio.version, facts.label_studio_version
    if have and Version(wanted) < Version(have):
        return (f"label_studio.version {wanted} is older than the installed {have}: a database migrated by "
                f"{have} does not go back by installing an older release")
    return None


def label_studio(facts: ProvisionFacts, profile: Profile) -> list[Change]:
    """The pinned release in releases/<version>/ and `current` pointing at it. The single venv of
    earlier toolkit versions is taken over as it is when its version is the pinned one."""
    wanted, have = profile.label_studio.version, facts.label_studio_version
    target = f"releases/{wanted}"
    if have == wanted and facts.venv_exists:
        where = "the existing venv" if facts.current_release == "venv" else str(profile.release_dir(wanted))
        return [Change(f"label-studio {wanted} is installed ({where})"), *app_server(facts, profile)]
    if facts.current_release is None and facts.legacy_version == wanted:
        return [Change(f"took over {profile.remote.legacy_venv} (label-studio {wanted}) as the current release",
                       True, plan=f"take over {profile.remote.legacy_venv} (label-studio {wanted}) as the current "
                                  "release, without a reinstall",
                       action=Run(switch_release(profile, "venv"), "linking the current release"),
                       notifies=frozenset({RESTART})),
                *app_server(dataclasses.replace(facts, app_server_version=facts.legacy_app_server_version), profile)]
    have = have or facts.legacy_version
    changes = []
    if wanted not in facts.releases:
        done, planned = ((f"built label-studio {wanted} beside {have}", f"build label-studio {wanted} beside {have}")
                         if have else (f"installed label-studio {wanted}", f"install label-studio {wanted}"))
        script = pip_install_label_studio(profile, copy_database_from=have if have and facts.db_exists else None)
        changes.append(Change(f"{done} ({profile.release_dir(wanted)})", True, plan=planned,
                              action=Run(script, "pip install label-studio", timeout=PIP_TIMEOUT, show_output=True,
                                         status=f"pip install label-studio=={wanted} (a minute or more)")))
    verb = f"switched from {have} to" if have else "switched to"
    changes.append(Change(f"{verb} label-studio {wanted}", True, plan=f"make {wanted} the current release",
                          action=Run(switch_release(profile, target), "switching the current release"),
                          notifies=frozenset({RESTART})))
    return changes


def app_server(facts: ProvisionFacts, profile: Profile) -> list[Change]:
    """gunicorn in a release built before the toolkit served Label Studio with it (a release built now
    has it from the start): the current one, and the previous one, which `rollback` would start."""
    def added(which: str, have: str | None, release: PurePosixPath, notifies: frozenset[str]) -> Change:
        was = f" (was {have})" if have else ""
        return Change(f"installed gunicorn {APP_SERVER_VERSION} into the {which} release{was}", True,
                      plan=f"install gunicorn {APP_SERVER_VERSION} into the {which} release{was}",
                      action=Run(add_app_server(profile, release), "pip install gunicorn", timeout=PIP_TIMEOUT,
                                 status=f"pip install {APP_SERVER}"),
                      notifies=notifies)

    changes = [Change(f"gunicorn {APP_SERVER_VERSION} is in the current release")
               if facts.app_server_version == APP_SERVER_VERSION
               else added("current", facts.app_server_version, profile.remote.current, frozenset({RESTART}))]
    if facts.previous_release and facts.previous_app_server_version != APP_SERVER_VERSION:
        changes.append(added("previous", facts.previous_app_server_version, profile.remote.previous, frozenset()))
    return changes


def background_jobs(facts: ProvisionFacts, profile: Profile) -> list[Change]:
    """Label Studio's settings look for Redis on localhost:6379 (RQ_QUEUES). When something answers there,
    say where the background jobs (storage syncs, bulk deletes) run: in the request itself while the
    release keeps REDIS_ENABLED off (every open-source release so far), else no worker of ours runs them."""
    if not facts.redis_answers:
        return []
    found = "something answers on localhost:6379 (a Redis?)"
    if facts.redis_enabled == "no":
        return [Change(f"{found}: Label Studio queues no job there (its open-source settings keep REDIS_ENABLED "
                       "off); storage syncs and bulk deletes run in the request")]
    if facts.redis_enabled == "":
        return [Change(f"{found}: whether Label Studio would queue jobs there is read from its settings once it "
                       "is installed (every open-source release so far keeps REDIS_ENABLED off)")]
    return [Change(f"WARNING {found}: this release's settings may queue background jobs there, and no worker of "
                   "this toolkit runs them: stop that Redis, or run Label Studio's `rqworker` for it")]


SECRET_META = "root:root:600"


def database_password_needed(facts: ProvisionFacts, profile: Profile) -> bool:
    """An external PostgreSQL whose password is not stored yet, or no longer logs in."""
    db = profile.database
    return db.postgresql and not db.local and not (facts.postgres.secret_meta == SECRET_META and facts.postgres.login)


def database(facts: ProvisionFacts, profile: Profile, password: str | None = None) -> list[Change]:
    """PostgreSQL: on the VM, its settings (localhost only, scram-sha-256) then the role, its database
    and a password generated there; elsewhere, the password given on this machine stored on the VM."""
    db, pg = profile.database, facts.postgres
    secret = profile.remote.database_env
    if not db.postgresql:
        return []
    if not db.local:
        ca = render.database_ca(profile)
        # The CA first: the password's login test below already verifies the server with it.
        first = [managed_file(facts, "database_ca", ca, "PostgreSQL CA certificate", frozenset({RESTART}))] if ca else []
        if not database_password_needed(facts, profile):
            return first + [Change(f"the stored password logs in to {db.describe()}")]
        return first + [Change(f"stored the password of {db.describe()} in {secret} (root, 0600) and logged in with it",
                               True, plan=f"store the password of {db.user}@{db.address} in {secret} (root, 0600)",
                               action=StoreDatabasePassword(profile, password) if password is not None else None,
                               notifies=frozenset({RESTART}))]
    changes = []
    if pg.conf == postgres.server_conf() and pg.hba and pg.active:
        changes.append(Change(f"PostgreSQL {pg.version} listens on localhost only, scram-sha-256 for {db.user}"))
    else:
        settings = f"localhost only, scram-sha-256 for {db.user}"
        changes.append(Change(f"configured PostgreSQL: {settings}", True, plan=f"configure PostgreSQL: {settings}",
                              action=Run(postgres.configure_server(profile), "configuring PostgreSQL",
                                         timeout=APT_TIMEOUT)))
    if pg.role and pg.database and pg.secret_meta == SECRET_META and pg.login:
        changes.append(Change(f"role {db.user} and database {db.name} exist; the password logs in ({secret}, root 0600)"))
    else:
        changes.append(Change(f"role {db.user} and database {db.name} ready, the password generated on the server "
                              f"into {secret} (root, 0600)", True,
                              plan=f"create role {db.user} and database {db.name}, a password generated on the server",
                              action=Run(postgres.ensure_role(profile), "creating the PostgreSQL role and database"),
                              notifies=frozenset({RESTART})))
    return changes


def media_keys(facts: ProvisionFacts, profile: Profile, credentials: dict[str, str] | None) -> list[Change]:
    """Uploads in a bucket: its keys root-only for systemd (from this machine's environment, else the
    stored ones stay). Local files: nothing (keys stored before stay until the uploads move)."""
    if not profile.media.in_bucket:
        return []
    path, found = profile.remote.media_env, facts.media
    if credentials is None:
        if not found.credentials_meta:     # provision refuses this before; upgrade and adopt leave it to provision
            return [Change(f"WARNING no keys for {profile.media.storage} yet: `fab provision` with "
                           f"{' and '.join(media.CREDENTIAL_ENV)} set stores them")]
        return [Change(f"the media bucket's keys are stored ({path}, {found.credentials_meta})")]
    return [offsite_steps.stored_secret(path, "the media bucket's keys", media.credentials_file(credentials),
                                        found.credentials_meta, found.credentials_sha256, plural=True,
                                        notifies=frozenset({RESTART}))]


def env_file(facts: ProvisionFacts, profile: Profile) -> Change:
    wanted = service_manager(profile).env_file()
    change = managed_file(facts, "env_file", wanted, "env file", frozenset({RESTART}))
    meta = f"{wanted.owner}:{wanted.group}:{int(wanted.mode, 8):o}"
    if change.changed or facts.env_file_meta == meta:
        return change
    # Same content, other owner or mode: the promise is root-only 0600, whoever changed it.
    return Change(f"env file set to {meta}", True, plan=f"set env file to {meta}",
                  action=Run(set_owner_and_mode(wanted.path, wanted.owner, wanted.group, wanted.mode),
                             "chmod env file"))


def site_membership(facts: ProvisionFacts, profile: Profile, marker: str | None) -> list[Change]:
    """On a site's app VM (site-provision gives `marker`): the file that says so, read by the one-VM tasks
    that refuse there. Plain provision never gives one and leaves a VM's membership as it is."""
    if marker is None:
        return []
    return [managed_file(facts, "site_marker", RenderedFile(profile.remote.site_marker, marker, "0644", "root", "root"),
                         "site membership", frozenset())]


def service_definition(facts: ProvisionFacts, profile: Profile) -> list[Change]:
    """The app server's settings, the step before each start, and the unit (or screen launcher) that runs them."""
    manager = service_manager(profile)
    return [managed_file(facts, "gunicorn_conf", render.app_server_config(profile), "gunicorn settings",
                         frozenset({RESTART})),
            managed_file(facts, "prepare_database", render.prepare_database_script(profile),
                         "database step before each start", frozenset({RESTART})),
            managed_file(facts, manager.definition_key, manager.definition(), manager.definition_label,
                         manager.definition_notifies)]


def site_file(facts: ProvisionFacts, profile: Profile, pair: LocalPair | None = None) -> RenderedFile:
    """The nginx site as provision renders it for this server."""
    return render.nginx_site(tls_steps.serving(facts, profile), ipv6=facts.ipv6,
                             tls=tls_steps.nginx_tls(facts, profile, pair), acme_webroot=tls_steps.acme_webroot(profile),
                             site_packages=facts.site_packages)


def nginx_site(facts: ProvisionFacts, profile: Profile, pair: LocalPair | None = None) -> list[Change]:
    """Site file, enable link, default site off: one validated action (on the first part that needs
    it) does all three, so nginx never reloads into a half-applied state."""
    p = profile.remote
    site = site_file(facts, profile, pair)
    current = facts.files.get("nginx_site")
    file_ok = current == site.content
    parts = [  # (needed, done, planned, unchanged)
        (not file_ok, f"{'updated' if current is not None else 'created'} nginx site {site.path} (nginx -t passed)",
         f"{'update' if current is not None else 'create'} nginx site {site.path}", "nginx site is up to date"),
        (facts.site_enabled_target != str(p.nginx_site), "enabled the nginx site", "enable the nginx site",
         "nginx site is enabled"),
        # Installing the nginx package (an earlier step) enables the distribution's default site.
        (facts.default_site_enabled or "nginx" not in facts.installed_packages,
         "disabled the distribution's default site", "disable the distribution's default site",
         "the distribution's default site is disabled"),
    ]
    action = NginxSite(profile, None if file_ok else site, previous_exists=current is not None)
    changes = []
    for index, (needed, done, planned, same) in enumerate(parts):
        if not needed:
            changes.append(Change(same))
            continue
        first = not any(c.changed for c in changes)
        changes.append(Change(done, True, plan=planned, notifies=frozenset({NGINX_RELOAD}),
                              diff=unified_diff(site.path, current or "", site.content) if index == 0 else "",
                              action=action if first else None))
    return changes


def firewall(facts: ProvisionFacts, profile: Profile, http_from: tuple[str, ...] | None = None) -> list[Change]:
    """ufw: SSH, then HTTP (and HTTPS) from anywhere; on an app VM of a site (`http_from`), HTTP from those
    addresses alone (the balancer's, and the site file's app_firewall.also_from)."""
    if not profile.firewall.enabled:
        return [Change("firewall is off in the profile (firewall.enabled: false)")]
    if http_from is not None:
        return app_vm_firewall(facts, profile, http_from)
    return firewall_changes(facts, firewall_rules_missing(profile, facts),
                            "ufw allows SSH and HTTP" + (" and HTTPS" if profile.tls.enabled else ""))


def same_source(rule_source: str, address: str) -> bool:
    try:
        return ipaddress.ip_network(rule_source, strict=False) == ipaddress.ip_network(address, strict=False)
    except ValueError:
        return False


def app_vm_firewall(facts: ProvisionFacts, profile: Profile, http_from: tuple[str, ...]) -> list[Change]:
    """An app VM of a site: SSH as always; HTTP only from `http_from`. The rule provision adds for HTTP
    from anywhere goes (after the new ones are in: the balancer is never shut out). Any other rule that
    lets someone else reach HTTP is named, not removed (it may be yours)."""
    port = profile.http_port
    missing = rules_missing([], facts)
    for source in http_from:
        if not any(rule.covers(port) and same_source(rule.source, source) for rule in facts.ufw_rules):
            missing.append((ufw_allow_from(source, port), f"{port}/tcp from {source}"))
    changes = firewall_changes(facts, missing, f"ufw allows SSH, and HTTP from {', '.join(http_from)} alone")
    others = []
    for rule in facts.ufw_rules:
        if not rule.covers(port) or any(same_source(rule.source, source) for source in http_from):
            continue
        if rule.source == "any" and rule.spec == f"{port}/tcp":
            changes.append(Change(f"ufw no longer lets anyone reach {port}/tcp (the balancer does)", True,
                                  plan=f"remove ufw's rule that lets anyone reach {port}/tcp",
                                  action=Run(ufw_delete_allow(port), "ufw delete")))
        else:
            others.append("anyone" if rule.source == "any" else rule.source)
    if others:
        changes.append(Change(f"warning: ufw rules this toolkit did not add let {', '.join(others)} reach port {port} "
                              "(`ufw show added` lists them): remove them to keep this app VM behind the balancer"))
    return changes


def firewall_changes(facts, missing: list[tuple[str, str]], as_wanted: str) -> list[Change]:
    """The rules `missing` added, then ufw enabled (SSH was allowed first)."""
    changes = [] if missing else [Change(as_wanted)]
    for command, allows in missing:
        changes.append(Change(f"ufw allows {allows}", True, plan=f"allow {allows} in ufw",
                              action=Run(command, "ufw allow")))
    if facts.ufw_active:
        changes.append(Change("ufw is active"))
    else:
        changes.append(Change("enabled ufw (SSH allowed first)", True, plan="enable ufw",
                              action=Run(ENABLE_UFW, "ufw enable")))
    return changes


# ------------------------------------------------------------------------------------------------
# Handlers: once, after the steps, from what the steps notified.


def reload_handlers(facts: ProvisionFacts, notes: frozenset[str]) -> list[Change]:
    changes = []
    if DAEMON_RELOAD_NEEDED in notes:
        changes.append(Change("reloaded systemd (the unit file changed)", True, plan="reload systemd",
                              action=Run(DAEMON_RELOAD, "systemctl daemon-reload")))
    # Installing the package (an earlier step) starts nginx.
    if not facts.nginx.running and "nginx" in facts.installed_packages:
        changes.append(Change("started nginx", True, plan="start nginx",
                              action=Run(RELOAD_NGINX, "starting nginx")))
    elif NGINX_RELOAD in notes:
        changes.append(Change("reloaded nginx", True, plan="reload nginx",
                              action=Run(RELOAD_NGINX, "reloading nginx")))
    else:
        changes.append(Change("nginx is running"))
    return changes


def service_at_boot(facts: ProvisionFacts, profile: Profile) -> list[Change]:
    """The other manager's copy stopped, ours enabled at boot (when the manager can)."""
    manager = service_manager(profile)
    changes = [Change(done, True, plan=planned, action=Run(command, planned))
               for done, planned, command in manager.others_to_stop(facts)]
    enable = manager.enable_at_boot()
    if enable is not None:
        if manager.is_enabled(facts):
            changes.append(Change(f"{manager.label} is enabled at boot"))
        else:
            changes.append(Change(f"enabled {manager.label} at boot", True, plan=f"enable {manager.label} at boot",
                                  action=Run(enable, "enabling the service at boot")))
    return changes


def service_running(facts: ProvisionFacts, profile: Profile, notes: frozenset[str]) -> list[Change]:
    manager = service_manager(profile)
    started = frozenset({HEALTH})
    if not manager.is_running(facts):
        return [Change(f"started {manager.label}", True, plan=f"start {manager.label}",
                       action=Run(manager.start(), f"starting {manager.label}"), notifies=started)]
    if RESTART in notes:
        return [Change(f"restarted {manager.label} (its settings changed)", True,
                       plan=f"restart {manager.label}", notifies=started,
                       action=Run(manager.restart(), f"restarting {manager.label}"))]
    return [Change(f"{manager.label} is running")]


def admin_user(facts: ProvisionFacts, profile: Profile, admin: AdminRequest) -> Change:
    email = admin.email
    if email is None:
        return Change(f"{facts.db_users or 'existing'} user(s); no admin_email set, no admin to add")
    if facts.admin_exists and not admin.reset:
        return Change(f"admin {email} exists")
    if facts.admin_exists:
        return Change(f"reset the password of {email}", True, plan=f"reset the password of admin {email}",
                      action=EnsureAdmin(profile, admin))
    return Change(f"created admin {email}", True, plan=f"create admin {email}", action=EnsureAdmin(profile, admin))


def plan(facts: ProvisionFacts, profile: Profile, admin: AdminRequest, *, start: bool = True,
         tls_pair: LocalPair | None = None, eab: Eab | None = None,
         database_password: str | None = None,
         offsite_secrets: offsite_steps.OffsiteSecrets = offsite_steps.OffsiteSecrets(),
         media_keys_given: dict[str, str] | None = None, site_key: str | None = None,
         site_marker: str | None = None, http_from: tuple[str, ...] | None = None) -> list[Change]:
    """Every step in the order a careful admin takes them, then the handlers they notified. Without
    `start` (adopt) the service is left enabled but not started: the data swap that follows starts it.
    With TLS wanted but not `tls_steps.ready`, this pass serves HTTP and ends by obtaining the certificate."""
    wanted, profile = profile, tls_steps.serving(facts, profile)
    steps = [
        packages(facts, wanted),
        service_user(facts, profile),
        *directories(facts, profile),
        label_studio_secret_key(facts, profile, site_key),
        *label_studio(facts, profile),
        *background_jobs(facts, profile),
        *database(facts, profile, database_password),
        *tls_steps.certificate(facts, wanted, tls_pair),
        *media_keys(facts, profile, media_keys_given),
        env_file(facts, profile),
        *site_membership(facts, profile, site_marker),
        *service_definition(facts, profile),
        *offsite_steps.setup(facts, profile, offsite_secrets),
        *nginx_site(facts, wanted, tls_pair),
        *firewall(facts, wanted, http_from),
        *tls_steps.renewal(facts, wanted),
    ]
    notes = notified(steps)
    handlers = reload_handlers(facts, notes) + service_at_boot(facts, profile)
    if not start:
        return steps + handlers
    service = service_running(facts, profile, notes)
    handlers += service
    if HEALTH in notified(service) or needs_password(facts, admin):
        # The admin step needs the migrated database, so Label Studio must answer first.
        handlers.append(Change("Label Studio answers /health on 127.0.0.1", plan="wait for Label Studio to answer /health",
                               action=WaitForHealth(profile)))
    handlers.append(admin_user(facts, profile, admin))
    handlers += offsite_steps.running(facts, profile, notified(steps))
    return steps + handlers + tls_steps.obtain(facts, wanted, eab)
