"""The PostgreSQL side of the toolkit, run ON the server (shipped as source like sqlite.py, stdlib only
except where it says psycopg: Label Studio's venv has psycopg 3). libpq's variables (PGHOST, PGPORT,
PGUSER, PGDATABASE, PGSSLMODE, PGPASSWORD) come from the environment, never argv.

    python3 postgres_tool.py password FILE ROLE   (root) generate FILE if missing; print ALTER ROLE ... with a
                                           SCRAM-SHA-256 verifier of its password (the password itself
                                           never reaches PostgreSQL, argv or a log)
    python postgres_tool.py dump OUT              (service user, venv) consistent pg_dump -Fc + row counts of
                                           every table in the same snapshot, as JSON
    python postgres_tool.py counts [DB]           (service user, venv) Label Studio counts and row counts of
                                           every table, as JSON; {"missing": true} when DB does not exist
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import string
import subprocess
import sys

KEY = "POSTGRE_PASSWORD"
COUNTS = {"users": "htx_user", "projects": "project", "tasks": "task", "annotations": "task_completion"}
ITERATIONS = 4096


def scram_verifier(password: str, salt: bytes, iterations: int = ITERATIONS) -> str:
    """What PostgreSQL stores for a SCRAM-SHA-256 password (RFC 5802/7677, as libpq's PQencryptPasswordConn)."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def read_password(path: str) -> str:
    with open(path, encoding="ascii") as handle:
        for line in handle:
            if line.startswith(KEY + "="):
                return line[len(KEY) + 1:].rstrip("\n")
    raise ValueError(f"no {KEY} line in {path}")


def ensure_password_file(path: str) -> None:
    """A new random password (letters and digits, 190 bits) unless the file exists: 0600, written whole."""
    if os.path.exists(path):
        return
    alphabet = string.ascii_letters + string.digits
    password = "".join(secrets.choice(alphabet) for _ in range(32))
    partial = path + ".lsvm-new"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{KEY}={password}\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def password_sql(path: str, role: str) -> str:
    ensure_password_file(path)
    verifier = scram_verifier(read_password(path), secrets.token_bytes(16))
    return f"ALTER ROLE \"{role}\" WITH LOGIN PASSWORD '{verifier}';\n"


def _tables(cur) -> list[str]:
    cur.execute("select tablename from pg_tables where schemaname = 'public' order by tablename")
    return [row[0] for row in cur.fetchall()]


def table_counts(cur) -> dict:
    counts = {}
    for table in _tables(cur):
        cur.execute(f'select count(*) from public."{table}"')
        counts[table] = cur.fetchone()[0]
    return counts


def summary(tables: dict) -> dict:
    return {key: tables[table] for key, table in COUNTS.items() if table in tables}


def dump(out: str) -> dict:
    """pg_dump in the snapshot of a repeatable-read transaction that also counts every table: the counts
    are exactly what the dump holds (restore-server checks a restored database against them)."""
    import psycopg

    with psycopg.connect("", autocommit=True) as con:  # the transaction is ours, begun explicitly
        cur = con.cursor()
        cur.execute("begin isolation level repeatable read read only")
        cur.execute("select pg_export_snapshot(), current_setting('server_version')")
        snapshot, version = cur.fetchone()
        tables = table_counts(cur)
        run = subprocess.run(["pg_dump", "--format=custom", "--no-owner", "--no-privileges",
                              f"--snapshot={snapshot}", f"--file={out}"],
                             capture_output=True, text=True)
        cur.execute("rollback")
    if run.returncode != 0:
        return {"error": "pg_dump: " + (run.stderr.strip().splitlines() or ["failed"])[-1]}
    listed = subprocess.run(["pg_restore", "--list", out], capture_output=True, text=True)
    digest = hashlib.sha256()
    with open(out, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return {"server_version": version, "tables": tables, "counts": summary(tables),
            "label_studio": all(t in tables for t in COUNTS.values()),
            "integrity_check": "ok" if listed.returncode == 0 else "pg_restore --list failed",
            "size": os.path.getsize(out), "sha256": digest.hexdigest()}


def counts(database: str | None = None) -> dict:
    import psycopg

    try:
        con = psycopg.connect("" if database is None else f"dbname={database}", autocommit=True)
    except psycopg.OperationalError as exc:
        if "does not exist" in str(exc):
            return {"missing": True}
        return {"error": str(exc).strip().splitlines()[0]}
    with con:
        cur = con.cursor()
        cur.execute("select current_setting('server_version')")
        version = cur.fetchone()[0]
        tables = table_counts(cur)
    return {"server_version": version, "tables": tables, "counts": summary(tables)}


def main(argv: list[str]) -> int:
    command, args = argv[0], argv[1:]
    if command == "password":
        sys.stdout.write(password_sql(args[0], args[1]))
        return 0
    if command == "dump":
        result = dump(args[0])
    elif command == "counts":
        result = counts(args[0] if args else None)
    else:
        raise SystemExit(f"unknown command {command}")
    print(json.dumps(result, sort_keys=True))
    return 1 if "error" in result else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
