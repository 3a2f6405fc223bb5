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
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from dev.lsclient import LabelStudio  # noqa: E402
from dev.testvm.image import NOPASSWD_USER, build_image  # noqa: E402
from dev.testvm.machine import make_key, start_vm  # noqa: E402

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
import os
target = {size_mib} * 1024 * 1024
while os.path.getsize("{DB}") < target:
    # Double while far from the target, then copy only the share of rows still missing.
    share = min(1.0, (target - os.path.getsize("{DB}")) / os.path.getsize("{DB}"))
    for table in ("task", "task_completion"):
        rows = con.execute(f"select count(*) from {{table}}").fetchone()[0]
        names = [r[1] for r in con.execute(f"pragma table_info({{table}})") if r[1] != "id"]
        values = ["lower(hex(randomblob(16)))" if n == "unique_id" else n for n in names]
        con.execute(f"insert into {{table}} ({{','.join(names)}}) select {{','.join(values)}} from {{table}} "
                    f"limit {{max(1, int(rows * share))}}")
    con.commit()
print(con.execute("select count(*) from task").fetchone()[0], con.execute("select count(*) from task_completion").fetchone()[0])
"""
    vm.exec("systemctl stop label-studio")
    out = vm.exec("runuser -u labelstudio -- python3 -", input=grow.encode(), timeout=1800).stdout.decode()
    vm.exec("systemctl start label-studio")
    log(f"tasks, annotations: {out.strip()}")
    return int(vm.exec(f"stat -c %s {DB}").stdout.decode())


def shape(vm, rate: str) -> None:
    """Limit the VM's link both ways, like a laptop's uplink to a university VM: the VM's egress
    (downloads) inside it, and the host side of its veth (uploads)."""
    vm.exec(f"tc qdisc replace dev eth0 root tbf rate {rate} burst 1mb latency 200ms")
    index = vm.exec("cat /sys/class/net/eth0/iflink").stdout.decode().strip()
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    name = next(line.split(":")[1].strip().split("@")[0] for line in links.splitlines()
                if line.split(":")[0] == index)
    subprocess.run(["tc", "qdisc", "replace", "dev", name, "root", "tbf", "rate", rate, "burst", "1mb",
                    "latency", "200ms"], check=True)


def wire(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if "on the wire" in line), "")


def measure(vm, work: Path, fab: list[str], env: dict, ssh_config: Path, mode: str) -> dict:
    """One set of timings: scp down/up of the raw file, backup (full, unchanged), push-local-db."""
    env = dict(env, LSVM_BACKUPS_DIR=str(work / f"backups-{mode}"))
    home = f"/home/{NOPASSWD_USER}"
    vm.exec(f"cp {DB} {home}/raw.sqlite3 && chown {NOPASSWD_USER} {home}/raw.sqlite3")
    scp = ["scp", "-q", "-F", str(ssh_config)]
    r = {}
    log(f"[{mode}] scp down")
    r["scp_down"], _, _ = timed([*scp, "vm:raw.sqlite3", str(work / "raw.sqlite3")], env)
    log(f"[{mode}] scp up")
    r["scp_up"], _, _ = timed([*scp, str(work / "raw.sqlite3"), "vm:raw-up.sqlite3"], env)
    vm.exec(f"rm -f {home}/raw.sqlite3 {home}/raw-up.sqlite3")
    (work / "raw.sqlite3").unlink()
    log(f"[{mode}] fab backup (full)")
    r["backup"], r["backup_rss"], r["backup_out"] = timed([*fab, "backup"], env)
    log(f"[{mode}] fab backup (unchanged server)")
    r["again"], r["again_rss"], _ = timed([*fab, "backup"], env)
    local = work / f"local-{mode}"
    local.mkdir()
    newest = sorted((work / f"backups-{mode}" / "vm").iterdir())[-1]
    shutil.copy(newest / "label_studio.sqlite3", local / "label_studio.sqlite3")
    log(f"[{mode}] fab push-local-db")
    r["push"], r["push_rss"], r["push_out"] = timed([*fab, "push-local-db", "--yes", "--local-data-dir", str(local)], env)
    shutil.rmtree(local)
    return r


def report(mode: str, r: dict) -> None:
    print(f"-- {mode} --")
    print(f"scp down (raw file):            {r['scp_down']:7.1f} s")
    print(f"scp up (raw file):              {r['scp_up']:7.1f} s")
    print(f"fab backup, full:               {r['backup']:7.1f} s   {r['scp_down'] / r['backup']:5.2f}x scp down   "
          f"peak RSS {r['backup_rss'] / 1024:.0f} MiB")
    print(f"    {wire(r['backup_out'])}")
    print(f"fab backup, unchanged server:   {r['again']:7.1f} s   {r['scp_down'] / r['again']:5.2f}x scp down   "
          f"peak RSS {r['again_rss'] / 1024:.0f} MiB")
    print(f"fab push-local-db:              {r['push']:7.1f} s   {r['scp_up'] / r['push']:5.2f}x scp up     "
          f"peak RSS {r['push_rss'] / 1024:.0f} MiB")
    print(f"    {wire(r['push_out'])}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rate", default="100mbit",
                        help="also measure on a link shaped to this rate (tc syntax); 'none' skips it")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lsvm-bench-data-"))
    vm = start_vm(build_image(), make_key(work))
    results = {}
    try:
        ssh_config = work / "ssh_config"
        ssh_config.write_text(vm.ssh_config("vm", NOPASSWD_USER))
        url = f"http://127.0.0.1:{vm.http_port}"
        profile = work / "bench.yaml"
        profile.write_text(f"public_url: {url}\nlabel_studio:\n  admin_email: {EMAIL}\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SSH_", "FABRIC_"))}
        env.update(HOME=str(work), LSVM_CONFIG=str(profile), LABEL_STUDIO_PASSWORD=PASSWORD)
        fab = [sys.executable, "-m", "fabric", "-S", str(ssh_config), "-H", "vm"]
        log("provisioning the VM")
        timed([*fab, "provision"], env)
        size = make_data(vm, url, args.size_mib)
        results["loopback (no bandwidth limit)"] = measure(vm, work, fab, env, ssh_config, "loopback")
        if args.rate != "none":
            shape(vm, args.rate)
            results[f"link shaped to {args.rate} both ways"] = measure(vm, work, fab, env, ssh_config, "shaped")
    finally:
        vm.stop()
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"== data benchmark: {size / 1024 / 1024:.0f} MiB Label Studio database, one VM, one run "
          "(baseline: scp of the raw file) ==")
    for mode, r in results.items():
        report(mode, r)
    print("(push includes its pre-push server backup, the local check of the database, the upload, the "
          "verified swap, the restart and the health check; scp does only the copy)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
