"""Label Studio on PostgreSQL installed on the VM (`database: {engine: postgresql}`): the official SDK
works through nginx; PostgreSQL listens on loopback only; its password is nowhere but the root-only
secret file; a second provision changes nothing; backup -> the database dropped -> restore-server gives
the same data back; a broken dump, a dump that does not match its manifest and a new database that does
not come up all leave the original serving, with a non-zero exit."""

from __future__ import annotations

import json
import re
import threading

import pytest

# CI time: local PostgreSQL on Debian 13's worker; Debian 12's carries the external-database test's two VMs.
pytestmark = pytest.mark.one_release("trixie")

from tests.integration.support.labelstudio import (annotate_through_sdk, api_token, concurrent_annotators, exported_view,
                                                   sdk_tasks, sdk_view)

SECRET = "/opt/label-studio/label-studio-database.env"


@pytest.fixture(scope="module")
def pg(postgres_provisioned):
    machine = postgres_provisioned
    assert machine.first_run.returncode == 0, machine.first_run.stdout + machine.first_run.stderr
    machine.token = api_token(machine)
    return machine


def sh(machine, script: str, **kwargs) -> str:
    result = machine.vm.exec(script, **kwargs)
    return result.stdout.decode()


def password(machine) -> str:
    line = sh(machine, f"cat {SECRET}").strip()
    assert line.startswith("POSTGRE_PASSWORD=")
    return line.split("=", 1)[1]


def psql(machine, sql: str, database: str = "labelstudio") -> str:
    return sh(machine, f"runuser -u postgres -- psql -X -t -A -d {database}", input=sql.encode()).strip()


