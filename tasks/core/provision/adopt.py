"""Taking over a Label Studio set up by hand (the seed guide's way): which one, whether it can be done
safely, and what the take-over will do, in words. Pure: tasks/adopt.py runs it."""

from __future__ import annotations

import dataclasses
import posixpath
import re
from dataclasses import dataclass

from packaging.version import InvalidVersion, Version

from tasks.core.errors import UsageError
from tasks.core.profile import Profile
from tasks.core.provision.facts import Neighbours, Unmanaged

# Values read from the server reach a script only after passing these (Debian's NAME_REGEX; a path
# of plain characters): anything else is refused with a way out, never quoted and hoped for.
USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
PLAIN_PATH = re.compile(r"/[A-Za-z0-9._@+/-]*")
COUNTED = ("users", "projects", "tasks", "annotations")


def problems(u: Unmanaged, pinned: str | None = None) -> list[str]:
    """Why this instance cannot be taken over automatically (empty: it can)."""
    found = []
    if pinned and u.version and _newer(u.version, pinned):
        found.append(f"it runs {u.version}, newer than the pinned {pinned}: its database would not go back "
                     f"(set label_studio.version: \"{u.version}\" in the profile)")
    if u.engine != "sqlite":
        found.append("it uses PostgreSQL (adopt takes over SQLite installs; migrate-db is a separate task)")
    if not USER_NAME.fullmatch(u.user):
        found.append(f"its user name {u.user!r} has characters adopt does not pass to a command")
    if not PLAIN_PATH.fullmatch(u.data_dir) or "/../" in u.data_dir + "/":
        found.append(f"its data dir {u.data_dir!r} has characters adopt does not pass to a command "
                     "(move it to a plain path, e.g. with LABEL_STUDIO_BASE_DATA_DIR)")
    if posixpath.normpath(u.database) != posixpath.join(u.data_dir, "label_studio.sqlite3"):
        found.append(f"its database {u.database} is outside its data dir {u.data_dir}")
    if not u.holds_data:
        found.append(f"there is no database in {u.data_dir}")
    return found


def _newer(version: str, than: str) -> bool:
    try:
        return Version(version) > Version(than)
    except InvalidVersion:
        return False


def choose(alias: str, neighbours: Neighbours, pinned: str | None = None) -> Unmanaged:
    """The one unmanaged instance to take over, or a UsageError that says what to do."""
    found = neighbours.unmanaged
    if len(found) > 1:
        listed = "; ".join(u.describe() for u in found)
        raise UsageError(f"found {len(found)} unmanaged Label Studio instances on {alias}: {listed}",
                         hint="stop all but the one to keep (their data stays where it is), then run adopt again")
    u = found[0]
    why = problems(u, pinned)
    if why:
        raise UsageError(f"cannot adopt the {u.describe()}: {'; '.join(why)}; nothing was changed")
    return u


def source_profile(profile: Profile, u: Unmanaged) -> Profile:
    """The unmanaged instance seen as a profile, for the snapshot code: its user owns and reads its data
    dir (every read there runs as that user, as for our own service user)."""
    return dataclasses.replace(profile, service=dataclasses.replace(profile.service, user=u.user),
                               paths=dataclasses.replace(profile.paths, data_dir=u.data_dir))


def managed_data_problem(counts: dict | None) -> str | None:
    """The managed data dir must hold nothing worth keeping before adopted data replaces it."""
    if not counts or "error" in counts:
        return None
    if counts.get("projects") or counts.get("tasks"):
        return (f"the managed data dir already holds {counts.get('projects', 0)} project(s) and "
                f"{counts.get('tasks', 0)} task(s)")
    return None


def count_mismatches(expected: dict, found: dict | None) -> list[str]:
    if not found or "error" in found:
        return [f"the adopted database could not be counted ({(found or {}).get('error', 'no answer')})"]
    return [f"{key}: {found.get(key)} now, {expected.get(key)} in the snapshot"
            for key in COUNTED if key in expected and found.get(key) != expected.get(key)]


@dataclass(frozen=True)
class PlanWords:
    """What each step of adopt says in its plan (tasks/adopt.py pairs each with its act)."""

    backup: tuple[str, ...]
    stop: str
    install: str
    copy: tuple[str, ...]
    leave: str

    def lines(self) -> list[str]:
        return [*self.backup, self.stop, self.install, *self.copy, self.leave]


def plan_words(u: Unmanaged, profile: Profile) -> PlanWords:
    """What adopt will do, in order, in words."""
    p = profile.remote
    pinned = profile.label_studio.version
    upgrade = (f"; Label Studio {u.version} -> {pinned}: the new release migrates the database on its first start"
               if u.version and u.version != pinned else "")
    media = f"{u.media_files} media file(s)" if u.media_files else "no media"
    if u.running:
        where = f"its screen session `{u.screen_name}`" if u.in_screen else f"process {u.pid}"
        stop = f"stop {where} (a failure later starts it again, as it ran)"
    else:
        stop = "record how it was set up, so that a failure later puts it back as it was"
    manager = profile.service.unit if profile.service.manager == "systemd" else "screen launcher"
    return PlanWords(
        backup=(f"take over the {u.describe()}",
                f"verified snapshot of its data on this machine first (label adopt): database, "
                f"{'.env (SECRET_KEY), ' if u.env_file else ''}{media}"),
        stop=stop + "; its hand-written nginx sites are disabled (their files stay)",
        install=f"install what provision installs (packages, {p.venv}, {manager}, nginx site, firewall); nginx "
                f"proxies to Label Studio on 127.0.0.1:{profile.label_studio.port} only",
        copy=(f"copy the snapshot into {p.data_dir} (owner {profile.service.user}, 0600 files), keeping its "
              f"SECRET_KEY, users and passwords{upgrade}",
              "start it and wait until our own instance answers /health, then compare users, projects, tasks "
              "and annotations with the snapshot"),
        leave=f"leave the old files where they are ({u.short_path(u.data_dir)}, "
              f"{u.short_path(u.venv) if u.venv else 'its venv'})",
    )
