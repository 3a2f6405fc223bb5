"""Scripts of `upgrade` and `rollback`: the migration check on a copy, the steps they add to the swap
job (commands/swap.py), the record of the last upgrade, and pruning old releases. Pure builders."""

from __future__ import annotations

from pathlib import PurePosixPath

from tasks.core.commands import data, join, q
from tasks.core.commands.provision import release_python
from tasks.core.defaults import DATABASE
from tasks.core.profile import Profile

UPGRADE_RECORDS = PurePosixPath("/var/lib/lsvm")   # root-only
ROLLBACK = ".lsvm-rollback"  # in the data dir: the database as it was before the last upgrade
# The release links as they were when the swap job began (set by swap.job, on the server).
OLD_CURRENT, OLD_PREVIOUS = '"$OLD_CURRENT"', '"$OLD_PREVIOUS"'


def record_file(profile: Profile) -> PurePosixPath:
    """`<from> <to> <sha256 of the pre-upgrade database>` of the last upgrade (root's)."""
    return UPGRADE_RECORDS / f"{profile.service.name}-upgrade"


def rollback_dir(profile: Profile) -> PurePosixPath:
    return profile.remote.data_dir / ROLLBACK


# Run by a release's own python, as the service user, in a work dir that holds a copy of the database:
# the migrations the release would apply, then applies them to that copy (proof they work on this data).
MIGRATION_CHECK = (
    "import json,os,sys\n"
    "import label_studio\n"
    "sys.path.insert(0,os.path.dirname(label_studio.__file__))\n"
    "os.environ.setdefault('DJANGO_SETTINGS_MODULE','core.settings.label_studio')\n"
    "import django\n"
    "django.setup()\n"
    "from django.db import connection\n"
    "from django.db.migrations.executor import MigrationExecutor\n"
    "ex=MigrationExecutor(connection)\n"
    "plan=ex.migration_plan(ex.loader.graph.leaf_nodes())\n"
    "print('PLAN '+json.dumps([m.app_label+'.'+m.name for m,backwards in plan]),flush=True)\n"
    "from django.core.management import call_command\n"
    "call_command('migrate',interactive=False,verbosity=0)\n"
    "print('MIGRATED',flush=True)\n"
)


# The same, reading only: the migrations the release would apply to the live database.
MIGRATION_PLAN = MIGRATION_CHECK[:MIGRATION_CHECK.index("from django.core.management")]


def migration_plan(profile: Profile, version: str) -> str:
    """Prints `PLAN [...]`: the migrations release `version` would apply to the live database (it only
    reads which are applied), run with the service's settings as the service user."""
    python = profile.release_dir(version) / "bin" / "python"
    return f"{release_python(profile, 'LATEST_VERSION_CHECK=false', timeout=600, python=python)} {q(MIGRATION_PLAN)}"


def switch_release(profile: Profile, version: str) -> str:
    """`current` to release `version`, `previous` to the one it was (both by rename)."""
    links = _links(q(f"releases/{version}"), '"$old"', profile)
    return f"old=$(readlink {q(profile.remote.current)} || true); {links}"


def migration_check(profile: Profile, version: str, work_dir: PurePosixPath) -> str:
    """The release `version` migrates the consistent copy in work_dir (made by data.prepare_copy):
    prints `PLAN [...]` then `MIGRATED`; the live database is never opened."""
    python = profile.release_dir(version) / "bin" / "python"
    return join("runuser", "-u", profile.service.user, "--", "env", "-C", work_dir, f"HOME={work_dir}",
                f"LABEL_STUDIO_BASE_DATA_DIR={work_dir}", "LATEST_VERSION_CHECK=false", "COLLECT_ANALYTICS=false",
                python, "-I", "-c", MIGRATION_CHECK)


def _links(current_expr: str, previous_expr: str, profile: Profile) -> str:
    """Both release links set by renames (each expression is shell: a quoted literal or "$VAR")."""
    p = profile.remote
    return (f"ln -sfn {current_expr} {q(p.current)}.lsvm-new && mv -T {q(p.current)}.lsvm-new {q(p.current)} && "
            f"{{ [ -z {previous_expr} ] || {{ ln -sfn {previous_expr} {q(p.previous)}.lsvm-new && "
            f"mv -T {q(p.previous)}.lsvm-new {q(p.previous)}; }}; }}")


