"""One service manager, two variants: systemd (the default) and screen (the seed guide's way).

`service_manager(profile)` is the one place the variant is chosen; everything else asks the manager.
Each method returns a shell command (run as root) or plain data; nothing here touches a server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tasks.core import render
from tasks.core.commands import as_service_user, join, q
from tasks.core.commands.instances import owned_health
from tasks.core.profile import Profile
from tasks.core.render import RenderedFile

HTTPS_PORT = 443


@dataclass(frozen=True)
class UnitState:
    """A systemd unit as `systemctl show` describes it (read by the probes, asked by the managers)."""

    load: str = ""
    active: str = ""
    sub: str = ""
    enabled: str = ""

    @classmethod
    def from_show(cls, props: dict[str, str]) -> "UnitState":
        return cls(props.get("LoadState", ""), props.get("ActiveState", ""),
                   props.get("SubState", ""), props.get("UnitFileState", ""))

    @property
    def exists(self) -> bool:
        return self.load not in ("", "not-found")

    @property
    def running(self) -> bool:
        return self.active == "active"

    def describe(self) -> str:
        if not self.exists:
            return "not installed"
        text = f"{self.active} ({self.sub})" if self.sub else self.active
        return f"{text}, {self.enabled} at boot" if self.enabled else text


class ServiceState(Protocol):
    """What a manager reads from a probe (HostStatus and ProvisionFacts both have these)."""

    service: UnitState
    screen_running: bool


class ServiceManager:
    """Start, stop, restart, logs, is-running and the definition file of the Label Studio service."""

    kind = ""
    label = ""            # "label-studio.service" / "screen session label-studio"
    packages: tuple[str, ...] = ()
    definition_label = ""
    definition_key = ""   # its key in the provision probe's [files]
    definition_notifies: frozenset[str] = frozenset({"restart"})
    needs_systemd = False

    def __init__(self, profile: Profile):
        self.profile = profile
        self.name = profile.service.name

    def start(self) -> str:
        raise NotImplementedError

    def stop(self) -> str:
        raise NotImplementedError

    def restart(self) -> str:
        raise NotImplementedError

    def command(self, verb: str) -> str:
        """start, stop (returning once Label Studio has exited) or restart."""
        return {"start": self.start, "stop": self.stop_and_wait, "restart": self.restart}[verb]()

    def stop_and_wait(self) -> str:
        """Stop, and return only once Label Studio has exited (the data can be swapped then)."""
        return self.stop()

    def run_detached(self, script: str, *, unit: str, description: str) -> str:
        """Start `script` (as root) so that it outlives this SSH session; `unit` names it."""
        raise NotImplementedError

    def logs(self, lines: int = 40, *, follow: bool = False) -> str:
        raise NotImplementedError

    def recent_log(self, lines: int = 25) -> str:
        """The last lines of the log, never failing (for error reports)."""
        return f"{self.logs(lines)} 2>/dev/null || true"

    def is_running(self, state: ServiceState) -> bool:
        raise NotImplementedError

    def describe(self, state: ServiceState) -> str:
        raise NotImplementedError

    def definition(self) -> RenderedFile:
        """The file that defines the service on the server (unit file or screen launcher)."""
        raise NotImplementedError

    def env_file(self) -> RenderedFile:
        """The env file, owned by whoever reads it."""
        raise NotImplementedError

    def enable_at_boot(self) -> str | None:
        """The command that starts the service at boot, or None when this manager cannot."""
        return None

    def is_enabled(self, state: ServiceState) -> bool:
        return False

    def stop_and_disable(self) -> str:
        """Stopped, and not started at boot (adopt hands the host back to an old instance)."""
        return self.stop()

    def others_to_stop(self, state: ServiceState) -> list[tuple[str, str, str]]:
        """The other manager's copy of the service, still running: [(done, planned, command)]."""
        return []

    def crash_guard(self) -> tuple[str, str]:
        """(before, check) shell snippets for a health wait: `check` exits 1 printing `crashed ...`
        once the service had to be restarted after `before` ran. Empty when the manager cannot tell."""
        return "", ""

    def reboot_hint(self) -> str | None:
        """What the user must add to start the service at boot, when the manager does not do it."""
        return None


