"""Remote changes. Each operation compares a fact with what is wanted, acts only if needed, and
returns a Change that says in words what it did (or, in plan mode, would do)."""

from __future__ import annotations

import difflib
import json
import time
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from . import commands, facts as facts_mod, parse, render, ui
from .commands import join, q
from .connect import Host
from .errors import RemoteError, UsageError
from .facts import ProvisionFacts
from .profile import PROJECT_ROOT, Profile
from .render import RenderedFile
from .transfer import install_file, remote_tempdir, secret_file, upload_bytes

ENSURE_ADMIN_SCRIPT = PROJECT_ROOT / "templates" / "scripts" / "ensure_admin.py"
FIRST_START_TIMEOUT = 600  # migrations on a small VM take minutes; poll, never sleep blindly
MIN_PASSWORD_LENGTH = 8


@dataclass(frozen=True)
class Change:
    changed: bool
    what: str


@dataclass(frozen=True)
class AdminRequest:
    email: str | None
    password: str | None = field(default=None, repr=False)
    reset: bool = False


# ------------------------------------------------------------------------------------------------
# Pure comparisons: what differs between the facts and the profile (unit-tested without a server).


def missing_packages(profile: Profile, facts: ProvisionFacts) -> list[str]:
    return [p for p in commands.wanted_packages(profile) if p not in facts.installed_packages]


def wanted_dirs(profile: Profile) -> list[tuple[PurePosixPath, str, str]]:
    """(path, owner:group:mode as stat prints it, mode for install -d)."""
    user = profile.service.user
    p = profile.remote
    return [(p.app_dir, "root:root:755", "0755"), (p.data_dir, f"{user}:{user}:750", "0750")]


def firewall_rules_missing(profile: Profile, facts: ProvisionFacts) -> list[str]:
    """ufw rules to add: every SSH port sshd listens on (so enabling never locks us out), then HTTP."""
    ssh_ports = facts.sshd_ports or (22,)
    wanted = [f"{port}/tcp" for port in ssh_ports] + [f"{profile.http_port}/tcp"]
    return [rule for rule in wanted if rule not in facts.ufw_allowed]


def unified_diff(path: PurePosixPath, old: str, new: str) -> str:
    return "".join(difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True),
        fromfile=f"{path} (on server)", tofile=f"{path} (wanted)",
    ))


def needs_password(facts: ProvisionFacts, admin: AdminRequest) -> bool:
    return admin.reset or (admin.email is not None and not facts.admin_exists)


# ------------------------------------------------------------------------------------------------


