"""Converting a Label Studio database between SQLite and PostgreSQL, row for row, with proof.

Runs ON the server, as the service user, with the Python of Label Studio's own venv and its Django
settings (`migrate-db` uploads this file and runs it with `python -c`). The pure part (normalising
values, row and table digests, the table order, the comparison) is standard library only and
unit-tested on this machine; Django is imported only inside the functions that run there.

How a conversion works:
- two Django database aliases: `default` is the TARGET, `source` the source. The target is the
  default so that anything Label Studio's migrations or app code do without naming a database lands
  in the target; the source is opened read-only at the database level (SQLite `mode=ro`,
  PostgreSQL `default_transaction_read_only`), so nothing here can write to it;
- the target schema is made by Label Studio's own migrations (`migrate` on the target), then every
  model table is emptied (migrations create content types, permissions, ...) and filled with the
  source's rows, model by model in dependency order, with the same primary keys, through the ORM's
  insert path in raw mode (what `bulk_create` uses, without its `auto_now` stamping): no `save()`,
  no signals, so a user's post-save hook cannot create the auth token the copy brings next (the
  duplicate that breaks `loaddata`, HumanSignal/label-studio#1658). Many-to-many through tables and
  multi-table-inheritance parents are models of their own and copied the same way. All of it is one
  transaction on the target (foreign keys are deferred on both engines, so cycles such as
  user <-> organization need no special order), with the constraints checked before the commit;
- sequences: past max(id), and never below the source's own counter (SQLite's sqlite_sequence,
  PostgreSQL's sequence), so ids of deleted rows are not handed out again;
- verification: every table read back through the ORM on both sides, each row normalised (datetimes
  to UTC ISO, JSON with sorted keys, decimals, UUIDs, bytes) and hashed; a table's digest is the hash
  of its sorted row hashes (independent of the order a collation sorts text keys in) and its row
  count. Any difference fails the conversion.

Secrets (PostgreSQL credentials, `POSTGRE_*` lines) come on stdin, never in argv.
Output: progress lines, then `RESULT {json}` on success; on failure the last line says why.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import hashlib
import json
import os
import sys
import time
import uuid

RESULT = "RESULT "
MARKER_TABLE = "lsvm_migrate_db"   # made first in a PostgreSQL target: the tables there are ours to replace
SOURCE, TARGET = "source", "default"
SKIPPED_TABLES = frozenset({"django_migrations", "sqlite_sequence", "sqlite_stat1", "sqlite_stat4", MARKER_TABLE})
DERIVED_COLUMNS = frozenset({("project", "search_vector")})
CHUNK = 2000
CREDENTIAL_KEYS = ("POSTGRE_NAME", "POSTGRE_USER", "POSTGRE_PASSWORD", "POSTGRE_HOST", "POSTGRE_PORT")
COUNTED = {"users": "htx_user", "projects": "project", "tasks": "task", "annotations": "task_completion",
           "predictions": "prediction", "drafts": "tasks_annotationdraft", "tokens": "authtoken_token"}


class ConversionError(Exception):
    """An expected failure: its message is the one line the user reads."""


# ------------------------------------------------------------------------------------------------
# Pure: values, rows, tables


def _json_value(value):
    """A decoded JSON value in canonical form: JSON has one number type, so an integral float (what
    PostgreSQL's jsonb answers for 1e2) is the integer it equals."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) < 2 ** 53 else value
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return normalise(value)


def normalise(value, *, json_field: bool = False):
    """One value as the same JSON-able form whichever engine it was read from."""
    if json_field:
        return {"json": _json_value(value)} if value is not None else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return {"float": repr(value)}
    if isinstance(value, decimal.Decimal):
        return {"decimal": format(value.normalize(), "f") if value.is_finite() else str(value)}
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            return {"naive": value.isoformat(timespec="microseconds")}
        return {"utc": value.astimezone(datetime.timezone.utc).isoformat(timespec="microseconds")}
    if isinstance(value, (datetime.date, datetime.time)):
        return {type(value).__name__: value.isoformat()}
    if isinstance(value, datetime.timedelta):
        return {"timedelta": value // datetime.timedelta(microseconds=1)}
    if isinstance(value, uuid.UUID):
        return {"uuid": str(value)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (dict, list, tuple)):
        return {"json": _json_value(value)}
    raise ConversionError(f"cannot compare a value of type {type(value).__name__}")


def row_digest(values, json_fields=()) -> bytes:
    """sha256 of one row's normalised values (`json_fields`: the positions of JSON columns)."""
    row = [normalise(v, json_field=i in json_fields) for i, v in enumerate(values)]
    text = json.dumps(row, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


class TableDigest:
    """Row count and a digest of a table's rows that does not depend on the order they were read in."""

    def __init__(self):
        self.rows: list[bytes] = []

    def add(self, digest: bytes) -> None:
        self.rows.append(digest)

    def result(self) -> dict:
        whole = hashlib.sha256()
        for digest in sorted(self.rows):
            whole.update(digest)
        return {"rows": len(self.rows), "sha256": whole.hexdigest()}


def dependency_order(depends_on: dict[str, set[str]]) -> list[str]:
    """Tables so that each comes after the tables it references, ties by name; a cycle (user <->
    organization) is broken at its first table by name (the foreign keys are deferred anyway)."""
    remaining = {name: set(deps) & set(depends_on) - {name} for name, deps in depends_on.items()}
    ordered: list[str] = []
    while remaining:
        ready = sorted(name for name, deps in remaining.items() if not deps)
        chosen = ready[0] if ready else sorted(remaining)[0]
        ordered.append(chosen)
        del remaining[chosen]
        for deps in remaining.values():
            deps.discard(chosen)
    return ordered


def compare(source: dict[str, dict], target: dict[str, dict]) -> list[dict]:
    """One row per table: counts and digests of both sides and whether they agree."""
    rows = []
    for table in sorted(set(source) | set(target)):
        s, t = source.get(table), target.get(table)
        rows.append({"table": table, "source_rows": s["rows"] if s else None,
                     "target_rows": t["rows"] if t else None,
                     "source_sha256": s["sha256"] if s else None, "target_sha256": t["sha256"] if t else None,
                     "equal": bool(s and t and s == t)})
    return rows


def differences(report: dict) -> list[str]:
    """What makes a conversion report fail, in words (empty: it passed)."""
    problems = [f"{r['table']}: {r['source_rows']} rows in the source, {r['target_rows']} in the target"
                if r["source_rows"] != r["target_rows"] else f"{r['table']}: the rows differ"
                for r in report.get("tables", []) if not r["equal"]]
    problems += [f"sequence of {s['table']}: {s['target']} in the target, {s['wanted']} wanted"
                 for s in report.get("sequences", []) if s["target"] < s["wanted"]]
    return problems


def count_differences(expected: dict, found: dict) -> list[str]:
    return [f"{found.get(k)} {k} instead of {v}" for k, v in sorted(expected.items()) if found.get(k) != v]


def parse_credentials(text: str) -> dict[str, str]:
    """POSTGRE_* assignments of an env file (KEY=VALUE lines, optional quotes) -> {key: value}."""
    found = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if key.startswith("export "):
            key = key[len("export "):].strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if key in CREDENTIAL_KEYS:
            found[key] = value
    return found


def sequence_wanted(source_counter: int | None, max_id: int | None) -> int:
    """The value a target's id counter must have: past every copied id and the source's counter."""
    return max(source_counter or 0, max_id or 0)


# ------------------------------------------------------------------------------------------------
# On the server: Django


def database_settings(spec: str, credentials: dict[str, str], *, read_only: bool) -> dict:
    """A Django DATABASES entry for `sqlite:/path` or `postgresql`."""
    if spec.startswith("sqlite:"):
        path = spec[len("sqlite:"):]
        name = f"file:{path}?mode=ro" if read_only else path
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": name, "OPTIONS": {}}
    if spec != "postgresql":
        raise ConversionError(f"unknown database {spec!r}")
    missing = [k for k in CREDENTIAL_KEYS if k not in credentials and k != "POSTGRE_PORT"]
    if missing:
        raise ConversionError(f"the PostgreSQL credentials lack {', '.join(missing)}")
    options = {}
    if read_only:
        import psycopg
        options = {"options": "-c default_transaction_read_only=on",
                   "isolation_level": psycopg.IsolationLevel.REPEATABLE_READ}
    return {"ENGINE": "django.db.backends.postgresql", "NAME": credentials["POSTGRE_NAME"],
            "USER": credentials["POSTGRE_USER"], "PASSWORD": credentials["POSTGRE_PASSWORD"],
            "HOST": credentials["POSTGRE_HOST"], "PORT": int(credentials.get("POSTGRE_PORT") or 5432),
            "OPTIONS": options}


def setup_django(databases: dict[str, dict]) -> None:
    import label_studio

    sys.path.insert(0, os.path.dirname(label_studio.__file__))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "label_studio.core.settings.label_studio")
    from django.conf import settings

    settings.DATABASES.clear()
    for alias, config in databases.items():
        settings.DATABASES[alias] = config
    import django

    django.setup()


def copied_models():
    """Every model that owns a table: managed, not a proxy (auto-created m2m through tables included)."""
    from django.apps import apps

    return [m for m in apps.get_models(include_auto_created=True) if m._meta.managed and not m._meta.proxy]


def local_fields(model):
    """The columns copied and compared: the model's own, except those the database derives (a
    generated column; Label Studio's project.search_vector, generated on PostgreSQL and an unused
    text column on SQLite, which Label Studio leaves empty there)."""
    return [f for f in model._meta.local_concrete_fields
            if not getattr(f, "generated", False) and (model._meta.db_table, f.column) not in DERIVED_COLUMNS]


def json_positions(fields) -> frozenset:
    return frozenset(i for i, f in enumerate(fields) if f.get_internal_type() == "JSONField")


def ordered_models(models):
    by_table = {m._meta.db_table: m for m in models}
    deps = {table: {f.related_model._meta.db_table for f in local_fields(m) if f.is_relation and f.related_model}
            for table, m in by_table.items()}
    return [by_table[t] for t in dependency_order(deps)]


def read_rows(model, alias: str):
    fields = local_fields(model)
    query = (model._base_manager.using(alias).order_by(model._meta.pk.attname)
             .values_list(*[f.attname for f in fields]))
    return fields, query.iterator(chunk_size=CHUNK)


def table_digest(model, alias: str) -> dict:
    fields, rows = read_rows(model, alias)
    positions = json_positions(fields)
    digest = TableDigest()
    for row in rows:
        digest.add(row_digest(row, positions))
    return digest.result()


def applied_migrations(alias: str) -> set[tuple[str, str]]:
    from django.db import connections
    from django.db.migrations.recorder import MigrationRecorder

    recorder = MigrationRecorder(connections[alias])
    if not recorder.has_table():
        return set()
    return set(recorder.applied_migrations())


def existing_tables(alias: str) -> set[str]:
    from django.db import connections

    with connections[alias].cursor() as cursor:
        return set(connections[alias].introspection.table_names(cursor))


def unknown_tables_with_rows(models) -> list[str]:
    """Tables of the source no model knows about that hold rows: they would not be copied."""
    from django.db import connections

    known = {m._meta.db_table for m in models} | SKIPPED_TABLES
    lost = []
    connection = connections[SOURCE]
    for table in sorted(existing_tables(SOURCE) - known):
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT 1 FROM {connection.ops.quote_name(table)} LIMIT 1")
            if cursor.fetchone():
                lost.append(table)
    return lost


def reset_target(spec: str, credentials: dict[str, str]) -> None:
    """Make room for a fresh target, BEFORE Django starts (Label Studio caches which columns its
    tables have, per process): a SQLite target must not exist yet; a PostgreSQL target is emptied,
    only when it holds no table or only tables this converter made (marked) and owns."""
    if spec.startswith("sqlite:"):
        if os.path.lexists(spec[len("sqlite:"):]):
            raise ConversionError(f"{spec[len('sqlite:'):]} exists already; it is not overwritten")
        return
    import psycopg
    from psycopg import sql

    settings = database_settings(spec, credentials, read_only=False)
    with psycopg.connect(dbname=settings["NAME"], user=settings["USER"], password=settings["PASSWORD"],
                         host=settings["HOST"], port=settings["PORT"], connect_timeout=30) as connection:
        tables = connection.execute("SELECT tablename, tableowner = current_user FROM pg_tables "
                                    "WHERE schemaname = current_schema()").fetchall()
        if tables and MARKER_TABLE not in {name for name, _ in tables}:
            raise ConversionError(f"PostgreSQL database {settings['NAME']} already holds {len(tables)} tables "
                                  "that migrate-db did not make; it is not overwritten")
        foreign = [name for name, own in tables if not own]
        if foreign:
            raise ConversionError(f"{len(foreign)} tables of PostgreSQL database {settings['NAME']} belong to "
                                  "another role; it is not overwritten")
        if tables:
            connection.execute(sql.SQL("DROP TABLE {} CASCADE").format(
                sql.SQL(", ").join(sql.Identifier(name) for name, _ in tables)))
        connection.execute(sql.SQL("CREATE TABLE {} (made timestamptz NOT NULL DEFAULT now())").format(
            sql.Identifier(MARKER_TABLE)))
        connection.execute(sql.SQL("INSERT INTO {} DEFAULT VALUES").format(sql.Identifier(MARKER_TABLE)))


def make_schema(say) -> None:
    """The target schema, by Label Studio's own migrations."""
    from django.core.management import call_command

    started = time.monotonic()
    call_command("migrate", database=TARGET, interactive=False, verbosity=0)
    say(f"schema made by Label Studio's migrations in {time.monotonic() - started:.1f}s")


def source_counters() -> dict[str, int]:
    """The source's id counters by table (SQLite's sqlite_sequence, PostgreSQL's sequences)."""
    from django.db import connections

    connection = connections[SOURCE]
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            if "sqlite_sequence" not in {r[0] for r in cursor.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()}:
                return {}
            return {name: int(seq) for name, seq in cursor.execute("SELECT name, seq FROM sqlite_sequence")}
        counters = {}
        for model in copied_models():
            pk = model._meta.pk
            if pk.get_internal_type() not in ("AutoField", "BigAutoField", "SmallAutoField"):
                continue
            cursor.execute("SELECT pg_get_serial_sequence(%s, %s)", [model._meta.db_table, pk.column])
            (sequence,) = cursor.fetchone()
            if sequence:
                cursor.execute(f"SELECT last_value, is_called FROM {sequence}")
                last, called = cursor.fetchone()
                counters[model._meta.db_table] = int(last) if called else int(last) - 1
        return counters


def set_sequences(models, counters: dict[str, int]) -> list[dict]:
    """Each auto id counter of the target past max(id) and the source's counter; what it became."""
    from django.db import connections
    from django.db.models import Max

    connection = connections[TARGET]
    results = []
    with connection.cursor() as cursor:
        for model in models:
            pk = model._meta.pk
            if pk.get_internal_type() not in ("AutoField", "BigAutoField", "SmallAutoField"):
                continue
            table = model._meta.db_table
            top = model._base_manager.using(TARGET).aggregate(top=Max(pk.attname))["top"]
            wanted = sequence_wanted(counters.get(table), top)
            if connection.vendor == "postgresql":
                cursor.execute("SELECT pg_get_serial_sequence(%s, %s)", [table, pk.column])
                (sequence,) = cursor.fetchone()
                if wanted:
                    cursor.execute("SELECT setval(%s, %s, true)", [sequence, wanted])
                else:
                    cursor.execute("SELECT setval(%s, 1, false)", [sequence])
                cursor.execute(f"SELECT last_value, is_called FROM {sequence}")
                last, called = cursor.fetchone()
                now = int(last) if called else int(last) - 1
            else:
                cursor.execute("DELETE FROM sqlite_sequence WHERE name = %s", [table])
                if wanted:
                    cursor.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (%s, %s)", [table, wanted])
                cursor.execute("SELECT seq FROM sqlite_sequence WHERE name = %s", [table])
                found = cursor.fetchone()
                now = int(found[0]) if found else 0
            results.append({"table": table, "wanted": wanted, "target": now})
    return results


def copy_table(model, say) -> dict:
    """The source's rows of one table into the target, same keys, raw inserts; the source digest."""
    from django.db import connections
    from django.db.models.base import ModelState

    fields, rows = read_rows(model, SOURCE)
    positions = json_positions(fields)
    names = [f.attname for f in fields]
    connection = connections[TARGET]
    batch_size = max(1, connection.ops.bulk_batch_size(fields, [None] * 1000) or 1000)
    batch_size = min(batch_size, 1000)
    manager = model._base_manager.using(TARGET)
    digest = TableDigest()
    batch = []

    def flush_batch():
        try:
            manager._insert(batch, fields=fields, raw=True, using=TARGET)
        except Exception as exc:  # the database's own words, with where it happened
            first = getattr(batch[0], model._meta.pk.attname)
            raise ConversionError(f"copying {model._meta.db_table} (rows from id {first}) failed: "
                                  f"{' '.join(str(exc).split())}") from exc
        batch.clear()

    for row in rows:
        digest.add(row_digest(row, positions))
        obj = model.__new__(model)
        obj._state = ModelState()
        obj._state.db, obj._state.adding = TARGET, True
        obj.__dict__.update(zip(names, row))
        batch.append(obj)
        if len(batch) >= batch_size:
            flush_batch()
    if batch:
        flush_batch()
    return digest.result()


def convert(source_spec: str, target_spec: str, *, fresh: bool, schema_out: str | None, say) -> dict:
    """The whole conversion (see the module docstring); returns the report, raises ConversionError."""
    from django.core.management.color import no_style
    from django.db import connections, transaction

    started = time.monotonic()
    models = copied_models()
    lost = unknown_tables_with_rows(models)
    if lost:
        raise ConversionError(f"the source has tables Label Studio's models do not know, with rows: "
                              f"{', '.join(lost)}; they would be lost")
    source_migrations = applied_migrations(SOURCE)
    if not source_migrations:
        raise ConversionError("the source is not a Label Studio database (no migrations applied)")
    if fresh:
        make_schema(say)
    target_migrations = applied_migrations(TARGET)
    if target_migrations != source_migrations:
        extra, missing = target_migrations - source_migrations, source_migrations - target_migrations
        raise ConversionError(f"the source and target schemas differ ({len(missing)} migrations only in the "
                              f"source, {len(extra)} only in the target): the source must be migrated by "
                              "the installed Label Studio first")
    target = connections[TARGET]
    tables = [m._meta.db_table for m in models]
    if fresh and schema_out:
        with transaction.atomic(using=TARGET):
            for statement in target.ops.sql_flush(no_style(), tables, reset_sequences=True, allow_cascade=True):
                with target.cursor() as cursor:
                    cursor.execute(statement)
        target.close()
        save_schema_copy(target.settings_dict["NAME"], schema_out)
    copy_started = time.monotonic()
    source_digests = {}
    with transaction.atomic(using=SOURCE), transaction.atomic(using=TARGET):
        for statement in target.ops.sql_flush(no_style(), tables, reset_sequences=True, allow_cascade=True):
            with target.cursor() as cursor:
                cursor.execute(statement)
        for model in ordered_models(models):
            source_digests[model._meta.db_table] = copy_table(model, say)
        counters = source_counters()
        sequences = set_sequences(models, counters)
        try:
            target.check_constraints(table_names=tables)
        except Exception as exc:
            raise ConversionError(f"the copy breaks a constraint: {' '.join(str(exc).split())}") from exc
    copied = time.monotonic() - copy_started
    rows = sum(d["rows"] for d in source_digests.values())
    say(f"copied {rows} rows of {len(tables)} tables in {copied:.1f}s")
    target_digests = {m._meta.db_table: table_digest(m, TARGET) for m in models}
    report = {"tables": compare(source_digests, target_digests), "sequences": sequences,
              "rows": rows, "copy_seconds": round(copied, 2), "seconds": round(time.monotonic() - started, 2),
              "source": source_spec.split(":")[0], "target": target_spec.split(":")[0],
              "counts": {k: source_digests.get(t, {}).get("rows") for k, t in COUNTED.items()}}
    if target.vendor == "sqlite":
        with target.cursor() as cursor:
            cursor.execute("PRAGMA integrity_check")
            report["integrity_check"] = "; ".join(r[0] for r in cursor.fetchall())
        if report["integrity_check"] != "ok":
            raise ConversionError(f"the new SQLite file fails integrity_check: {report['integrity_check']}")
    problems = differences(report)
    report["ok"] = not problems
    return report


def save_schema_copy(path: str, out: str) -> None:
    """An empty copy of the freshly migrated SQLite target (the final conversion starts from it)."""
    import sqlite3

    source, copy = sqlite3.connect(path), sqlite3.connect(out)
    try:
        source.backup(copy)
    finally:
        copy.close()
        source.close()


def start_from_schema(schema: str, target: str) -> None:
    """A new SQLite target from the empty, migrated copy the trial saved (never over an existing file)."""
    import shutil

    if os.path.lexists(target):
        raise ConversionError(f"{target} exists already; it is not overwritten")
    shutil.copyfile(schema, target)


def counts(spec: str) -> dict:
    """Row counts of the main tables through the ORM (the service's database after a switch)."""
    from django.db import connections

    connection = connections[TARGET]
    with connection.cursor() as cursor:
        found = {}
        for key, table in COUNTED.items():
            cursor.execute(f"SELECT count(*) FROM {connection.ops.quote_name(table)}")
            found[key] = cursor.fetchone()[0]
    return found


def main(argv: list[str]) -> int:
    """usage: convert SOURCE TARGET fresh|reuse REPORT [SCHEMA] | counts DATABASE | check-counts DATABASE REPORT"""
    command = argv[0] if argv else ""

    def say(line: str) -> None:
        print(line, flush=True)

    try:
        specs = argv[1:3] if command == "convert" else argv[1:2]
        if command == "convert" and len(argv) < 5 or command != "convert" and len(argv) < 2:
            raise ConversionError(main.__doc__)
        credentials = parse_credentials(sys.stdin.read()) if "postgresql" in specs else {}
        if command == "convert":
            source_spec, target_spec, mode, report_path = argv[1:5]
            schema = argv[5] if len(argv) > 5 else None
            if mode == "reuse" and schema and target_spec.startswith("sqlite:"):
                start_from_schema(schema, target_spec[len("sqlite:"):])
            if mode == "fresh":
                reset_target(target_spec, credentials)
            setup_django({TARGET: database_settings(target_spec, credentials, read_only=False),
                          SOURCE: database_settings(source_spec, credentials, read_only=True)})
            report = convert(source_spec, target_spec, fresh=mode == "fresh",
                             schema_out=schema if mode == "fresh" else None, say=say)
            with open(report_path, "w", encoding="utf-8") as handle:
                json.dump(report, handle)
            if not report["ok"]:
                raise ConversionError("verification failed: " + "; ".join(differences(report)[:3]))
            say(RESULT + json.dumps({"ok": True, "rows": report["rows"], "seconds": report["seconds"]}))
        elif command in ("counts", "check-counts"):
            setup_django({TARGET: database_settings(argv[1], credentials, read_only=True)})
            found = counts(argv[1])
            if command == "check-counts":
                with open(argv[2], encoding="utf-8") as handle:
                    expected = json.load(handle)["counts"]
                wrong = count_differences(expected, found)
                if wrong:
                    raise ConversionError("after the switch Label Studio's database holds " + "; ".join(wrong))
            say(RESULT + json.dumps(found))
        else:
            raise ConversionError(f"unknown command {command!r}")
    except ConversionError as exc:
        say(f"migrate-db: {exc}")
        return 1
    except Exception as exc:  # a database or Django error: its own words, on one line
        say(f"migrate-db: {type(exc).__name__}: {' '.join(str(exc).split())[:400]}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