class Systemd(ServiceManager):
    kind = "systemd"
    definition_label = "systemd unit"
    definition_key = "unit_file"
    definition_notifies = frozenset({"daemon-reload", "restart"})
    needs_systemd = True

    def __init__(self, profile: Profile):
        super().__init__(profile)
        self.unit = profile.service.unit
        self.label = self.unit

    def start(self) -> str:
        return join("systemctl", "start", self.unit)

    def stop(self) -> str:
        return join("systemctl", "stop", self.unit)

    def restart(self) -> str:
        return join("systemctl", "restart", self.unit)

    def logs(self, lines: int = 40, *, follow: bool = False) -> str:
        return join("journalctl", "-u", self.unit, "-n", int(lines), "--no-pager", *(["-f"] if follow else []))

    def run_detached(self, script: str, *, unit: str, description: str) -> str:
        # A transient unit: systemd keeps it running whatever happens to our session.
        return (f"systemd-run --quiet --collect --unit={q(unit)}-$(date +%s) --description={q(description)} "
                f"/bin/sh -c {q(script)} || exit 1")

    def is_running(self, state: ServiceState) -> bool:
        return state.service.running

    def describe(self, state: ServiceState) -> str:
        return state.service.describe()

    def definition(self) -> RenderedFile:
        return render.unit_file(self.profile)

    def env_file(self) -> RenderedFile:
        return render.env_file(self.profile, group="root", mode="0600")  # systemd reads it as root

    def enable_at_boot(self) -> str:
        return join("systemctl", "enable", self.unit)

    def is_enabled(self, state: ServiceState) -> bool:
        return state.service.enabled == "enabled"

    def stop_and_disable(self) -> str:
        return join("systemctl", "disable", "--now", self.unit)

    def others_to_stop(self, state: ServiceState) -> list[tuple[str, str, str]]:
        if not state.screen_running:
            return []
        screen = Screen(self.profile)
        return [(f"stopped the screen session {self.name} (systemd runs it now)",
                 f"stop the screen session {self.name}", screen.stop())]

    def crash_guard(self) -> tuple[str, str]:
        restarts = f"systemctl show -p NRestarts --value {q(self.unit)}"
        before = f"n0=$({restarts}); n0=${{n0:-0}}; "
        check = (f"n=$({restarts}); "
                 f"[ \"${{n:-0}}\" -gt \"$n0\" ] && {{ echo 'crashed (systemd restarted it)'; exit 1; }}; ")
        return before, check


EXIT_WAIT = 60  # screen mode: seconds for Label Studio to exit after the stop, then SIGKILL


class Screen(ServiceManager):
    kind = "screen"
    packages = ("screen",)
    definition_label = "screen launcher"
    definition_key = "screen_launcher"

    def __init__(self, profile: Profile):
        super().__init__(profile)
        self.label = f"screen session {self.name}"

    def start(self) -> str:
        p = self.profile.remote
        user = self.profile.service.user
        # The sockets live in the service user's own tree (SCREENDIR), made by that user: never in the
        # world-writable /run/screen, where root creating or chowning S-<user> could be led elsewhere.
        return (f"{as_screen_user(self.profile, 'install', '-d', '-m', '0700', p.screen_dir)} && "
                f"touch {q(p.screen_log)} && chown {q(user)}:{q(user)} {q(p.screen_log)} && "
                f"chmod 0600 {q(p.screen_log)} && "
                + as_screen_user(self.profile, "screen", "-dmS", self.name, "-L", "-Logfile",
                                 p.screen_log, p.screen_launcher))

    def stop(self) -> str:
        # Also a session earlier versions started in /run/screen (asked by the user itself, as root never does).
        return "; ".join(f"{quit_} >/dev/null 2>&1" for quit_ in (
            as_screen_user(self.profile, "screen", "-S", self.name, "-X", "quit"),
            as_service_user(self.profile, "screen", "-S", self.name, "-X", "quit"))) + "; true"

    def restart(self) -> str:
        # The old gunicorn lets go of the port before the new one binds it.
        return f"{self.stop_and_wait()}\n{self.start()}"

    def stop_and_wait(self) -> str:
        # Quitting the session only sends a SIGHUP: wait for the process itself to go.
        return f"{self.stop()}\n{self.wait_until_exited()}"

    def run_detached(self, script: str, *, unit: str, description: str) -> str:
        # No systemd to own it: its own session, so that the screen session it starts outlives it too.
        return f"setsid nohup /bin/sh -c {q(script)} < /dev/null > /dev/null 2>&1 &"

    def wait_until_exited(self, timeout: int = EXIT_WAIT) -> str:
        """Polls /proc until no process of the service user runs Label Studio on the data dir (gunicorn
        with our config, or the `label-studio start` of earlier toolkit versions); SIGKILL after `timeout`
        seconds, failure after half as long again. For screen mode, where quitting the session only sends
        a SIGHUP (which the launcher turns into gunicorn's graceful stop)."""
        p, profile = self.profile.remote, self.profile
        polls = int(timeout) * 2
        return (
            f"u=$(id -u {q(profile.service.user)}) || exit 1; "
            "ls_pids() { for p in $(find /proc -mindepth 1 -maxdepth 1 -type d -uid \"$u\" -name '[0-9]*' "
            "2>/dev/null); do "
            "c=$(tr '\\000' '\\n' < \"$p/cmdline\" 2>/dev/null) || continue; "
            "has() { printf '%s\\n' \"$c\" | grep -qxF -- \"$1\"; }; "
            f"{{ {{ has {q(p.gunicorn_bin)} && has {q(p.gunicorn_conf)}; }} || "
            f"{{ has {q(p.label_studio_bin)} && has {q(p.data_dir)}; }}; }} && echo \"${{p#/proc/}}\"; done; }}; "
            "i=0; while [ -n \"$(ls_pids)\" ]; do i=$((i + 1)); "
            f"[ $i -ne {polls} ] || kill -KILL $(ls_pids) 2>/dev/null; "
            f"[ $i -le {polls + polls // 2} ] || {{ echo 'Label Studio did not exit after the stop'; exit 1; }}; "
            "sleep 0.5; done"
        )

    def logs(self, lines: int = 40, *, follow: bool = False) -> str:
        return join("tail", "-n", int(lines), *(["-F"] if follow else []), self.profile.remote.screen_log)

    def is_running(self, state: ServiceState) -> bool:
        return state.screen_running

    def describe(self, state: ServiceState) -> str:
        return "running in screen" if state.screen_running else "no screen session"

    def definition(self) -> RenderedFile:
        return render.screen_launcher(self.profile)

    def env_file(self) -> RenderedFile:
        # The launcher, run as the service user, sources it: readable by its group, writable by root only.
        return render.env_file(self.profile, group=self.profile.service.user, mode="0640")

    def others_to_stop(self, state: ServiceState) -> list[tuple[str, str, str]]:
        unit = self.profile.service.unit
        if not (state.service.exists and (state.service.running or state.service.enabled == "enabled")):
            return []
        return [(f"stopped and disabled {unit} (screen runs it now)", f"stop and disable {unit}",
                 join("systemctl", "disable", "--now", unit))]

    def reboot_hint(self) -> str | None:
        return f"@reboot {self.start()}"