class Provisioner:
    """Runs provision's steps in order; in plan mode the same steps report without acting."""

    def __init__(self, host: Host, profile: Profile, facts: ProvisionFacts, admin: AdminRequest,
                 *, dry_run: bool = False):
        self.host = host
        self.profile = profile
        self.facts = facts
        self.admin = admin
        self.dry_run = dry_run
        self.changes: list[Change] = []
        self.restart_needed = False
        self.service_started = False

    # -- plumbing --------------------------------------------------------------------------------

    def _report(self, change: Change) -> Change:
        self.changes.append(change)
        ui.step(change.changed, change.what)
        return change

    def run(self) -> list[Change]:
        """Every step, in the order a careful admin would take them."""
        self.packages()
        self.service_user()
        self.directories()
        self.label_studio()
        self.env_file()
        self.service_definition()
        self.service_running()
        if self.service_started or needs_password(self.facts, self.admin):
            self.wait_until_up()  # the admin step needs the migrated database
        self.admin_user()
        self.nginx_site()
        self.firewall()
        return self.changes

    def _act(self, what_done: str, what_planned: str, action) -> Change:
        if self.dry_run:
            return self._report(Change(True, f"would {what_planned}"))
        action()
        return self._report(Change(True, what_done))

    def _same(self, what: str) -> Change:
        return self._report(Change(False, what))

    def sudo(self, command: str, what: str, timeout: float | None = None) -> str:
        return self.host.run(command, sudo=True, what=what, timeout=timeout).stdout

    # -- steps -----------------------------------------------------------------------------------

    def packages(self) -> Change:
        missing = missing_packages(self.profile, self.facts)
        if not missing:
            return self._same("packages are installed: " + ", ".join(commands.wanted_packages(self.profile)))

        def install():
            with ui.err.status(f"apt-get install {' '.join(missing)}"):
                self.sudo(
                    "export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && "
                    f"apt-get install -y -qq --no-install-recommends {join(*missing)}",
                    what="apt-get install", timeout=1800,
                )
        return self._act(f"installed {', '.join(missing)}", f"install {', '.join(missing)}", install)

    def service_user(self) -> Change:
        user = self.profile.service.user
        if self.facts.user_exists:
            return self._same(f"service user {user} exists")
        command = join("useradd", "--system", "--user-group", "--home-dir", self.profile.remote.data_dir,
                       "--no-create-home", "--shell", "/usr/sbin/nologin", user)
        return self._act(f"created system user {user}", f"create system user {user}",
                         lambda: self.sudo(command, "useradd"))

    def directories(self) -> list[Change]:
        current = {self.profile.remote.app_dir: self.facts.app_dir_meta,
                   self.profile.remote.data_dir: self.facts.data_dir_meta}
        results = []
        for path, meta, mode in wanted_dirs(self.profile):
            if current[path] == meta:
                results.append(self._same(f"{path} is {meta}"))
                continue
            owner, group, _ = meta.split(":")
            command = join("install", "-d", "-m", mode, "-o", owner, "-g", group, path)
            state = f"was {current[path]}" if current[path] else "was missing"
            results.append(self._act(f"{path} set to {meta} ({state})", f"set {path} to {meta} ({state})",
                                     lambda c=command: self.sudo(c, "install -d")))
        return results

    def label_studio(self) -> Change:
        wanted = self.profile.label_studio.version
        have = self.facts.label_studio_version
        if have == wanted and self.facts.venv_exists:
            return self._same(f"label-studio {wanted} is installed")
        p = self.profile.remote
        self.restart_needed = True
        verb = f"upgraded label-studio {have} -> {wanted}" if have else f"installed label-studio {wanted}"
        pip = ["--disable-pip-version-check", "--root-user-action=ignore", "-q"]
        if self.profile.pip.index_url:
            pip += ["--index-url", self.profile.pip.index_url]

        def install():
            if have and self.facts.db_exists:
                self._copy_db_before_upgrade(have)
            with ui.err.status(f"pip install label-studio=={wanted} (a minute or more)"):
                self.sudo(
                    f"[ -x {q(p.venv_python)} ] || python3 -m venv {q(p.venv)}; "
                    f"{q(p.venv_python)} -m pip install {join(*pip)} {q('label-studio==' + wanted)}",
                    what="pip install label-studio", timeout=3600,
                )
        return self._act(verb, verb.replace("upgraded", "upgrade").replace("installed", "install"), install)

    def _copy_db_before_upgrade(self, old_version: str) -> None:
        """A new release migrates the database one way: keep a consistent copy on the server first."""
        p = self.profile.remote
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = p.data_dir / "pre-upgrade" / f"label_studio-{old_version}-{stamp}.sqlite3"
        user = self.profile.service.user
        self.sudo(f"install -d -m 0700 -o {q(user)} -g {q(user)} {q(target.parent)} && "
                  f"sqlite3 {q(p.database)} {q('.backup ' + str(target))} && "
                  f"chown {q(user)}:{q(user)} {q(target)} && chmod 0600 {q(target)}",
                  what="database copy before upgrade")
        ui.out.print(f"  database copied to {target} before the upgrade")

    def managed_file(self, file: RenderedFile, key: str, label: str, *, restart: bool) -> Change:
        current = self.facts.file_sha.get(key, "")
        if current == file.sha256:
            return self._same(f"{label} is up to date")
        if restart:
            self.restart_needed = True
        if self.dry_run:
            old = facts_mod.read_file(self.host, file.path) if current else ""
            diff = unified_diff(file.path, old, file.content)
            change = self._report(Change(True, f"would {'update' if current else 'create'} {label} {file.path}"))
            ui.out.print(diff, markup=False, highlight=False, end="")
            return change
        install_file(self.host, file)
        return self._report(Change(True, f"{'updated' if current else 'created'} {label} {file.path}"))

    def env_file(self) -> Change:
        change = self.managed_file(render.env_file(self.profile), "env_file", "env file", restart=True)
        # The mode matters even when the content is the same (a hand `chmod` would leak nothing, but
        # the promise is 0600).
        wanted = render.env_file(self.profile)
        meta = f"{wanted.owner}:{wanted.group}:600"
        if not change.changed and self.facts.env_file_meta != meta:
            command = f"chown {q(wanted.owner)}:{q(wanted.group)} {q(wanted.path)} && chmod 0600 {q(wanted.path)}"
            return self._act(f"env file set to {meta}", f"set env file to {meta}",
                             lambda: self.sudo(command, "chmod env file"))
        return change

    def service_definition(self) -> list[Change]:
        results = []
        if self.profile.service.manager == "systemd":
            change = self.managed_file(render.unit_file(self.profile), "unit_file", "systemd unit", restart=True)
            if change.changed and not self.dry_run:
                self.sudo("systemctl daemon-reload", "systemctl daemon-reload")
            results.append(change)
        else:
            results.append(self.managed_file(render.screen_launcher(self.profile), "screen_launcher",
                                             "screen launcher", restart=True))
        return results

    def service_running(self) -> list[Change]:
        name = self.profile.service.name
        unit = f"{name}.service"
        svc = self.facts.service
        results = []
        if self.profile.service.manager == "systemd":
            if self.facts.screen_running:
                results.append(self._act(f"stopped the screen session {name} (systemd runs it now)",
                                         f"stop the screen session {name}", lambda: self._screen_quit()))
            if svc.enabled == "enabled":
                results.append(self._same(f"{unit} is enabled at boot"))
            else:
                results.append(self._act(f"enabled {unit} at boot", f"enable {unit} at boot",
                                         lambda: self.sudo(f"systemctl enable {q(unit)}", "systemctl enable")))
            if not svc.running:
                results.append(self._act(f"started {unit}", f"start {unit}",
                                         lambda: self._systemctl("start")))
            elif self.restart_needed:
                results.append(self._act(f"restarted {unit} (its settings changed)", f"restart {unit}",
                                         lambda: self._systemctl("restart")))
            else:
                results.append(self._same(f"{unit} is running"))
        else:
            if svc.exists and (svc.running or svc.enabled == "enabled"):
                results.append(self._act(f"stopped and disabled {unit} (screen runs it now)",
                                         f"stop and disable {unit}",
                                         lambda: self.sudo(f"systemctl disable --now {q(unit)}", "systemctl disable")))
            if not self.facts.screen_running:
                results.append(self._act(f"started screen session {name}", f"start screen session {name}",
                                         self._screen_start))
            elif self.restart_needed:
                def restart():
                    self._screen_quit()
                    self._screen_start()
                results.append(self._act(f"restarted screen session {name} (its settings changed)",
                                         f"restart screen session {name}", restart))
            else:
                results.append(self._same(f"screen session {name} is running"))
        return results

    def _screen_start(self) -> None:
        self.service_started = True
        self.sudo(screen_start_command(self.profile), "starting the screen session")

    def _screen_quit(self) -> None:
        self.sudo(screen_quit_command(self.profile), "stopping the screen session")

    def _systemctl(self, verb: str) -> None:
        self.service_started = verb in ("start", "restart")
        self.sudo(f"systemctl {verb} {q(self.profile.service.name + '.service')}", f"systemctl {verb}")

    def wait_until_up(self) -> Change:
        if self.dry_run:
            return self._same("would wait for Label Studio to answer /health")
        wait_for_health(self.host, self.profile, via_nginx=False)
        return self._same("Label Studio answers /health on 127.0.0.1")

    def admin_user(self) -> Change:
        email = self.admin.email
        if email is None:
            users = self.facts.db_users
            return self._same(f"{users or 'existing'} user(s); no admin_email set, no admin to add")
        if self.facts.admin_exists and not self.admin.reset:
            return self._same(f"admin {email} exists")
        if self.dry_run:
            verb = "reset the password of" if self.facts.admin_exists else "create"
            return self._report(Change(True, f"would {verb} admin {email}"))
        outcome = ensure_admin(self.host, self.profile, self.admin)
        words = {"created": f"created admin {email}", "password-reset": f"reset the password of {email}",
                 "exists": f"admin {email} exists"}
        return self._report(Change(outcome != "exists", words.get(outcome, outcome)))

    def nginx_site(self) -> list[Change]:
        p = self.profile.remote
        site = render.nginx_site(self.profile, ipv6=self.facts.ipv6)
        current = self.facts.file_sha.get("nginx_site", "")
        file_ok = current == site.sha256
        # Installing the nginx package (an earlier step) enables the distribution's default site.
        default = self.facts.default_site_enabled or "nginx" not in self.facts.installed_packages
        others = [  # (needed, done, planned, unchanged)
            (self.facts.site_enabled_target != str(p.nginx_site), "enabled the nginx site",
             "enable the nginx site", "nginx site is enabled"),
            (default, "disabled the distribution's default site", "disable the distribution's default site",
             "the distribution's default site is disabled"),
            (not self.facts.nginx.running, "started nginx", "start nginx", "nginx is running"),
        ]
        if self.dry_run:
            results = [self.managed_file(site, "nginx_site", "nginx site", restart=False)]
            for needed, _, planned, same in others:
                results.append(self._report(Change(True, f"would {planned}") if needed else Change(False, same)))
            return results
        if not file_ok or any(needed for needed, *_ in others):
            apply_nginx_site(self.host, self.profile, site, write_file=not file_ok,
                             previous_exists=bool(current))
        verb = "updated" if current else "created"
        results = [self._report(Change(not file_ok, "nginx site is up to date" if file_ok
                                       else f"{verb} nginx site {site.path} (nginx -t passed, reloaded)"))]
        for needed, done, _, same in others:
            results.append(self._report(Change(needed, done if needed else same)))
        return results

    def firewall(self) -> list[Change]:
        if not self.profile.firewall.enabled:
            return [self._same("firewall is off in the profile (firewall.enabled: false)")]
        missing = firewall_rules_missing(self.profile, self.facts)
        results = [] if missing else [self._same("ufw allows SSH and HTTP")]
        for rule in missing:
            results.append(self._act(f"ufw allows {rule}", f"allow {rule} in ufw",
                                     lambda r=rule: self.sudo(f"ufw allow {q(r)}", "ufw allow")))
        if self.facts.ufw_active:
            results.append(self._same("ufw is active"))
        else:
            results.append(self._act("enabled ufw (SSH allowed first)", "enable ufw",
                                     lambda: self.sudo("ufw --force enable", "ufw enable")))
        return results


