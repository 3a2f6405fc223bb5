"""migrate-db's pure parts: value normalisation and digests (what makes SQLite text and PostgreSQL jsonb
or timestamptz compare equal), the table order, the comparison, the plan's refusals, the report table,
and the server scripts (sh -n, no secret in argv)."""

from __future__ import annotations

import datetime as dt
import decimal
import subprocess
import uuid
from pathlib import PurePosixPath

import pytest
from rich.console import Console

from tasks.core import dbconvert, migrate
from tasks.core.commands import migrate as commands
from tasks.core.commands import swap
from tasks.core.errors import RemoteError, UsageError
from tasks.core.profile import Profile

PROFILE = Profile(host="vm", address="127.0.0.1")
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


def facts(**changes) -> migrate.MigrateFacts:
    base = dict(engine="sqlite", credentials=True, postgresql="up", unit_reads_engine=True, manager="systemd",
                sqlite_bytes=4096)
    return migrate.MigrateFacts(**{**base, **changes})


def test_facts_parse():
    text = ("engine=postgresql\ncredentials=yes\npostgresql=down\nunit_reads_engine=no\nmanager=systemd\n"
            "sqlite_bytes=123\n")
    assert migrate.MigrateFacts.parse(text) == facts(engine="postgresql", postgresql="down",
                                                     unit_reads_engine=False, sqlite_bytes=123)


@pytest.mark.parametrize("changes, to, error, words", [
    ({}, "mysql", UsageError, "--to must be one of"),
    ({}, "sqlite", UsageError, "already runs on sqlite"),
    ({"engine": "postgresql"}, "postgresql", UsageError, "already runs on postgresql"),
    ({"manager": "screen"}, "postgresql", UsageError, "systemd"),
    ({"unit_reads_engine": False}, "postgresql", UsageError, "provision"),
    ({"credentials": False}, "postgresql", UsageError, "not provisioned"),
    ({"postgresql": "down"}, "postgresql", RemoteError, "does not answer"),
    ({"sqlite_bytes": 0}, "postgresql", UsageError, "no SQLite database"),
    ({"engine": "mysql"}, "postgresql", RemoteError, "does not know"),
])
def test_refusals(changes, to, error, words):
    with pytest.raises(error, match=words):
        migrate.plan(facts(**changes), to, PROFILE)


def test_plan_both_ways():
    there = migrate.plan(facts(), "postgresql", PROFILE)
    back = migrate.plan(facts(engine="postgresql", sqlite_bytes=0), "sqlite", PROFILE)
    assert "snapshot" in there[0] and "trial" in there[1] and "stop Label Studio" in there[2]
    assert "back on sqlite" in there[-1] and "back on postgresql" in back[-1]
    assert "a new SQLite file" in back[1]


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
    for to in commands.ENGINES:
        steps = commands.steps(PROFILE, to, work, incoming)
        for script in (commands.trial(PROFILE, to, work), *steps.values()):
            sh_n(script)
        sh_n(swap.job(PROFILE, [], 300, **steps))
        assert f"< {PROFILE.remote.postgresql_env}" in steps["before_swap"]
        assert "POSTGRE_PASSWORD" not in steps["before_swap"]
    sh_n(commands.facts(PROFILE))
    assert "DJANGO_DB=%s" in commands.switch_engine(PROFILE, "postgresql")
    with pytest.raises(ValueError):
        commands.switch_engine(PROFILE, "mysql; rm -rf /")


def test_the_switch_is_a_rename_and_the_check_rolls_back():
    switch = commands.switch_engine(PROFILE, "postgresql")
    assert switch.endswith(f"mv -f {PROFILE.remote.database_engine_env}.lsvm-new {PROFILE.remote.database_engine_env}")
    job = swap.job(PROFILE, [], 300, after_start="check-it")
    assert "if run after_start; then run on_success" in job and f"say {swap.CHECK_FAILED}" in job