def relink_back(profile: Profile) -> str:
    """Undo a switch: both links as they were when the swap job began."""
    return f"[ -z {OLD_CURRENT} ] || {{ {_links(OLD_CURRENT, OLD_PREVIOUS, profile)}; }}"


def copy_live_database(profile: Profile, source: str = DATABASE) -> str:
    """As the service user, with Label Studio stopped: `source` (relative to the data dir) copied into
    the incoming folder, proven equal by sha256. A hot journal (a crash mid-write) stops it here."""
    script = (f"test ! -e {q(DATABASE + '-journal')} && test ! -e {q(DATABASE + '-wal')} && "
              f"{data.make_incoming_script(profile.remote.data_dir)} && "
              f"cp -- {q(source)} {q(data.INCOMING + '/' + DATABASE)} && "
              f"a=$(sha256sum < {q(source)}) && b=$(sha256sum < {q(data.INCOMING + '/' + DATABASE)}) && "
              "[ \"$a\" = \"$b\" ]")
    return data.owner(profile, script)


def upgrade_steps(profile: Profile, old: str, new: str) -> dict[str, str]:
    """The upgrade as swap-job steps: the live database copied (the copy is what the new release
    migrates; the original, never opened by it, goes aside byte-identical), `current` switched to the
    new release; on success the original is kept for `rollback` and the upgrade recorded."""
    keep = data.owner(profile, (f"rm -rf -- {q(ROLLBACK)} && mkdir -m 0700 -- {q(ROLLBACK)} && "
                                f"mv -- {q(data.PREVIOUS + '/' + DATABASE)} {q(ROLLBACK + '/' + DATABASE)} && "
                                f"sha256sum < {q(ROLLBACK + '/' + DATABASE)} | cut -c1-64"))
    record = record_file(profile)
    return {
        "before_swap": copy_live_database(profile),
        "after_swap": _links(q(f"releases/{new}"), OLD_CURRENT, profile),
        "undo_swap": relink_back(profile),
        "on_success": (f"install -d -m 0700 -o root -g root {q(record.parent)} && sha=$({keep}) && "
                       f"printf '%s %s %s\\n' {q(old)} {q(new)} \"$sha\" > {q(record)}.lsvm-new && "
                       f"mv -f {q(record)}.lsvm-new {q(record)}"),
    }


def rollback_steps(profile: Profile, sha256: str) -> dict[str, str]:
    """Back to the previous release and the database as it was before the upgrade: the kept copy
    (checked against the sha256 recorded then) comes in, the links swap back; on success the record
    and the kept copy go (the newer database was snapshotted on this machine first)."""
    source = f"{ROLLBACK}/{DATABASE}"
    check = data.owner(profile, f"[ \"$(sha256sum < {q(source)} | cut -c1-64)\" = {q(sha256)} ]")
    return {
        "before_swap": f"{check} && {copy_live_database(profile, source)}",
        "after_swap": _links(OLD_PREVIOUS, OLD_CURRENT, profile),
        "undo_swap": relink_back(profile),
        "on_success": (f"{data.owner(profile, f'rm -rf -- {q(ROLLBACK)}')} && rm -f {q(record_file(profile))}"),
    }


def keep_data_steps(profile: Profile) -> dict[str, str]:
    """Back to the previous release keeping today's database (its migrations were reversed before)."""
    return {"after_swap": _links(OLD_PREVIOUS, OLD_CURRENT, profile), "undo_swap": relink_back(profile),
            "on_success": f"rm -f {q(record_file(profile))}"}


def read_record(profile: Profile) -> str:
    return f"cat {q(record_file(profile))} 2>/dev/null || true"


def prune_releases(profile: Profile) -> str:
    """Every release venv but the current and the previous one removed; prints what went."""
    p = profile.remote
    return (f"cur=$(readlink {q(p.current)} || true); prev=$(readlink {q(p.previous)} || true); "
            f"for d in {q(p.releases_dir)}/*/; do [ -d \"$d\" ] || continue; n=$(basename \"$d\"); "
            "[ \"releases/$n\" = \"$cur\" ] || [ \"releases/$n\" = \"$prev\" ] || "
            "{ rm -rf -- \"$d\" && echo \"$n\"; }; done")