# ------------------------------------------------------------------------------------------------
# Operations shared with the service tasks.


def screen_start_command(profile: Profile) -> str:
    p = profile.remote
    user = profile.service.user
    return (f"install -d -m 0700 -o {q(user)} -g {q(user)} /run/screen/S-{q(user)} 2>/dev/null; "
            f"touch {q(p.screen_log)} && chown {q(user)}:{q(user)} {q(p.screen_log)} && chmod 0600 {q(p.screen_log)} && "
            + commands.as_service_user(profile, "screen", "-dmS", profile.service.name, "-L", "-Logfile",
                                       p.screen_log, p.screen_launcher))


def screen_quit_command(profile: Profile) -> str:
    return (commands.as_service_user(profile, "screen", "-S", profile.service.name, "-X", "quit")
            + " >/dev/null 2>&1 || true")


def service_command(profile: Profile, verb: str) -> str:
    """start, stop or restart Label Studio under the profile's service manager."""
    if profile.service.manager == "screen":
        return {
            "start": screen_start_command(profile),
            "stop": screen_quit_command(profile),
            "restart": screen_quit_command(profile) + "; " + screen_start_command(profile),
        }[verb]
    return f"systemctl {verb} {q(profile.service.name + '.service')}"


def service_log_command(profile: Profile, lines: int = 40) -> str:
    if profile.service.manager == "screen":
        return f"tail -n {int(lines)} {q(profile.remote.screen_log)} 2>/dev/null || true"
    return f"journalctl -u {q(profile.service.name + '.service')} -n {int(lines)} --no-pager 2>/dev/null || true"


