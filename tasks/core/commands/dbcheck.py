"""The release's own view of a database (templates/scripts/check_database.py, sent inline): every
model's table read through Label Studio's ORM, and the migrations the release ships. `/health` never
touches the database; this is the check that sees a schema the release cannot use."""

from __future__ import annotations

from pathlib import PurePosixPath

from tasks.core.commands import q
from tasks.core.commands.instances import instances_tool, ours
from tasks.core.commands.provision import release_python
from tasks.core.onserver import app_server
from tasks.core.profile import Profile
from tasks.core.render import CHECK_DATABASE_SOURCE

CHECK_SOURCE = CHECK_DATABASE_SOURCE
CHECK_PATH = app_server.DATABASE_CHECK_PATH
CHECK_TIMEOUT = 180   # Django's start-up and one row of each table; a planted endless view ends here


def read_every_table(profile: Profile, database: PurePosixPath | None = None) -> str:
    """`{"tables": N}` when every migration of the release is applied to the live database (or the SQLite
    file `database`, about to be swapped in: then `{"pending": N}` when it still lacks some, which Label
    Studio applies at its start) and the release reads one row of each of its tables, with every column;
    else `{"error": ...}` and exit 1."""
    if database is not None:
        return (f"{release_python(profile, f'DATABASE_NAME={database}', timeout=CHECK_TIMEOUT)} {q(CHECK_SOURCE)} "
                "orm-incoming")
    by_itself = f"{release_python(profile, timeout=CHECK_TIMEOUT)} {q(CHECK_SOURCE)} orm"
    # Our running instance's workers answer the same read at once (no Django start-up); where they do not
    # (exit 3: not our instance on the port, or one started before its workers learnt to), a process of
    # the release's own reads it.
    asked = instances_tool("read-every-table", *ours(profile), CHECK_PATH)
    # A group around the subshell: `$(` right before `(` would read as arithmetic.
    return (f"{{ ( answer=$({asked}); status=$?; if [ \"$status\" -eq 3 ]; then {by_itself}; "
            "else printf '%s\\n' \"$answer\"; exit \"$status\"; fi ); }")


MIGRATIONS_KEPT = ".lsvm-migrations.json"   # in a release's folder (root's): what its files ship never changes


def shipped_migrations(profile: Profile) -> str:
    """`{app: [names]}`: the migrations the installed release ships (its files, not a database's rows).
    Asked of the release once (Django's start-up: seconds), then kept in its folder, which only root
    writes; a rebuilt release starts from an empty folder."""
    kept = q(profile.remote.current / MIGRATIONS_KEPT)
    ask = f"{release_python(profile, timeout=CHECK_TIMEOUT)} {q(CHECK_SOURCE)} migrations"
    return (f"if [ -s {kept} ]; then cat {kept}; exit 0; fi; "
            f"answer=$({ask}) || {{ printf '%s\\n' \"$answer\"; exit 1; }}; "
            f"( umask 077 && printf '%s\\n' \"$answer\" > {kept}.lsvm-new && mv -f {kept}.lsvm-new {kept} ) || true; "
            "printf '%s\\n' \"$answer\"")
