"""Benchmark: how long Label Studio is down during an upgrade (1.22.0 -> 1.23.2, the same data).

    python -m bench.upgrade

Two test VMs provisioned with 1.22.0 and the same data. Baseline, the in-place path this toolkit used
before releases existed (and the seed guide's): `pip install label-studio==1.23.2` into the running
venv, then a restart. Measured: `fab upgrade` (snapshot, build beside, migration check on a copy, then
the switch). Downtime is seen from outside, as a user sees it: /health polled through nginx every
0.2 s; the longest run of answers that are not UP. Needs a Docker engine (like the integration tests).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from dev.lsclient import LabelStudio  # noqa: E402
from dev.testvm.image import NOPASSWD_USER, build_image  # noqa: E402
from dev.testvm.machine import make_key, start_vm  # noqa: E402

OLD, NEW = "1.22.0", "1.23.2"
ADMIN, PASSWORD = "admin@example.com", "bench-password-1"


class Outage:
    """Polls /health through nginx in a thread; the longest stretch without UP is the downtime."""

    def __init__(self, url: str):
        self.url, self.stop, self.longest, self.down_since = url, threading.Event(), 0.0, None
        self.thread = threading.Thread(target=self.run, daemon=True)

    def up(self) -> bool:
        try:
            resp = LabelStudio(self.url, timeout=2).get("/health")
            return resp.status == 200 and resp.json().get("status") == "UP"
        except (OSError, ValueError):
            return False

    def run(self) -> None:
        while not self.stop.is_set():
            now = time.monotonic()
            if self.up():
                if self.down_since is not None:
                    self.longest = max(self.longest, now - self.down_since)
                    self.down_since = None
            elif self.down_since is None:
                self.down_since = now
            time.sleep(0.2)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def provisioned_vm(work: Path, name: str):
    home = work / name
    home.mkdir()
    vm = start_vm(build_image(), make_key(home))
    (home / "ssh_config").write_text(vm.ssh_config("vm", NOPASSWD_USER))
    profile = home / "vm.yaml"
    url = f"http://127.0.0.1:{vm.http_port}"
    profile.write_text(f'public_url: {url}\nlabel_studio:\n  version: "{OLD}"\n  admin_email: {ADMIN}\n')
    env = dict(os.environ, HOME=str(home), LSVM_CONFIG=str(profile), LABEL_STUDIO_PASSWORD=PASSWORD,
               LSVM_BACKUPS_DIR=str(home / "backups"))
    fab(home, env, "provision")
    ls = LabelStudio(url)
    assert ls.login(ADMIN, PASSWORD)
    project = ls.create_project("bench")
    tasks = [{"text": f"task {i}: " + "words " * (i % 40)} for i in range(2000)]
    assert ls.import_file(project, "tasks.json", json.dumps(tasks).encode()).status == 201
    return vm, home, env, url


def fab(home: Path, env: dict, *args: str) -> float:
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "fabric", "-S", str(home / "ssh_config"), "-H", "vm", *args],
                   cwd=PROJECT_ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    return time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m bench.upgrade", description=__doc__.splitlines()[0]).parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="lsvm-bench-upgrade-"))
    vms = []
    try:
        print("provisioning two VMs with 1.22.0 ...", file=sys.stderr, flush=True)
        in_place = provisioned_vm(work, "in-place")
        vms.append(in_place[0])
        side = provisioned_vm(work, "side-by-side")
        vms.append(side[0])

        vm, home, env, url = in_place
        release = f"/opt/label-studio/releases/{OLD}"
        with Outage(url) as baseline:
            start = time.monotonic()
            vm.exec(f"{release}/bin/python -m pip install -q label-studio=={NEW} && systemctl restart label-studio",
                    timeout=1800)
            while not baseline.up():
                time.sleep(0.2)
            baseline_total = time.monotonic() - start

        vm, home, env, url = side
        with Outage(url) as measured:
            total = fab(home, env, "upgrade", "--version", NEW, "--yes")
    finally:
        for vm in vms:
            vm.stop()

    print()
    print(f"== upgrade downtime, {OLD} -> {NEW}, 2000 tasks (baseline: pip install in place + restart) ==")
    print(f"in place (baseline):  down {baseline.longest:6.1f} s  of {baseline_total:6.1f} s in all")
    print(f"fab upgrade:          down {measured.longest:6.1f} s  of {total:6.1f} s in all "
          "(snapshot, build, migration check on a copy: while Label Studio serves)")
    ratio = measured.longest / baseline.longest if baseline.longest else float("inf")
    print(f"downtime ratio:       {ratio:6.2f}x the in-place path")
    return 0


if __name__ == "__main__":
    sys.exit(main())
