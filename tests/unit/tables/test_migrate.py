"""migrate-db's pure parts: value normalisation and digests (what makes SQLite text and PostgreSQL jsonb
or timestamptz compare equal), the table order, the comparison, the plan's refusals, the report table,
and the server scripts (sh -n, no secret in argv)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import re
import subprocess
import uuid
from pathlib import PurePosixPath

import pytest
from rich.console import Console

from tasks.core import database
from tasks.core.commands import migrate as commands
from tasks.core.commands import swap
from tasks.core.commands.service import service_manager
from tasks.core.data import migrate
from tasks.core.database import DatabaseSettings
from tasks.core.errors import JobStillRunning, RemoteError, UsageError
from tasks.core.onserver import convert_database as dbconvert
from tasks.core.profile import Profile
from tasks.core.provision.facts import provision_facts_from_probe

PROFILE = Profile(host="vm", address="127.0.0.1")
PG = DatabaseSettings(engine="postgresql")
PG_PROFILE = dataclasses.replace(PROFILE, database=PG)
UTC = dt.timezone.utc


@pytest.mark.parametrize("sqlite_side, postgresql_side", [
    # timestamptz comes back in UTC, SQLite's text with the offset Django stored
    (dt.datetime(2024, 5, 1, 12, 0, 0, 123, tzinfo=UTC),
     dt.datetime(2024, 5, 1, 14, 0, 0, 123, tzinfo=dt.timezone(dt.timedelta(hours=2)))),
    (decimal.Decimal("1.50"), decimal.Decimal("1.5")),
    (uuid.UUID("12345678-1234-5678-1234-567812345678"), uuid.UUID("12345678123456781234567812345678")),
    (b"\x00\x01", memoryview(b"\x00\x01")),
])
def test_values_normalise_equal_across_engines(sqlite_side, postgresql_side):
    assert dbconvert.normalise(sqlite_side) == dbconvert.normalise(postgresql_side)


def test_json_compares_by_value_not_by_key_order_or_number_spelling():
    # jsonb reorders keys and spells 1e2 as 100
    text_side = {"b": [1, {"y": 1e2, "x": None}], "a": "é"}
    jsonb_side = {"a": "é", "b": [1, {"x": None, "y": 100}]}
    assert dbconvert.row_digest([1, text_side], {1}) == dbconvert.row_digest([1, jsonb_side], {1})
    assert dbconvert.row_digest([1, {"a": 1.5}], {1}) != dbconvert.row_digest([1, {"a": 1}], {1})


@pytest.mark.parametrize("one, other", [
    ("1", 1), (None, ""), (True, 1), (1.0, 1), (dt.date(2024, 1, 1), "2024-01-01"),
    (dt.datetime(2024, 1, 1, tzinfo=UTC), dt.datetime(2024, 1, 1)),   # aware vs naive
])
def test_different_values_stay_different(one, other):
    assert dbconvert.row_digest([one]) != dbconvert.row_digest([other])


def test_unknown_types_fail_loudly():
    with pytest.raises(dbconvert.ConversionError):
        dbconvert.normalise(object())


def test_table_digest_ignores_read_order_but_counts_duplicates():
    rows = [dbconvert.row_digest([i, f"t{i}"]) for i in range(5)]
    forward, backward, twice = dbconvert.TableDigest(), dbconvert.TableDigest(), dbconvert.TableDigest()
    for r in rows:
        forward.add(r)
    for r in reversed(rows):
        backward.add(r)
    for r in rows + rows[:1]:
        twice.add(r)
    assert forward.result() == backward.result()
    assert twice.result()["rows"] == 6 and twice.result()["sha256"] != forward.result()["sha256"]


def test_dependency_order_puts_referenced_tables_first_and_breaks_cycles():
    deps = {"task": {"project"}, "project": {"htx_user", "organization"}, "organization": {"htx_user"},
            "htx_user": {"organization"}, "task_completion": {"task", "htx_user", "project"},
            "self_ref": {"self_ref"}, "external": {"not_copied"}}
    order = dbconvert.dependency_order(deps)
    assert sorted(order) == sorted(deps)
    pos = {name: i for i, name in enumerate(order)}
    assert pos["project"] < pos["task"] < pos["task_completion"]
    assert pos["htx_user"] < pos["project"] and pos["organization"] < pos["project"]
    assert dbconvert.dependency_order(deps) == order   # deterministic


def test_compare_and_differences():
    a = {"rows": 2, "sha256": "aa"}
    rows = dbconvert.compare({"t1": a, "t2": a, "t3": a}, {"t1": a, "t2": {"rows": 2, "sha256": "bb"},
                                                          "t3": {"rows": 1, "sha256": "aa"}})
    assert [r["equal"] for r in rows] == [True, False, False]
    problems = dbconvert.differences({"tables": rows, "sequences": [{"table": "t1", "wanted": 9, "target": 8},
                                                                    {"table": "t2", "wanted": 3, "target": 3}]})
    assert problems == ["t2: the rows differ", "t3: 2 rows in the source, 1 in the target",
                        "sequence of t1: 8 in the target, 9 wanted"]


def test_sequences_never_go_back_below_the_source_counter():
    assert dbconvert.sequence_wanted(40, 12) == 40      # rows 13..40 were deleted: ids not reused
    assert dbconvert.sequence_wanted(None, 12) == 12
    assert dbconvert.sequence_wanted(None, None) == 0


def test_credentials_are_parsed_from_env_text_on_stdin():
    text = "# made by provision\nPOSTGRE_NAME=ls\nexport POSTGRE_USER='ls'\nPOSTGRE_PASSWORD=\"p=w#1\"\nOTHER=x\n"
    assert dbconvert.parse_credentials(text) == {"POSTGRE_NAME": "ls", "POSTGRE_USER": "ls", "POSTGRE_PASSWORD": "p=w#1"}
    settings = dbconvert.database_settings("postgresql", {**dbconvert.parse_credentials(text), "POSTGRE_HOST": "h"},
                                           read_only=False)
    assert settings["PORT"] == 5432 and settings["PASSWORD"] == "p=w#1"
    with pytest.raises(dbconvert.ConversionError, match="POSTGRE_HOST"):
        dbconvert.database_settings("postgresql", dbconvert.parse_credentials(text), read_only=False)


def test_the_sqlite_source_is_opened_read_only():
    assert dbconvert.database_settings("sqlite:/d/x.sqlite3", {}, read_only=True)["NAME"] == "file:/d/x.sqlite3?mode=ro"


def test_count_differences():
    assert dbconvert.count_differences({"tasks": 3, "users": 2}, {"tasks": 3, "users": 2}) == []
    assert dbconvert.count_differences({"tasks": 3}, {"tasks": 2}) == ["2 tasks instead of 3"]


# ------------------------------------------------------------------------------------------------
# The plan


def on_server(engine: str, *, db: bool = True, profile: Profile = PROFILE, **changes):
    """Provision facts of a server provisioned with `engine` (its env file and unit as provision renders
    them for this profile), with a SQLite file or not."""
    side = dataclasses.replace(profile, database=PG if engine == "postgresql" else DatabaseSettings())
    manager = service_manager(side)
    files = {"env_file": manager.env_file().content, "unit_file": manager.definition().content, **changes}
    return dataclasses.replace(provision_facts_from_probe(""), files=files, db_exists=db)


@pytest.mark.parametrize("server, to, profile, error, words", [
    (on_server("sqlite"), "mysql", PROFILE, UsageError, "--to must be one of"),
    (on_server("sqlite"), "sqlite", PROFILE, UsageError, "already runs on sqlite"),
    (on_server("postgresql"), "postgresql", PG_PROFILE, UsageError, "already runs on postgresql"),
    (on_server("sqlite"), "postgresql", PROFILE, UsageError, "the profile says database.engine: sqlite"),
    (on_server("postgresql"), "sqlite", PG_PROFILE, UsageError, "the profile says database.engine: postgresql"),
    (on_server("sqlite", db=False), "postgresql", PG_PROFILE, UsageError, "no SQLite database"),
    (on_server("sqlite", env_file=None), "postgresql", PG_PROFILE, UsageError, "not provisioned"),
    (on_server("sqlite", env_file="DJANGO_DB=mysql\n"), "postgresql", PG_PROFILE, RemoteError, "does not know"),
    (on_server("sqlite", unit_file="[Unit]\n"), "postgresql", PG_PROFILE, UsageError, "provision` with database.engine: sqlite"),
    (on_server("postgresql", unit_file="[Unit]\n"), "sqlite", PROFILE, UsageError, "provision` with database.engine: postgresql"),
])
def test_refusals(server, to, profile, error, words):
    with pytest.raises(error, match=re.escape(words)):
        migrate.plan(server, to, profile, "vm")


def test_plan_both_ways():
    there, said_there = migrate.plan(on_server("sqlite"), "postgresql", PG_PROFILE, "vm")
    back, said_back = migrate.plan(on_server("postgresql", db=False), "sqlite", PROFILE, "vm")
    words_there, words_back = said_there.lines(), said_back.lines()
    assert said_back.prepare is None and len(words_there) == 6 and len(words_back) == 5
    assert "PostgreSQL ready by provision's own steps" in words_there[0]
    assert "snapshot" in words_there[1] and "consistent SQLite copy" in words_there[1]
    assert "pg_dump" in words_back[0] and "a new SQLite file" in words_back[1]
    assert "back on sqlite" in words_there[-1] and "back on postgresql" in words_back[-1]
    # The PostgreSQL side is the profile going there, the server's own settings coming back.
    assert there.pg is there.target and there.source.database == DatabaseSettings()
    assert back.pg is back.source and back.source.database == PG and back.target is PROFILE


def test_the_server_engine_comes_from_its_env_file():
    sqlite_env = on_server("sqlite").files["env_file"]
    pg_env = on_server("postgresql").files["env_file"]
    assert database.server_engine(None) is None
    assert database.server_engine(sqlite_env) == "sqlite" and database.server_settings(sqlite_env) == DatabaseSettings()
    assert database.server_engine(pg_env) == "postgresql" and database.server_settings(pg_env) == PG
    for sslmode in (None, "require"):   # the default (verify-full) and a profile's own
        external = DatabaseSettings(engine="postgresql", host="db.example.org", port=6432, name="ls", user="lsu",
                                    sslmode=sslmode)
        rendered = "".join(f"{k}={v}\n" for k, v in database.label_studio_env(external))
        assert database.server_settings(rendered) == external
    assert database.server_engine("DJANGO_DB=mysql\n") == "mysql" and database.server_settings("DJANGO_DB=mysql\n") is None


@pytest.mark.parametrize("server_env, wanted, has_data, words", [
    (None, PG, True, None),                                      # never provisioned
    ("", DatabaseSettings(), True, None),                        # SQLite both
    ("", PG, False, None),                                       # SQLite, no data yet: provision may switch
    ("", PG, True, "runs on SQLite with its data and the profile says database.engine: postgresql"),
    ("PG", DatabaseSettings(), True, "runs on PostgreSQL with its data and the profile says database.engine: sqlite"),
    ("PG", PG, True, None),
    ("PG", dataclasses.replace(PG, name="other"), True, "and the profile says PostgreSQL labelstudio@127.0.0.1:5432/other"),
    ("DJANGO_DB=mysql\n", DatabaseSettings(), True, "which this toolkit does not manage"),
])
def test_provision_refuses_a_profile_that_names_another_database(server_env, wanted, has_data, words):
    env = on_server("postgresql").files["env_file"] if server_env == "PG" else server_env
    found = database.mismatch(database.server_settings(env), database.server_engine(env), wanted,
                              has_data=has_data, alias="vm", config="configs/vm.yaml")
    if words is None:
        assert found is None
    else:
        assert words in found[0] and "nothing was changed" in found[0]
        if "engine" in words:
            assert f"migrate-db --to {wanted.engine}" in found[1]


def test_report_table_shows_each_table_with_rows_and_sums_up_empty_ones():
    report = {"tables": dbconvert.compare(
        {"task": {"rows": 3, "sha256": "ab" * 32}, "empty": {"rows": 0, "sha256": "cd" * 32},
         "bad": {"rows": 2, "sha256": "ef" * 32}},
        {"task": {"rows": 3, "sha256": "ab" * 32}, "empty": {"rows": 0, "sha256": "cd" * 32},
         "bad": {"rows": 2, "sha256": "01" * 32}}), "rows": 5, "sequences": []}
    console = Console(width=120, record=True)
    console.print(migrate.report_table(report, "final"))
    text = console.export_text()
    assert "task" in text and "equal" in text and "1 empty tables" in text
    assert "bad" in text and "DIFFERS" in text and "efefefefefef / 010101010101" in text
    assert "5 rows in 3 tables, 2 equal" in migrate.summary(report)


# ------------------------------------------------------------------------------------------------
# Server scripts


def sh_n(script: str) -> None:
    result = subprocess.run(["sh", "-n"], input=script, text=True, capture_output=True)
    assert result.returncode == 0, result.stderr


def test_scripts_parse_and_keep_secrets_off_argv():
    work, incoming = PurePosixPath("/var/tmp/lsvm-migrate.abc123"), PurePosixPath("/var/lib/label-studio/.lsvm-incoming")
    for to, profile, server in (("postgresql", PG_PROFILE, on_server("sqlite")), ("sqlite", PROFILE, on_server("postgresql"))):
        migration, _ = migrate.plan(server, to, profile, "vm")
        files = migration.files(server)
        steps = commands.steps(migration.pg, to, work, incoming, files)
        for script in (commands.trial(migration.pg, to, work), *steps.values()):
            sh_n(script)
        sh_n(swap.job(profile, [], 300, **steps))
        # The password only from provision's root-only file, on the converter's stdin.
        assert f"cat {PROFILE.remote.database_env}; }} | runuser" in steps["before_swap"]
        assert "POSTGRE_PASSWORD" not in steps["before_swap"] and "POSTGRE_HOST=127.0.0.1" in steps["before_swap"]
    sh_n(commands.install_staged(PurePosixPath("/tmp/x"), ["dbconvert.py", "sqlite-label-studio.env"], PROFILE))
    with pytest.raises(ValueError):
        commands.switch_files(PROFILE, "mysql; rm -rf /", [])


def test_the_switch_installs_the_other_engines_files_by_rename_and_the_check_rolls_back():
    migration, _ = migrate.plan(on_server("sqlite"), "postgresql", PG_PROFILE, "vm")
    files = migration.files(on_server("sqlite"))
    assert "DJANGO_DB=default" in files["postgresql"][0].content and "DJANGO_DB" not in files["sqlite"][0].content
    assert str(PROFILE.remote.database_env) in files["postgresql"][1].content
    assert str(PROFILE.remote.database_env) not in files["sqlite"][1].content
    steps = commands.steps(migration.pg, "postgresql", PurePosixPath("/w"), PurePosixPath("/i"), files)
    env, unit = PROFILE.remote.env_file, PROFILE.remote.unit_file
    stage = commands.stage_dir(PROFILE)
    assert f"{stage}/postgresql-{env.name} {env}.lsvm-new && mv -f {env}.lsvm-new {env}" in steps["after_swap"]
    assert f"{stage}/sqlite-{unit.name} {unit}.lsvm-new && mv -f {unit}.lsvm-new {unit}" in steps["undo_swap"]
    assert steps["after_swap"].endswith("systemctl daemon-reload")
    job = swap.job(PROFILE, [], 300, after_start="check-it")
    assert "if run after_start; then run on_success" in job and f"say {swap.CHECK_FAILED}" in job


# ------------------------------------------------------------------------------------------------
# Ctrl-C while the swap job runs, and a converter that is not there (issue 21.10)


def test_a_missing_converter_is_an_error_never_an_empty_program(tmp_path, monkeypatch):
    monkeypatch.setattr(commands, "converter_path", lambda profile: PurePosixPath(tmp_path / "gone" / "dbconvert.py"))
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "runuser").write_text(f"#!/bin/sh\ntouch {tmp_path}/ran\n")
    (stubs / "runuser").chmod(0o755)
    pg = Profile(database=DatabaseSettings(engine="postgresql"))
    for with_credentials in (False, True):
        script = commands.run_converter(pg, "convert", "a", "b", with_credentials=with_credentials)
        out = subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                             env={"PATH": f"{stubs}:/usr/bin:/bin"})
        assert out.returncode != 0 and "the converter is missing" in out.stderr
        assert not (tmp_path / "ran").exists()


class Recorder:
    alias = "vm"

    def __init__(self):
        self.commands = []

    def run(self, command, **options):
        self.commands.append(command)
        from tasks.core.connect import Output
        return Output(0, "/var/tmp/lsvm-migrate.abc\n", "")


@pytest.mark.parametrize("raised, removed", [(JobStillRunning, False), (RemoteError("x"), True), (None, True)])
def test_what_the_running_job_uses_stays_after_a_ctrl_c(monkeypatch, raised, removed):
    """The stage folder (converter, both engines' files) and the work folder go, unless the swap job that
    reads them still runs after a Ctrl-C here."""
    from tasks.core import transfer
    from tasks.core.data import snapshots
    monkeypatch.setattr(transfer, "stage", lambda *a, **k: None)     # the uploads themselves
    host = Recorder()
    profile = Profile()
    migration = migrate.Migration("postgresql", profile, profile)
    try:
        with snapshots.server_work_dir(host, profile, "migrate"), migrate.staged(host, migration, {}):
            if raised is not None:
                raise raised
    except (JobStillRunning, RemoteError):
        pass
    assert any(c == commands.remove_staged(profile) for c in host.commands) is removed
    assert any(c.startswith("runuser") and "rm -rf -- /var/tmp/lsvm-migrate.abc" in c for c in host.commands) is removed