def wait_for_health(host: Host, profile: Profile, *, via_nginx: bool, timeout: int = FIRST_START_TIMEOUT,
                    fail_on_crash: bool = False) -> None:
    """Poll /health on the server itself (one round trip, the loop runs there) until UP or timeout.
    `fail_on_crash` gives up as soon as systemd has had to restart the service (it crashed)."""
    port = profile.http_port if via_nginx else profile.label_studio.port
    header = profile.effective_server_name if via_nginx else "127.0.0.1"
    probe = commands.health_probe(port, header)
    crash = ""
    if fail_on_crash and profile.service.manager == "systemd":
        unit = q(profile.service.name + ".service")
        crash = (f"n=$(systemctl show -p NRestarts --value {unit}); "
                 f"[ \"${{n:-0}}\" -gt \"$n0\" ] && {{ echo 'crashed (systemd restarted it)'; exit 1; }}; ")
        crash_init = f"n0=$(systemctl show -p NRestarts --value {unit}); n0=${{n0:-0}}; "
    else:
        crash_init = ""
    script = (
        f"{crash_init}end=$(( $(date +%s) + {int(timeout)} )); "
        f"while :; do r=$({probe}); case \"$r\" in 200*UP*) echo \"$r\"; exit 0;; esac; {crash}"
        f"[ $(date +%s) -ge $end ] && {{ echo \"$r\"; exit 1; }}; sleep 1; done"
    )
    where = "through nginx" if via_nginx else "on 127.0.0.1"
    with ui.err.status(f"waiting for Label Studio to answer /health {where} (first start runs migrations)"):
        result = host.run(script, sudo=True, check=False, timeout=timeout + 30)
    if result.ok and parse.health_is_up(result.stdout.strip()):
        return
    log = host.run(service_log_command(profile, 25), sudo=True, check=False).stdout
    ui.err.print("[muted]last lines of the service log:[/muted]")
    ui.err.print(log.rstrip(), markup=False, highlight=False)
    last = result.stdout.strip()
    if last.startswith("crashed"):
        raise RemoteError("Label Studio crashed on start (systemd had to restart it)")
    raise RemoteError(f"Label Studio did not answer /health {where} within {timeout}s "
                      f"(last answer: {last or 'none'})")


