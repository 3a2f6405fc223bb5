"""migrate-db's server scripts: what the server runs on (its facts), the converter (tasks/core/dbconvert.py)
run as the service user in Label Studio's venv, and the engine switch. Pure builders, run as root.

The engine the service runs on is decided by ONE root-owned file, `remote.database_engine_env`
(`DJANGO_DB=sqlite|postgresql`), read by the unit after the env file; switching engines is writing
it aside and renaming it over (atomic). The PostgreSQL credentials (`POSTGRE_*`, with the password)
live in the root-only 0600 `remote.postgresql_env`, also read by the unit; the converter gets them on
stdin, never in argv or its environment."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from .. import dbconvert, parse
from ..profile import Profile
from . import as_service_user, join, q
from .data import run_dir
from .service import service_manager

CONVERTER_SOURCE = Path(dbconvert.__file__).read_text()
ENGINES = ("sqlite", "postgresql")


def converter_path(profile: Profile) -> PurePosixPath:
    """The converter's source on the server: root-only (the swap job runs it long after the upload)."""
    return run_dir(profile) / f"{profile.service.name}-dbconvert.py"


def install_converter(staged: PurePosixPath, profile: Profile) -> str:
    target = converter_path(profile)
    return (f"install -d -m 0700 -o root -g root {q(target.parent)} && "
            f"install -m 0600 -o root -g root {q(staged)} {q(target)}")


def facts(profile: Profile) -> str:
    """key=value lines: the engine the service is set to, whether PostgreSQL credentials exist and
    answer, whether the unit reads the engine file, the SQLite database's size (0: none)."""
    p = profile.remote
    manager = service_manager(profile)
    unit = p.unit_file
    return "\n".join([
        f"e=$(sed -n 's/^DJANGO_DB=//p' {q(p.database_engine_env)} 2>/dev/null | tail -n 1)",
        "echo \"engine=${e:-sqlite}\"",
        f"if [ -s {q(p.postgresql_env)} ]; then echo credentials=yes; else echo credentials=no; fi",
        f"h=$(sed -n 's/^POSTGRE_HOST=//p' {q(p.postgresql_env)} 2>/dev/null | tail -n 1)",
        f"port=$(sed -n 's/^POSTGRE_PORT=//p' {q(p.postgresql_env)} 2>/dev/null | tail -n 1)",
        "if command -v pg_isready >/dev/null && [ -n \"$h\" ]; then "
        "pg_isready -q -t 5 -h \"$h\" -p \"${port:-5432}\" && echo postgresql=up || echo postgresql=down; "
        "else echo postgresql=unknown; fi",
        f"if grep -qxF {q('EnvironmentFile=-' + str(p.database_engine_env))} {q(unit)} 2>/dev/null; "
        "then echo unit_reads_engine=yes; else echo unit_reads_engine=no; fi",
        f"echo manager={q(manager.kind)}",
        f"echo sqlite_bytes=$({as_service_user(profile, 'stat', '-c', '%s', '--', p.database)} 2>/dev/null || echo 0)",
    ])


def run_converter(profile: Profile, *args: str | PurePosixPath, credentials: bool) -> str:
    """The converter as the service user, with the venv's python and the service's env file as we
    render it (no secret there); the PostgreSQL credentials on stdin when a side is PostgreSQL."""
    environment = [f"{key}={value}" for key, value in parse.env_assignments(service_manager(profile).env_file().content)]
    words = as_service_user(profile, *environment, "DJANGO_DB=sqlite", profile.remote.venv_python, "-c")
    stdin = q(profile.remote.postgresql_env) if credentials else "/dev/null"
    return f"{words} \"$(cat {q(converter_path(profile))})\" {join(*args)} < {stdin}"


def sqlite_spec(path: PurePosixPath) -> str:
    return f"sqlite:{path}"


def trial(profile: Profile, to: str, work_dir: PurePosixPath) -> str:
    """While Label Studio runs: a fresh conversion of a consistent copy (to PostgreSQL) or of a
    read-only snapshot transaction (to SQLite), which also saves the migrated empty schema."""
    report = work_dir / "trial.json"
    if to == "postgresql":
        return run_converter(profile, "convert", sqlite_spec(work_dir / "label_studio.sqlite3"), "postgresql",
                             "fresh", report, credentials=True)
    return run_converter(profile, "convert", "postgresql", sqlite_spec(work_dir / "trial.sqlite3"), "fresh",
                         report, work_dir / "schema.sqlite3", credentials=True)


def final_report(work_dir: PurePosixPath) -> PurePosixPath:
    return work_dir / "final.json"


def final(profile: Profile, to: str, work_dir: PurePosixPath, incoming: PurePosixPath) -> str:
    """With Label Studio stopped: the live data into the target (the trial's schema, emptied), verified."""
    report = final_report(work_dir)
    if to == "postgresql":
        return run_converter(profile, "convert", sqlite_spec(profile.remote.database), "postgresql", "reuse",
                             report, credentials=True)
    return run_converter(profile, "convert", "postgresql", sqlite_spec(incoming / "label_studio.sqlite3"), "reuse",
                         report, work_dir / "schema.sqlite3", credentials=True)


def check_after_start(profile: Profile, to: str, work_dir: PurePosixPath) -> str:
    """Once Label Studio answers on the new engine: its database, read through Label Studio's ORM,
    holds the counts the conversion copied."""
    spec = "postgresql" if to == "postgresql" else sqlite_spec(profile.remote.database)
    return run_converter(profile, "check-counts", spec, final_report(work_dir), credentials=to == "postgresql")


def switch_engine(profile: Profile, engine: str) -> str:
    """The service's engine file replaced atomically (written aside, renamed over)."""
    if engine not in ENGINES:
        raise ValueError(engine)
    target = profile.remote.database_engine_env
    partial = PurePosixPath(f"{target}.lsvm-new")
    return (f"install -d -m 0755 -o root -g root {q(target.parent)} && umask 077 && "
            f"printf 'DJANGO_DB=%s\\n' {q(engine)} > {q(partial)} && mv -f {q(partial)} {q(target)}")


def read_as_service_user(profile: Profile, path: PurePosixPath) -> str:
    return as_service_user(profile, "cat", "--", path)


def steps(profile: Profile, to: str, work_dir: PurePosixPath, incoming: PurePosixPath) -> dict:
    """The swap job's own steps (commands/swap.job) for the final phase."""
    back = "sqlite" if to == "postgresql" else "postgresql"
    return {"before_swap": final(profile, to, work_dir, incoming),
            "after_swap": switch_engine(profile, to),
            "undo_swap": switch_engine(profile, back),
            "after_start": check_after_start(profile, to, work_dir)}
