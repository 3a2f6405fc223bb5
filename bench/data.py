"""Benchmark: `backup` and `push-local-db` vs `scp` of the raw database, on a ~1 GiB Label Studio DB.

    python -m bench.data [--size-mib 1024]

One run, same VM: provisions a fresh test VM, makes real data through Label Studio's API (a project,
tasks with JSON data, annotations), grows it with SQL copies of those rows (the real schema from Label
Studio's migrations) to the target size, then times:
  scp down / scp up of the raw file (the seed scripts' way; baseline),
  fab backup (first, full), fab backup (unchanged server), fab push-local-db,
and reports ratios against scp plus the tool's peak RSS. Needs a Docker engine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from tests.integration.lsclient import LabelStudio  # noqa: E402
from tests.testvm.image import NOPASSWD_USER, build_image  # noqa: E402
from tests.testvm.machine import make_key, start_vm  # noqa: E402

EMAIL, PASSWORD = "admin@example.com", "bench-password-1"
DB = "/var/lib/label-studio/label_studio.sqlite3"


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def timed(command: list[str], env: dict, cwd: Path = PROJECT_ROOT) -> tuple[float, int, str]:
    """Wall seconds, peak RSS in KiB (from wait4's rusage of that one child), and its stdout."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        child = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        elapsed = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read()
        if child.returncode != 0:
            raise SystemExit(f"{command} failed:\n{stdout}\n{err.read()}")
    return elapsed, usage.ru_maxrss, stdout


def make_data(vm, url: str, size_mib: int) -> int:
    ls = LabelStudio(url)
    assert ls.login(EMAIL, PASSWORD)
    project = ls.create_project("benchmark")
    tasks = [{"text": f"review {i}: " + "the quick brown fox jumps over the lazy dog " * 20,
              "meta": {"source": "bench", "i": i, "tags": ["a", "b", "c"]}} for i in range(5000)]
    assert ls.import_file(project, "tasks.json", json.dumps(tasks).encode()).status == 201
    first_task = ls.get(f"/api/tasks?project={project}&page_size=1").json()["tasks"][0]["id"]
    for task_id in range(first_task, first_task + 300):
        resp = ls.post_json(f"/api/tasks/{task_id}/annotations/", {
            "result": [{"from_name": "label", "to_name": "text", "type": "choices",
                        "value": {"choices": ["a"]}}], "lead_time": 3.2})
        assert resp.status == 201, resp.text[:200]
    log(f"API data made; growing the database to {size_mib} MiB with SQL copies of those rows")
    grow = f"""
import sqlite3
con = sqlite3.connect("{DB}")
def copy_rows(table):
    names = [r[1] for r in con.execute(f"pragma table_info({{table}})") if r[1] != "id"]
    values = ["lower(hex(randomblob(16)))" if n == "unique_id" else n for n in names]
    con.execute(f"insert into {{table}} ({{','.join(names)}}) select {{','.join(values)}} from {{table}}")
import os
while os.path.getsize("{DB}") < {size_mib} * 1024 * 1024:
    copy_rows("task")
    copy_rows("task_completion")
    con.commit()
print(con.execute("select count(*) from task").fetchone()[0], con.execute("select count(*) from task_completion").fetchone()[0])
"""
    vm.exec("systemctl stop label-studio")
    out = vm.exec("runuser -u labelstudio -- python3 -", input=grow.encode(), timeout=1800).stdout.decode()
    vm.exec("systemctl start label-studio")
    log(f"tasks, annotations: {out.strip()}")
    return int(vm.exec(f"stat -c %s {DB}").stdout.decode())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lsvm-bench-data-"))
    vm = start_vm(build_image(), make_key(work))
    try:
        ssh_config = work / "ssh_config"
        ssh_config.write_text(vm.ssh_config("vm", NOPASSWD_USER))
        url = f"http://127.0.0.1:{vm.http_port}"
        profile = work / "bench.yaml"
        profile.write_text(f"public_url: {url}\nlabel_studio:\n  admin_email: {EMAIL}\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SSH_", "FABRIC_"))}
        env.update(HOME=str(work), LSVM_CONFIG=str(profile), LSVM_BACKUPS_DIR=str(work / "backups"),
                   LABEL_STUDIO_PASSWORD=PASSWORD)
        fab = [sys.executable, "-m", "fabric", "-S", str(ssh_config), "-H", "vm"]
        log("provisioning the VM")
        timed([*fab, "provision"], env)
        size = make_data(vm, url, args.size_mib)

        # Baseline: the seed scripts' scp of the raw file (readable copy made first, not timed).
        vm.exec(f"cp {DB} /home/{NOPASSWD_USER}/raw.sqlite3 && chown {NOPASSWD_USER} /home/{NOPASSWD_USER}/raw.sqlite3")
        scp = ["scp", "-q", "-F", str(ssh_config)]
        log("scp down")
        scp_down, _, _ = timed([*scp, "vm:raw.sqlite3", str(work / "raw.sqlite3")], env)
        log("scp up")
        scp_up, _, _ = timed([*scp, str(work / "raw.sqlite3"), "vm:raw-up.sqlite3"], env)
        vm.exec(f"rm -f /home/{NOPASSWD_USER}/raw.sqlite3 /home/{NOPASSWD_USER}/raw-up.sqlite3")
        (work / "raw.sqlite3").unlink()

        log("fab backup (full)")
        backup_full, rss_backup, out_backup = timed([*fab, "backup"], env)
        log("fab backup (unchanged server)")
        backup_again, rss_again, _ = timed([*fab, "backup"], env)
        local = work / "local-ls"
        local.mkdir()
        newest = sorted((work / "backups" / "vm").iterdir())[-1]
        shutil.copy(newest / "label_studio.sqlite3", local / "label_studio.sqlite3")
        log("fab push-local-db")
        push, rss_push, out_push = timed([*fab, "push-local-db", "--yes", "--local-data-dir", str(local)], env)
    finally:
        vm.stop()
        shutil.rmtree(work, ignore_errors=True)

    def wire(text: str) -> str:
        match = re.search(r"on the wire", text)
        line = next((l for l in text.splitlines() if "on the wire" in l), "")
        return line.strip() if match else ""

    mib = size / 1024 / 1024
    print()
    print(f"== data benchmark: {mib:.0f} MiB Label Studio database, one VM, one run (baseline: scp) ==")
    print(f"scp down (raw file):            {scp_down:7.1f} s")
    print(f"scp up (raw file):              {scp_up:7.1f} s")
    print(f"fab backup, full:               {backup_full:7.1f} s   {scp_down / backup_full:5.2f}x scp down   "
          f"peak RSS {rss_backup / 1024:.0f} MiB")
    print(f"    {wire(out_backup)}")
    print(f"fab backup, unchanged server:   {backup_again:7.1f} s   {scp_down / backup_again:5.2f}x scp down   "
          f"peak RSS {rss_again / 1024:.0f} MiB")
    print(f"fab push-local-db:              {push:7.1f} s   {scp_up / push:5.2f}x scp up     "
          f"peak RSS {rss_push / 1024:.0f} MiB")
    print(f"    {wire(out_push)}")
    print("    (push includes its pre-push server backup, the upload, the verified swap, the restart and the "
          "health check; scp does only the copy)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