def apply_nginx_site(host: Host, profile: Profile, site: RenderedFile, *, write_file: bool,
                     previous_exists: bool) -> None:
    """Site file, enable link and default site in one step, validated by `nginx -t` before nginx
    reloads. If the test fails, everything goes back as it was and nginx keeps serving."""
    p = profile.remote
    path, link, default = p.nginx_site, p.nginx_site_enabled, "/etc/nginx/sites-enabled/default"
    keep = PurePosixPath(f"{path}.lsvm-previous")
    with remote_tempdir(host) as tmp:
        if write_file:
            upload_bytes(host, site.content.encode(), tmp / "site")
            save = f"cp -p {q(path)} {q(keep)}" if previous_exists else f"rm -f {q(keep)}"
            put_back = f"mv -f {q(keep)} {q(path)}" if previous_exists else f"rm -f {q(path)}"
            write = (f"{save} && install -m 0644 -o root -g root {q(tmp / 'site')} {q(path)}.lsvm-new && "
                     f"mv -f {q(path)}.lsvm-new {q(path)}")
        else:
            write, put_back = "true", "true"
        script = (
            f"had_link=$(readlink {q(link)} || true); had_default=$(readlink {default} || true); "
            f"{write} && ln -sfn {q(path)} {q(link)} && rm -f {default} && "
            f"if out=$(nginx -t 2>&1); then rm -f {q(keep)}; else "
            f"{put_back}; "
            f"if [ -n \"$had_link\" ]; then ln -sfn \"$had_link\" {q(link)}; else rm -f {q(link)}; fi; "
            f"if [ -n \"$had_default\" ]; then ln -sfn \"$had_default\" {default}; fi; "
            "echo \"$out\" | grep -v 'test failed' | grep -m1 -E 'emerg|error' >&2; exit 3; fi && "
            "(systemctl reload nginx 2>/dev/null || systemctl restart nginx)"
        )
        result = host.run(script, sudo=True, check=False, what="nginx site")
    if result.exited == 3:
        detail = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "nginx -t failed"
        raise RemoteError(f"nginx rejected the new site ({detail}); the previous site is back in place "
                          "and nginx keeps serving it")
    if not result.ok:
        raise RemoteError(f"setting up the nginx site failed: {result.last_line()}")


def ensure_admin(host: Host, profile: Profile, admin: AdminRequest) -> str:
    """Create the admin (or reset its password) with Label Studio's own models; password via a 0600 file."""
    p = profile.remote
    request = json.dumps({"email": admin.email, "password": admin.password, "reset": admin.reset}).encode()
    with secret_file(host, request) as secret:
        script_path = secret.parent / "ensure_admin.py"
        upload_bytes(host, ENSURE_ADMIN_SCRIPT.read_bytes(), script_path)
        output = host.run(
            f"set -a; . {q(p.env_file)}; set +a; "
            f"{commands.as_service_user(profile, p.venv_python, '-c')} \"$(cat {q(script_path)})\" < {q(secret)}",
            sudo=True, check=False, what="creating the admin user",
        )
    results = [line for line in output.stdout.splitlines() if line.startswith("RESULT ")]
    if not output.ok or not results:
        raise RemoteError(f"could not create the admin user: {output.last_line()}")
    return json.loads(results[-1][len("RESULT "):])["outcome"]


def validate_admin_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UsageError(f"the admin password must have at least {MIN_PASSWORD_LENGTH} characters")