def test_label_studio_runs_on_postgresql_through_nginx(pg):
    annotate_through_sdk(pg, "On PostgreSQL")
    view = sdk_view(pg.url, pg.token)
    assert view["projects"] == {"On PostgreSQL": 12} and view["annotations"] == 5
    # The rows are in PostgreSQL, and no SQLite database was made.
    assert psql(pg, "select count(*) from task_completion") == "5"
    assert psql(pg, "select title from project") == "On PostgreSQL"
    assert sh(pg, "ls /var/lib/label-studio/label_studio.sqlite3 2>&1 || true").count("No such file") == 1
    status = pg.fab("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert re.search(r"PostgreSQL labelstudio@127\.0\.0\.1:5432/labelstudio.*answers", status.stdout), status.stdout


def test_export_reads_postgresql_in_one_repeatable_read_transaction(pg, tmp_path):
    """Label Studio's exporter with the read-only REPEATABLE READ transaction PostgreSQL needs as its first
    statement; the file holds what the official SDK reads."""
    from label_studio_sdk import LabelStudio as SDK

    sdk = SDK(base_url=pg.url, api_key=pg.token)
    project = next(p.id for p in sdk.projects.list() if p.title == "On PostgreSQL")
    done = pg.fab("export", "--project", str(project), "--out", str(tmp_path / "pg.json"))
    assert done.returncode == 0, done.stdout + done.stderr
    tasks = json.loads((tmp_path / "pg.json").read_text())
    assert exported_view(tasks) == sdk_tasks(sdk, project) and sum(bool(t["annotations"]) for t in tasks) == 5


def test_postgresql_listens_on_loopback_only(pg):
    listening = sh(pg, "ss -ltnH")
    ports = [line.split()[3] for line in listening.splitlines() if line.split()[3].endswith(":5432")]
    # localhost: 127.0.0.1, and ::1 where the VM has IPv6 on loopback.
    assert "127.0.0.1:5432" in ports and set(ports) <= {"127.0.0.1:5432", "[::1]:5432"}, listening
    ipv6 = sh(pg, "cat /proc/sys/net/ipv6/conf/lo/disable_ipv6 2>/dev/null").strip() == "0"
    assert ("[::1]:5432" in ports) == ipv6, listening
    hba = sh(pg, "cat /etc/postgresql/*/main/pg_hba.conf")
    assert "host all labelstudio 127.0.0.1/32 scram-sha-256" in hba
    stored = psql(pg, "select rolpassword from pg_authid where rolname = 'labelstudio'", "postgres")
    assert stored.startswith("SCRAM-SHA-256$4096:"), stored


def test_the_password_is_only_in_the_root_only_file(pg):
    secret = password(pg)
    assert len(secret) >= 32
    assert sh(pg, f"stat -c '%U:%G:%a' {SECRET}").strip() == "root:root:600"
    # Nowhere else: unit files, the env file, any process's argv, the journal, PostgreSQL's log.
    places = "/etc /opt /var/log /var/lib/label-studio /tmp /var/tmp"
    found = sh(pg, f"grep -rlF -- \"$(sed -n 's/^POSTGRE_PASSWORD=//p' {SECRET})\" {places} 2>/dev/null || true")
    assert found.split() == [SECRET], found
    assert secret not in sh(pg, "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\000' ' '")
    assert secret not in sh(pg, "journalctl --no-pager -o cat 2>/dev/null")
    # Label Studio itself has it (from systemd's EnvironmentFile=), and logs in with it.
    pid = sh(pg, "systemctl show -p MainPID --value label-studio").strip()
    assert f"POSTGRE_PASSWORD={secret}".encode() in pg.vm.exec(f"cat /proc/{pid}/environ").stdout
    assert "EnvironmentFile=/opt/label-studio/label-studio-database.env" in sh(pg, "cat /etc/systemd/system/label-studio.service")


def test_second_provision_changes_nothing(pg):
    before = password(pg)
    again = pg.fab("provision")
    assert again.returncode == 0, again.stdout + again.stderr
    assert re.search(r"\b0 changed\b", again.stdout), again.stdout
    assert "the password logs in" in again.stdout
    assert password(pg) == before


# ------------------------------------------------------------------------------------------------
# backup and restore-server


def snapshots_dir(machine):
    return machine.fab.home / "backups" / "vm"


def backup(machine, *args: str) -> str:
    result = machine.fab("backup", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return re.search(r"snapshot (\d{8}T\d{6}Z\S*):", result.stdout).group(1)


def lsvm_databases(machine) -> str:
    return psql(machine, "select datname from pg_database where datname like '%lsvm%'", "postgres")


def copy_snapshot(machine, snapshot_id: str, new_id: str, change) -> str:
    """A copy of a snapshot under another id, changed by `change(folder, manifest)` (the manifest is
    rewritten after it: the copy passes the local checks and fails, if at all, on the server)."""
    import hashlib
    import shutil
    source, target = snapshots_dir(machine) / snapshot_id, snapshots_dir(machine) / new_id
    shutil.copytree(source, target)
    manifest = json.loads((target / "manifest.json").read_text())
    change(target, manifest)
    for entry in manifest["files"]:
        data = (target / entry["path"]).read_bytes()
        entry["size"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    (target / "manifest.json").write_text(json.dumps(manifest))
    return new_id


@pytest.fixture(scope="module")
def backed_up(pg):
    annotate_through_sdk(pg, "Backed up", n_tasks=20, n_annotations=7)
    pg.before = sdk_view(pg.url, pg.token)
    pg.snapshot = backup(pg, "--label", "pg")
    return pg


def test_backup_is_a_consistent_pg_dump_with_its_counts(backed_up):
    pg = backed_up
    folder = snapshots_dir(pg) / pg.snapshot
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["extra"]["engine"] == "postgresql"
    assert re.match(r"^(15|17)\.", manifest["extra"]["server_version"]), manifest["extra"]
    assert manifest["integrity_check"] == "ok"
    assert manifest["counts"]["annotations"] == pg.before["annotations"] >= 7
    assert manifest["extra"]["tables"]["task"] == sum(pg.before["projects"].values())
    assert (folder / "label_studio.pgdump").read_bytes()[:5] == b"PGDMP"
    assert {f["path"] for f in manifest["files"]} >= {"label_studio.pgdump", ".env"}
    listed = pg.fab("backups")
    assert listed.returncode == 0 and pg.snapshot in listed.stdout and "verified" in listed.stdout, listed.stdout


def test_drop_the_database_then_restore_gives_the_same_data(backed_up):
    pg = backed_up
    annotate_through_sdk(pg, "After the backup", n_tasks=3, n_annotations=1)
    sh(pg, "systemctl stop label-studio")
    psql(pg, "DROP DATABASE labelstudio WITH (FORCE)", "postgres")
    assert "labelstudio" not in psql(pg, "select datname from pg_database", "postgres").split()
    restored = pg.fab("restore-server", "--snapshot", pg.snapshot, "--yes")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert "row counts equal to the dump's" in restored.stdout
    assert sdk_view(pg.url, pg.token) == pg.before
    assert lsvm_databases(pg) == ""


def test_a_broken_dump_leaves_the_original_serving(backed_up):
    pg = backed_up
    now = sdk_view(pg.url, pg.token)

    def truncate(folder, manifest):
        dump = folder / "label_studio.pgdump"
        dump.write_bytes(dump.read_bytes()[: dump.stat().st_size // 2])

    broken = copy_snapshot(pg, pg.snapshot, "20990101T000000Z-broken", truncate)
    result = pg.fab("restore-server", "--snapshot", broken, "--yes")
    assert result.returncode != 0
    assert "did not restore" in result.stderr and "nothing was changed" in result.stderr, result.stderr
    assert sdk_view(pg.url, pg.token) == now
    assert lsvm_databases(pg) == ""


def test_a_dump_that_differs_from_its_manifest_is_refused(backed_up):
    pg = backed_up
    now = sdk_view(pg.url, pg.token)

    def miscount(folder, manifest):
        manifest["extra"]["tables"]["task"] += 1

    wrong = copy_snapshot(pg, pg.snapshot, "20990101T000001Z-miscounted", miscount)
    result = pg.fab("restore-server", "--snapshot", wrong, "--yes")
    assert result.returncode != 0
    tasks = sum(pg.before["projects"].values())
    assert f"task: {tasks + 1} in the snapshot, {tasks} restored" in result.stderr, result.stderr
    assert sdk_view(pg.url, pg.token) == now
    assert lsvm_databases(pg) == ""


def test_a_new_database_that_does_not_come_up_is_switched_back(backed_up):
    """The snapshot's dump, made again from a database one migration short and one column gone (the
    manifest counts one migration less): it restores, the migrations run, /health answers UP, and the
    release's read of every table fails; the job renames the old database back."""
    pg = backed_up
    annotate_through_sdk(pg, "Kept by the rollback", n_tasks=2, n_annotations=1)
    now = sdk_view(pg.url, pg.token)
    assert now != pg.before

    def break_after_migrations(folder, manifest):
        dump = folder / "label_studio.pgdump"
        psql(pg, "create database tricky", "postgres")
        try:
            pg.vm.exec("runuser -u postgres -- pg_restore --no-owner --exit-on-error -d tricky",
                       input=dump.read_bytes())
            psql(pg, "alter table project drop column annotator_evaluation_enabled; "
                     "alter table task_completion drop column lead_time; "
                     "delete from django_migrations where app = 'projects' "
                     "and name = '0034_project_annotator_evaluation_enabled';", "tricky")
            dump.write_bytes(pg.vm.exec("runuser -u postgres -- pg_dump --format=custom --no-owner "
                                        "--no-privileges tricky").stdout)
        finally:
            psql(pg, "drop database tricky", "postgres")
        manifest["extra"]["tables"]["django_migrations"] -= 1

    tricky = copy_snapshot(pg, pg.snapshot, "20990101T000002Z-tricky", break_after_migrations)
    result = pg.fab("restore-server", "--snapshot", tricky, "--yes")
    assert result.returncode != 0
    assert "cannot read the new database: task_completion:" in result.stderr, result.stderr
    assert "previous data is back in place and Label Studio is serving it" in result.stderr, result.stderr
    assert sdk_view(pg.url, pg.token) == now
    assert lsvm_databases(pg) == ""


def test_what_is_not_done_on_postgresql_refuses_in_one_line(backed_up):
    """A PostgreSQL dump is not a database a laptop's Label Studio or a push can use; pull and upgrade are
    not built for PostgreSQL (push of a laptop's SQLite converts: test_move)."""
    pg = backed_up
    now = sdk_view(pg.url, pg.token)
    for args in (("push-local-db", "--snapshot", pg.snapshot, "--yes"), ("pull-server-db", "--yes"),
                 ("upgrade", "--yes")):
        result = pg.fab(*args)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "nothing was changed" in result.stderr and "Traceback" not in result.stderr
    assert sdk_view(pg.url, pg.token) == now


def test_concurrent_annotators_all_succeed_on_postgresql(pg):
    result = concurrent_annotators(pg, pg.token, "postgresql")
    assert result.ok > 0 and result.failed == 0, result.summary()
    # gunicorn's workers keep their connections between requests (Label Studio alone opens one per
    # request): idle now, they are still there, at most one per worker.
    workers = int(sh(pg, "pgrep -fc 'bin/[g]unicorn --config'").strip()) - 1
    kept = int(psql(pg, "select count(*) from pg_stat_activity where usename = 'labelstudio' and datname = 'labelstudio'"))
    assert 1 <= kept <= workers
    # Over loopback without TLS (it protects nothing there and costs every query), and none of them is
    # the master's: it loads Label Studio before forking and closes what that opened.
    assert psql(pg, "select distinct ssl from pg_stat_ssl join pg_stat_activity using (pid) "
                    "where usename = 'labelstudio'") == "f"
    master = sh(pg, "systemctl show -p MainPID --value label-studio").strip()
    holders = sh(pg, "ss -tnpH state established '( dport = :5432 )'")
    assert holders.count("gunicorn") >= 1 and f"pid={master}," not in holders, holders


def test_two_starts_together_apply_the_migrations_once(pg):
    """Two app servers starting at once on a database with no schema yet (the next VM behind a load
    balancer, or two provisions): each runs the step before its start, as the unit does; one applies
    every migration under Label Studio's advisory lock, the other waits and finds nothing left."""
    psql(pg, "create database lsvm_race owner labelstudio", "postgres")
    start = ("set -a; . /opt/label-studio/label-studio.env; . /opt/label-studio/label-studio-database.env; set +a; "
             "export POSTGRE_NAME=lsvm_race; cd /var/lib/label-studio && "
             "runuser -u labelstudio -- /opt/label-studio/current/bin/python -I /opt/label-studio/prepare-database.py")
    try:
        outputs = [None, None]

        def run(index: int) -> None:
            outputs[index] = pg.vm.exec(start, check=False, timeout=600)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        said = [o.stdout.decode() for o in outputs]
        assert [o.returncode for o in outputs] == [0, 0], [o.stderr.decode()[-2000:] for o in outputs]
        # Each says how many it had to apply and how many it applied (Django's own "Applying" lines).
        counts = sorted((int(re.search(r"applied (\d+) migration", s).group(1)),
                         int(re.search(r"(\d+) migration\(s\) to apply", s).group(1))) for s in said)
        (nothing, _), (applied, planned) = counts
        assert nothing == 0 and applied == planned > 0, said
        assert int(psql(pg, "select count(*) from django_migrations", "lsvm_race")) >= applied
        assert psql(pg, "select count(*) from (select app, name from django_migrations group by app, name "
                        "having count(*) > 1) d", "lsvm_race") == "0"
    finally:
        psql(pg, "drop database if exists lsvm_race", "postgres")


OFFSITE_TARGET = "/srv/offsite/ls"


def test_offsite_copies_carry_a_dump_of_postgresql_and_the_drill_reads_it(pg):
    """offsite: on PostgreSQL: no Litestream; each restic snapshot holds a pg_dump and its row counts
    (one transaction) beside .env and media, and the nightly drill lists the dump's contents."""
    pg.vm.exec(f"mkdir -p {OFFSITE_TARGET}")
    pg.profile.write_text(pg.profile.read_text() + f"offsite:\n  target: {OFFSITE_TARGET}\n")
    provisioned = pg.fab("provision")
    out = provisioned.stdout + provisioned.stderr
    assert provisioned.returncode == 0, out
    assert "created PostgreSQL dump tool /opt/label-studio/offsite-postgres-tool.py" in out, out
    assert "label-studio-offsite.service" not in out and "Litestream settings" not in out, out
    assert "the database's dump, .env and media, hourly" in out, out
    made = pg.fab("offsite", "--files")
    assert made.returncode == 0, made.stdout + made.stderr
    assert "none: PostgreSQL is dumped (pg_dump -Fc) into each snapshot" in made.stdout, made.stdout
    # The snapshot as restic keeps it: the dump restores into a scratch database with the counts taken with it.
    restic = (f"set -a; . /opt/label-studio/label-studio-offsite-restic.env; set +a; "
              f"restic --repo {OFFSITE_TARGET}/restic --cache-dir /tmp/restic-cache")
    listing = sh(pg, f"{restic} dump latest /files.tar | tar -tf -").split()
    assert {"label_studio.pgdump", "label_studio.pgdump.json", ".env"} <= set(listing), listing
    counts = json.loads(sh(pg, f"{restic} dump latest /files.tar | tar -xOf - label_studio.pgdump.json"))["counts"]
    assert counts["annotations"] == int(psql(pg, "select count(*) from task_completion"))
    psql(pg, "create database lsvm_offsite owner labelstudio", "postgres")
    try:
        sh(pg, f"{restic} dump latest /files.tar | tar -xOf - label_studio.pgdump | runuser -u postgres -- "
               "pg_restore --no-owner -d lsvm_offsite")
        assert psql(pg, "select count(*) from task_completion", "lsvm_offsite") == str(counts["annotations"])
    finally:
        psql(pg, "drop database if exists lsvm_offsite", "postgres")
    drill = pg.fab("offsite", "--drill")
    assert drill.returncode == 0, drill.stdout + drill.stderr
    assert "pg_restore lists its" in drill.stdout and "Label Studio's tables in it" in drill.stdout, drill.stdout
    status = pg.fab("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "PostgreSQL, dumped into each snapshot below" in status.stdout, status.stdout
    # The password went to pg_dump's environment only: still nowhere but its root-only file.
    found = sh(pg, f"grep -rlF -- \"$(sed -n 's/^POSTGRE_PASSWORD=//p' {SECRET})\" /etc /opt /var/log /tmp /var/tmp "
                   f"{OFFSITE_TARGET} 2>/dev/null || true")
    assert found.split() == [SECRET], found


def test_restore_server_offsite_puts_the_dump_back(pg):
    """What was lost after the newest offsite snapshot comes back as the dump has it, through the swap
    job (a snapshot of the server first, a new database checked against the dump's counts)."""
    kept = psql(pg, "select count(*) from task_completion")
    assert int(kept) > 0
    psql(pg, "delete from task_completion")
    dry = pg.fab("restore-server", "--offsite", "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "the database: the dump in restic snapshot" in dry.stdout and "stay the server's" in dry.stdout, dry.stdout
    result = pg.fab("restore-server", "--offsite", "--yes")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "server backed up as" in out and "row counts equal to the dump's" in out, out
    assert psql(pg, "select count(*) from task_completion") == kept
    status = pg.fab("status")
    assert status.returncode == 0, status.stdout + status.stderr
