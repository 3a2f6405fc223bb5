"""migrate-db's server scripts: the converter (tasks/core/onserver/convert_database.py) run as the service user in Label
Studio's venv, and the engine switch. Pure builders, run as root.

The engine the service runs on is recorded where provision put it: the env file (`DJANGO_DB=default` and
the non-secret `POSTGRE_*` lines for PostgreSQL, none for SQLite) and the unit (the password file's
`EnvironmentFile=` for PostgreSQL). Switching engines is installing both files as provision renders them
for the other engine (each written aside and renamed over) with Label Studio stopped; undoing is
installing the ones rendered for the engine it ran on. Both pairs are staged beforehand in a root-only
folder. The PostgreSQL password stays in provision's root-only 0600 file (`remote.database_env`); the
converter gets it on stdin with the non-secret connection lines, never in argv or its environment."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from tasks.core import parse
from tasks.core.commands import (install_into_private_dir, install_staged_files, join, q, remove,
                                 service_python)
from tasks.core.commands.data import run_dir
from tasks.core.commands.service import service_manager
from tasks.core.database import ENGINES, label_studio_env
from tasks.core.onserver import convert_database
from tasks.core.profile import Profile
from tasks.core.render import RenderedFile

CONVERTER_SOURCE = Path(convert_database.__file__).read_text()
CONVERTER = "dbconvert.py"
DAEMON_RELOAD = "systemctl daemon-reload"


def stage_dir(profile: Profile) -> PurePosixPath:
    """Root-only: the converter and both engines' env file and unit (the swap job uses them long after
    the upload)."""
    return run_dir(profile) / f"{profile.service.name}-migrate-db"


def install_staged(staged: PurePosixPath, names: list[str], profile: Profile) -> str:
    """The uploads from the login user's temp dir into a fresh root-only stage folder."""
    return install_into_private_dir(stage_dir(profile), staged, names)


def remove_staged(profile: Profile) -> str:
    return remove(stage_dir(profile))


def converter_path(profile: Profile) -> PurePosixPath:
    return stage_dir(profile) / CONVERTER


def credentials(pg: Profile) -> str:
    """The converter's stdin: the connection lines Label Studio reads (POSTGRE_NAME, _USER, _HOST, _PORT,
    from the profile) and the password line of the root-only secret file."""
    lines = [f"{key}={value}" for key, value in label_studio_env(pg.database) if key.startswith("POSTGRE_")]
    return f"{{ printf '%s\\n' {join(*lines)} && cat {q(pg.remote.database_env)}; }}"


def run_converter(pg: Profile, *args: str | PurePosixPath, with_credentials: bool) -> str:
    """The converter as the service user, with the venv's python and the env file rendered for the
    PostgreSQL side `pg` (no secret there; PGSSLMODE for libpq when set), DJANGO_DB forced to sqlite
    so that Django's own settings never connect anywhere: the converter names both databases itself."""
    environment = [f"{key}={value}" for key, value in parse.env_assignments(service_manager(pg).env_file().content)]
    words = service_python(pg, *environment, "DJANGO_DB=sqlite")
    path = q(converter_path(pg))
    # Without the file, "$(cat ...)" would be an empty program that python runs and calls a success.
    present = f"{{ [ -s {path} ] || {{ echo 'the converter is missing: '{path} >&2; false; }}; }}"
    command = f"{words} \"$(cat {path})\" {join(*args)}"
    if with_credentials:
        return f"{present} && {credentials(pg)} | {command}"
    return f"{present} && {command} < /dev/null"


def sqlite_spec(path: PurePosixPath) -> str:
    return f"sqlite:{path}"


def trial(pg: Profile, to: str, work_dir: PurePosixPath) -> str:
    """While Label Studio runs: a fresh conversion of a consistent copy (to PostgreSQL) or of a
    read-only snapshot transaction (to SQLite), which also saves the migrated empty schema."""
    report = work_dir / "trial.json"
    if to == "postgresql":
        return run_converter(pg, "convert", sqlite_spec(work_dir / "label_studio.sqlite3"), "postgresql",
                             "fresh", report, with_credentials=True)
    return run_converter(pg, "convert", "postgresql", sqlite_spec(work_dir / "trial.sqlite3"), "fresh",
                         report, work_dir / "schema.sqlite3", with_credentials=True)


def final_report(work_dir: PurePosixPath) -> PurePosixPath:
    return work_dir / "final.json"


def final(pg: Profile, to: str, work_dir: PurePosixPath, incoming: PurePosixPath) -> str:
    """With Label Studio stopped: the live data into the target (the trial's schema, emptied), verified."""
    report = final_report(work_dir)
    if to == "postgresql":
        return run_converter(pg, "convert", sqlite_spec(pg.remote.database), "postgresql", "reuse",
                             report, with_credentials=True)
    return run_converter(pg, "convert", "postgresql", sqlite_spec(incoming / "label_studio.sqlite3"), "reuse",
                         report, work_dir / "schema.sqlite3", with_credentials=True)


def check_after_start(pg: Profile, to: str, work_dir: PurePosixPath) -> str:
    """Once Label Studio answers on the new engine: its database, read through Label Studio's ORM,
    holds the counts the conversion copied."""
    spec = "postgresql" if to == "postgresql" else sqlite_spec(pg.remote.database)
    return run_converter(pg, "check-counts", spec, final_report(work_dir), with_credentials=to == "postgresql")


def switch_files(profile: Profile, engine: str, files: list[RenderedFile]) -> str:
    """Install the env file and the unit rendered for `engine` from the stage folder (each written
    aside and renamed over), then let systemd read the unit again."""
    if engine not in ENGINES:
        raise ValueError(engine)
    return " && ".join([*install_staged_files(stage_dir(profile), files, engine), DAEMON_RELOAD])


def steps(pg: Profile, to: str, work_dir: PurePosixPath, incoming: PurePosixPath,
          files: dict[str, list[RenderedFile]]) -> dict:
    """The swap job's own steps (commands/swap.job) for the final phase; `files`: the env file and the
    unit rendered for each engine."""
    back = "sqlite" if to == "postgresql" else "postgresql"
    return {"before_swap": final(pg, to, work_dir, incoming),
            "after_swap": switch_files(pg, to, files[to]),
            "undo_swap": switch_files(pg, back, files[back]),
            "after_start": check_after_start(pg, to, work_dir)}