def as_screen_user(profile: Profile, *words) -> str:
    """A command of the service user's that may talk to its screen sessions (SCREENDIR set)."""
    return as_service_user(profile, f"SCREENDIR={profile.remote.screen_dir}", *words)


def service_manager(profile: Profile) -> ServiceManager:
    """The one place the profile's service manager is chosen."""
    return Screen(profile) if profile.service.manager == "screen" else Systemd(profile)


def screen_probe(profile: Profile) -> str:
    """`screen=yes` when the service user's screen session runs, else `screen=no` (read in both modes:
    a switch from screen to systemd must stop the old session)."""
    return (f"if command -v screen >/dev/null && [ -d {q(profile.remote.data_dir)} ] && "
            f"{{ {as_screen_user(profile, 'screen', '-ls', profile.service.name)} || "
            f"{as_service_user(profile, 'screen', '-ls', profile.service.name)}; }} >/dev/null 2>&1; "
            "then echo screen=yes; else echo screen=no; fi")


def health_probe(profile: Profile, *, via_nginx: bool) -> str:
    """Print `<status> <body>` of GET /health on this host's loopback (through nginx or straight to
    Label Studio), or `0 <why>` when the process that holds Label Studio's port is not our own instance:
    another Label Studio answering /health must never pass for ours. With TLS on, through nginx means
    over HTTPS as a browser sees it: SNI and Host are server_name, and the served chain must verify up to
    the issuer chain we installed (an intermediate is enough) and name server_name."""
    scheme, port, host_header = health_target(profile, via_nginx=via_nginx)
    trust = profile.remote.tls_files(profile.tls.mode)[1] if scheme == "https" else None
    return owned_health(profile, f"{scheme}://127.0.0.1:{int(port)}/health", host_header, trust=trust)


def health_target(profile: Profile, *, via_nginx: bool) -> tuple[str, int, str]:
    """(scheme, port, Host header) of a health check through nginx or straight to Label Studio."""
    if via_nginx and profile.tls.enabled:
        return "https", HTTPS_PORT, profile.effective_server_name
    if via_nginx:
        return "http", profile.http_port, profile.effective_server_name
    return "http", profile.label_studio.port, "127.0.0.1"


def wait_for_health(profile: Profile, *, via_nginx: bool, timeout: int, fail_on_crash: bool = False) -> str:
    """Poll /health on the server itself (the loop runs there: one round trip) until UP or timeout.
    Prints the last answer; exits 1 on timeout, or as soon as the service crashed (`fail_on_crash`)."""
    probe = health_probe(profile, via_nginx=via_nginx)
    before, check = service_manager(profile).crash_guard() if fail_on_crash else ("", "")
    return (
        f"{before}end=$(( $(date +%s) + {int(timeout)} )); "
        f"while :; do r=$({probe}); case \"$r\" in 200*UP*) echo \"$r\"; exit 0;; esac; {check}"
        f"[ $(date +%s) -ge $end ] && {{ echo \"$r\"; exit 1; }}; sleep 0.3; done"
    )
