"""Benchmark: `backup` (full, unchanged, after a change) and `push-local-db` vs `scp` of the raw
database, on a ~1 GiB Label Studio database of realistic data.

    python -m bench.data [--size-mib 1024] [--rate 100mbit] [--change 0.01]

One run, same VM: provisions a fresh test VM, makes real data through Label Studio's API (a text
project whose tasks are sentences of the manual pages Debian ships on this machine, annotations with
varied labels and spans; an image project with real PNG/JPEG files from Debian packages and boxes),
grows it with more varied tasks and annotations (the real schema, as Label Studio's migrations made
it) to the target size, prints how much zstd shrinks it, then times, on loopback and on a link shaped
with `tc` to the given rate:
  scp down / scp up of the raw file (the seed scripts' way; baseline),
  fab backup (full), fab backup (unchanged server),
  fab backup after `--change` of the pages changed (annotations through the API + an SQL update of
  scattered rows), with the bytes on the wire,
  fab pull-server-db, then fab push-local-db after a local change of `--change` of the pages,
and reports ratios against scp plus the tool's peak RSS. For each backup it also prints the timeline of
its phases (the server's copy and digests, wire, rebuild, check here; from the snapshot's manifest; then
the rest of its wall time: start-up, SSH round trips, locks) and the server's CPU seconds (the VM's
cgroup, read on this machine) against those of one `sha256sum` of the database on the server.
`--disk-series N` then takes N incremental backups, each after `--change` of the pages changed, into a
folder on XFS (a loop device: reflinks) and prints what they take on disk (`backups --json`, disk_bytes).
Needs a Docker engine, and root for the XFS loop device.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import gzip
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from dev.lsclient import LabelStudio, wait_for_health  # noqa: E402
from dev.testvm.image import NOPASSWD_USER, build_image  # noqa: E402
from dev.testvm.machine import make_key, start_vm  # noqa: E402
from tasks.core.onserver.sqlite import ZSTD_STREAM  # noqa: E402

EMAIL, PASSWORD = "admin@example.com", "bench-password-1"
STREAM_LEVELS = [int(n) for n in re.findall(r"\d+", next(w for w in ZSTD_STREAM if w.startswith("--adapt")))]
DB = "/var/lib/label-studio/label_studio.sqlite3"


def cpu_seconds(vm) -> float:
    """CPU seconds the VM (its container's cgroup) has used so far, read on this machine (cgroup v2 or v1)."""
    for pattern, scale in ((f"/sys/fs/cgroup/system.slice/docker-{vm.id}.scope/cpu.stat", 1e-6),
                           (f"/sys/fs/cgroup/docker/{vm.id}/cpu.stat", 1e-6),
                           (f"/sys/fs/cgroup/cpuacct/docker/{vm.id}/cpuacct.usage", 1e-9),
                           (f"/sys/fs/cgroup/cpu,cpuacct/docker/{vm.id}/cpuacct.usage", 1e-9)):
        for path in glob.glob(pattern):
            text = Path(path).read_text()
            if path.endswith("cpu.stat"):
                text = next(line.split()[1] for line in text.splitlines() if line.startswith("usage_usec"))
            return int(text.strip()) * scale
    raise SystemExit(f"no cgroup CPU accounting found for container {vm.id}")


def server_cpu(vm, action) -> tuple[float, object]:
    """(the VM's CPU seconds while `action()` ran, what it returned)."""
    before = cpu_seconds(vm)
    result = action()
    return cpu_seconds(vm) - before, result


def sha256sum_cpu(vm) -> float:
    """The server's CPU seconds for one sha256sum of the live database: the baseline of the CPU target."""
    return server_cpu(vm, lambda: vm.exec(f"sha256sum {DB} >/dev/null", timeout=600))[0]


def newest_manifest(backups: Path) -> dict:
    host = backups / "vm"
    newest = sorted(p for p in host.iterdir() if p.is_dir() and not p.name.startswith("."))[-1]
    return json.loads((newest / "manifest.json").read_text())


def checked_in_background(backups: Path) -> None:
    """Once the newest snapshot's background check (backup --no-wait) wrote its verdict: nothing of it
    runs beside the next measurement."""
    deadline = time.monotonic() + 3600
    while newest_manifest(backups).get("integrity_check") == "pending":
        if time.monotonic() > deadline:
            raise SystemExit(f"the background check in {backups} did not end within an hour")
        time.sleep(0.5)   # poll interval: the manifest is the signal


def timeline(manifest: dict, wall: float) -> str:
    """The snapshot's phases in order, then the rest of the command's wall time (start-up, SSH round
    trips, locks, the manifest)."""
    phases = dict(manifest.get("extra", {}).get("timeline", {}))
    check = manifest.get("extra", {}).get("check")
    if check:
        phases["check here"] = check["seconds"]
    order = ("server copy", "server digests", "server copy and digests", "server digests, no copy", "wire", "rebuild",
             "check here")
    shown = [name for name in order if name in phases]
    rest = wall - sum(phases[name] for name in shown)
    return ", ".join([f"{name} {phases[name]:.2f}s" for name in shown] + [f"the rest {rest:.2f}s"])


def lock_held(text: str) -> float | None:
    found = re.search(r"writers' lock held ([\d.]+)s", text)
    return float(found.group(1)) if found else None


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def timed(command: list[str], env: dict, cwd: Path = PROJECT_ROOT) -> tuple[float, int, str]:
    """Wall seconds, peak RSS in KiB, and its stdout. The RSS comes from GNU time (a small parent): a
    child forked from this process would carry this process's own peak over its exec (Linux keeps
    the highest RSS of the image it replaced), and this process holds the text corpus."""
    os.sync()   # untimed: no write-back the last command left (this disk writes ~140 MB/s) slows this one
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err, \
            tempfile.NamedTemporaryFile("r") as rss:
        start = time.perf_counter()
        child = subprocess.run(["/usr/bin/time", "-q", "-f", "%M", "-o", rss.name, *command], cwd=cwd, env=env,
                               stdout=out, stderr=err, stdin=subprocess.DEVNULL, text=True)
        elapsed = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout = out.read()
        if child.returncode != 0:
            raise SystemExit(f"{command} failed:\n{stdout}\n{err.read()}")
        peak = int(rss.read().strip().splitlines()[-1])
    return elapsed, peak, stdout


# ------------------------------------------------------------------------------------------------
# Realistic data: varied text from the manual pages Debian ships, split into tasks; annotations with
# varied labels, spans and boxes; real PNG/JPEG files from Debian packages uploaded as image tasks.

NER_CONFIG = ('<View><Text name="text" value="$text"/><Labels name="label" toName="text">'
              + "".join(f'<Label value="{v}"/>' for v in ("PER", "ORG", "LOC", "CMD", "FILE", "OPTION", "DATE", "MISC"))
              + '</Labels><Choices name="quality" toName="text"><Choice value="clear"/><Choice value="unclear"/>'
              '</Choices></View>')
IMAGE_CONFIG = ('<View><Image name="image" value="$image"/><RectangleLabels name="box" toName="image">'
                '<Label value="icon"/><Label value="text"/><Label value="diagram"/><Label value="photo"/>'
                '</RectangleLabels></View>')
LABELS = ["PER", "ORG", "LOC", "CMD", "FILE", "OPTION", "DATE", "MISC"]


def manual_sentences() -> list[str]:
    """Distinct sentences of every manual page on this machine (roff markup stripped)."""
    found: set[str] = set()
    for page in sorted(glob.glob("/usr/share/man/man[1-8]/*.gz")):
        try:
            text = gzip.open(page).read().decode("utf-8", "replace")
        except (OSError, EOFError):
            continue
        lines = []
        for line in text.splitlines():
            if line.startswith((".", "'")):
                line = re.sub(r"^\.(B|I|BR|IR|RB|RI|IB|BI|SH|SS|TP|IP)\s*", "", line)
                if line.startswith((".", "'")):
                    continue
            lines.append(re.sub(r"\\f[BIRP]|\\\(..|\\&|\\e", "", line).replace("\\-", "-"))
        for sentence in re.split(r"(?<=[.!?])\s+", " ".join(lines)):
            sentence = sentence.strip()
            if 20 < len(sentence) < 400:
                found.add(sentence)
    return sorted(found)


def debian_images(limit: int = 40) -> list[Path]:
    """Real PNG and JPEG files that Debian packages installed here (documentation figures, icons)."""
    found = sorted(p for pattern in ("*.png", "*.jpg", "*.jpeg")
                   for p in Path("/usr/share").rglob(pattern) if p.is_file() and 2048 < p.stat().st_size < 4_000_000)
    return found[:: max(1, len(found) // limit)][:limit]


def ner_result(text: str, rng: random.Random) -> list[dict]:
    result = []
    for n in range(rng.randint(1, 6)):
        start = rng.randrange(max(1, len(text) - 20))
        end = min(len(text), start + rng.randint(3, 40))
        result.append({"id": f"r{rng.getrandbits(40):x}", "from_name": "label", "to_name": "text", "type": "labels",
                       "value": {"start": start, "end": end, "text": text[start:end], "labels": [rng.choice(LABELS)]}})
    result.append({"id": f"q{rng.getrandbits(40):x}", "from_name": "quality", "to_name": "text", "type": "choices",
                   "value": {"choices": [rng.choice(["clear", "unclear"])]}})
    return result


def box_result(rng: random.Random) -> list[dict]:
    return [{"id": f"b{rng.getrandbits(40):x}", "from_name": "box", "to_name": "image", "type": "rectanglelabels",
             "original_width": rng.randint(200, 2000), "original_height": rng.randint(200, 2000), "image_rotation": 0,
             "value": {"x": round(rng.uniform(0, 80), 4), "y": round(rng.uniform(0, 80), 4),
                       "width": round(rng.uniform(2, 20), 4), "height": round(rng.uniform(2, 20), 4), "rotation": 0,
                       "rectanglelabels": [rng.choice(["icon", "text", "diagram", "photo"])]}}
            for _ in range(rng.randint(1, 5))]


def task_text(sentences: list[str], rng: random.Random) -> str:
    return " ".join(rng.sample(sentences, rng.randint(3, 12)))


GROW = r"""
import json, os, random, sqlite3, sys
db, corpus, target, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sentences = open(corpus, encoding="utf-8").read().split("\n")
rng = random.Random(seed)
LABELS = %(labels)r
con = sqlite3.connect(db)
def columns(table):
    return [r[1] for r in con.execute(f"pragma table_info({table})")]
task_cols, ann_cols = columns("task"), columns("task_completion")
task_row = dict(zip(task_cols, con.execute("select * from task order by id limit 1").fetchone()))
ann_row = dict(zip(ann_cols, con.execute("select * from task_completion order by id limit 1").fetchone()))
task_sql = f"insert into task ({','.join(task_cols)}) values ({','.join('?' * len(task_cols))})"
ann_sql = f"insert into task_completion ({','.join(ann_cols)}) values ({','.join('?' * len(ann_cols))})"
next_task = con.execute("select max(id) from task").fetchone()[0] + 1
next_ann = con.execute("select max(id) from task_completion").fetchone()[0] + 1
while os.path.getsize(db) < target:
    tasks, anns = [], []
    for _ in range(2000):
        text = " ".join(rng.sample(sentences, rng.randint(3, 12)))
        row = dict(task_row, id=next_task, data=json.dumps({"text": text, "meta": {"source": rng.choice(
            ["man", "doc", "faq", "wiki"]), "n": next_task, "score": round(rng.random(), 6)}}))
        if "unique_id" in row:
            row["unique_id"] = "%%032x" %% rng.getrandbits(128)
        annotated = rng.random() < 0.4
        if "total_annotations" in row:
            row["total_annotations"] = int(annotated)
        if "is_labeled" in row:
            row["is_labeled"] = int(annotated)
        tasks.append([row[c] for c in task_cols])
        if annotated:
            result = []
            for _ in range(rng.randint(1, 6)):
                start = rng.randrange(max(1, len(text) - 20))
                end = min(len(text), start + rng.randint(3, 40))
                result.append({"id": "r%%x" %% rng.getrandbits(40), "from_name": "label", "to_name": "text",
                               "type": "labels", "value": {"start": start, "end": end, "text": text[start:end],
                                                          "labels": [rng.choice(LABELS)]}})
            arow = dict(ann_row, id=next_ann, task_id=next_task, result=json.dumps(result),
                        lead_time=round(rng.uniform(1, 300), 3))
            if "unique_id" in arow:
                arow["unique_id"] = "%%032x" %% rng.getrandbits(128)
            anns.append([arow[c] for c in ann_cols])
            next_ann += 1
        next_task += 1
    con.executemany(task_sql, tasks)
    con.executemany(ann_sql, anns)
    con.commit()
print(con.execute("select count(*) from task").fetchone()[0], con.execute("select count(*) from task_completion").fetchone()[0])
""" % {"labels": LABELS}


def make_data(vm, url: str, size_mib: int, work: Path) -> tuple[int, int]:
    """A ~size_mib database of varied text and annotations; returns (its size, the text project id)."""
    rng = random.Random(12)
    log("collecting sentences from the manual pages on this machine")
    sentences = manual_sentences()
    ls = LabelStudio(url)
    assert ls.login(EMAIL, PASSWORD)
    project = ls.post_json("/api/projects", {"title": "manuals", "label_config": NER_CONFIG}).json()["id"]
    tasks = [{"text": task_text(sentences, rng), "meta": {"source": "man", "i": i}} for i in range(2000)]
    assert ls.import_file(project, "tasks.json", json.dumps(tasks).encode()).status == 201
    images = ls.post_json("/api/projects", {"title": "figures", "label_config": IMAGE_CONFIG}).json()["id"]
    pictures = debian_images()
    for picture in pictures:
        assert ls.import_file(images, picture.name, picture.read_bytes()).status == 201, picture
    log(f"{len(tasks)} text tasks and {len(pictures)} images (PNG/JPEG from Debian packages) imported")
    annotate(ls, project, 300, rng)
    image_tasks = [t["id"] for t in ls.get(f"/api/tasks?project={images}&page_size=100").json()["tasks"]]
    for task_id in image_tasks:
        resp = ls.post_json(f"/api/tasks/{task_id}/annotations/", {"result": box_result(rng), "lead_time": 12.5})
        assert resp.status == 201, resp.text[:200]
    log(f"API data made; growing the database to {size_mib} MiB with more varied tasks and annotations")
    out = grow_offline(vm, url, sentences, GROW, size_mib * 1024 * 1024, 7)
    log(f"tasks, annotations: {out.strip()}")
    return int(vm.exec(f"stat -c %s {DB}").stdout.decode()), project


def grow_offline(vm, url: str, sentences: list[str], script: str, *args) -> str:
    """`script` run on the VM as the service user against the database with Label Studio stopped (its
    argv: the database, the corpus of `sentences`, then `args`); its output."""
    vm.exec("cat > /tmp/corpus.txt && chmod 644 /tmp/corpus.txt", input="\n".join(sentences).encode(), timeout=300)
    vm.exec("systemctl stop label-studio")
    words = " ".join(str(a) for a in args)
    out = vm.exec(f"runuser -u labelstudio -- python3 - {DB} /tmp/corpus.txt {words}", input=script.encode(),
                  timeout=3600).stdout.decode()
    vm.exec("systemctl start label-studio")
    wait_for_health(url, timeout=300)
    return out


def annotate(ls, project: int, count: int, rng: random.Random) -> None:
    """`count` annotations saved through Label Studio's API on random tasks of the first pages."""
    listed = ls.get(f"/api/tasks?project={project}&page_size=1000&fields=all").json()["tasks"]
    for task in rng.sample(listed, min(count, len(listed))):
        text = task["data"]["text"]
        resp = ls.post_json(f"/api/tasks/{task['id']}/annotations/", {"result": ner_result(text, rng),
                                                                      "lead_time": round(rng.uniform(1, 90), 2)})
        assert resp.status == 201, resp.text[:200]


TOUCH = r"""
import json, random, sqlite3, sys
db, share, seed = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
con = sqlite3.connect(db, timeout=60)
rng = random.Random(seed)
pages = con.execute("pragma page_count").fetchone()[0]
low, high = con.execute("select min(id), max(id) from task").fetchone()
ids = rng.sample(range(low, high + 1), int(pages * share))
con.executemany("update task set data = json_set(data, '$.meta.score', ?) where id = ?",
                [(round(rng.random(), 6), i) for i in ids])
con.commit()
print(len(ids))
"""


def change_share(vm, url: str, project: int, share: float, seed: int) -> None:
    """About `share` of the server database's pages changed the way a working day does: annotations
    saved through the API, then an SQL update of scattered rows (while Label Studio runs)."""
    ls = LabelStudio(url)
    assert ls.login(EMAIL, PASSWORD)
    annotate(ls, project, 100, random.Random(seed))
    rows = vm.exec(f"runuser -u labelstudio -- python3 - {DB} {share / 2} {seed}", input=TOUCH.encode(),
                   timeout=600).stdout.decode().strip()
    log(f"changed: 100 annotations through the API, {rows} scattered task rows by SQL")


def change_local(database: Path, share: float, seed: int) -> None:
    subprocess.run([sys.executable, "-", str(database), str(share), str(seed)], input=TOUCH.encode(), check=True,
                   capture_output=True)


def compression(vm, level: int) -> float:
    """How much zstd (at the level the backup stream uses) shrinks the database."""
    size = int(vm.exec(f"stat -c %s {DB}").stdout.decode())
    packed = int(vm.exec(f"zstd -q -{level} -T0 -c {DB} | wc -c", timeout=600).stdout.decode())
    return size / packed


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
    return " / ".join(line.strip() for line in text.splitlines() if "on the wire" in line)


UNITS = {"B": 1, "KiB": 1024, "MiB": 1024 ** 2, "GiB": 1024 ** 3}


def wire_bytes(text: str) -> int:
    return int(sum(float(n) * UNITS[u] for n, u in re.findall(r"([\d.]+) (B|KiB|MiB|GiB) on the wire", text)))


def pages_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if " pages " in line), "(whole database)")


def measure(vm, work: Path, fab: list[str], env: dict, ssh_config: Path, mode: str, url: str, project: int,
            share: float, lean: Path | None = None) -> dict:
    """One set of timings: scp down/up of the raw file; backup full, unchanged, after a change of
    `share` of the pages, `--no-wait` after another change, `--no-wait` full; pull, a local change of
    `share`, push-local-db. `lean` (a folder for the backups, e.g. on XFS) leaves out scp up, the full
    `--no-wait` backup, pull and push: what a 10 GiB database fits on this machine's disk with."""
    env = dict(env, LSVM_BACKUPS_DIR=str(lean or work / f"backups-{mode}"))
    home = f"/home/{NOPASSWD_USER}"
    vm.exec(f"cp {DB} {home}/raw.sqlite3 && chown {NOPASSWD_USER} {home}/raw.sqlite3")
    scp = ["scp", "-q", "-F", str(ssh_config)]
    r = {"size": int(vm.exec(f"stat -c %s {DB}").stdout.decode())}
    log(f"[{mode}] scp down")
    r["scp_down"], _, _ = timed([*scp, "vm:raw.sqlite3", str(work / "raw.sqlite3")], env)
    if not lean:
        log(f"[{mode}] scp up")
        r["scp_up"], _, _ = timed([*scp, str(work / "raw.sqlite3"), "vm:raw-up.sqlite3"], env)
    vm.exec(f"rm -f {home}/raw.sqlite3 {home}/raw-up.sqlite3")
    (work / "raw.sqlite3").unlink()
    backups = Path(env["LSVM_BACKUPS_DIR"])
    r["sha256sum_cpu"] = sha256sum_cpu(vm)
    log(f"[{mode}] fab backup (full)")
    r["backup_cpu"], (r["backup"], r["backup_rss"], r["backup_out"]) = server_cpu(vm, lambda: timed([*fab, "backup"], env))
    r["backup_timeline"] = timeline(newest_manifest(backups), r["backup"])
    log(f"[{mode}] fab backup (unchanged server)")
    r["again"], r["again_rss"], _ = timed([*fab, "backup"], env)
    change_share(vm, url, project, share, seed=len(mode))
    log(f"[{mode}] fab backup (after {share:.0%} of the pages changed)")
    r["incr_cpu"], (r["incr"], r["incr_rss"], r["incr_out"]) = server_cpu(vm, lambda: timed([*fab, "backup"], env))
    r["incr_timeline"] = timeline(newest_manifest(backups), r["incr"])
    change_share(vm, url, project, share, seed=len(mode) + 2)
    log(f"[{mode}] fab backup --no-wait (after another {share:.0%} of the pages changed)")
    r["nowait"], r["nowait_rss"], r["nowait_out"] = timed([*fab, "backup", "--no-wait"], env)
    r["nowait_timeline"] = timeline(newest_manifest(backups), r["nowait"])
    checked_in_background(backups)
    if lean:
        return r
    log(f"[{mode}] fab backup --no-wait (full: into an empty folder)")
    fresh = work / f"backups-{mode}-no-wait"
    r["full_nowait"], _, r["full_nowait_out"] = timed([*fab, "backup", "--no-wait"], dict(env, LSVM_BACKUPS_DIR=str(fresh)))
    checked_in_background(fresh)
    local = work / f"local-{mode}"
    log(f"[{mode}] fab pull-server-db")
    r["pull"], r["pull_rss"], _ = timed([*fab, "pull-server-db", "--yes", "--local-data-dir", str(local)], env)
    change_local(local / "label_studio.sqlite3", share, seed=len(mode) + 1)
    log(f"[{mode}] fab push-local-db (after a pull and a local change of {share:.0%} of the pages)")
    r["push"], r["push_rss"], r["push_out"] = timed([*fab, "push-local-db", "--yes", "--local-data-dir", str(local)], env)
    shutil.rmtree(local)
    return r


def report(mode: str, r: dict) -> None:
    mib = r["size"] / 1024 / 1024
    print(f"-- {mode} ({mib:.0f} MiB database) --")
    print(f"scp down (raw file):            {r['scp_down']:7.1f} s")
    if "scp_up" in r:
        print(f"scp up (raw file):              {r['scp_up']:7.1f} s")
    print(f"fab backup, full:               {r['backup']:7.1f} s   {r['backup'] / r['scp_down']:5.2f}x scp down time   "
          f"peak RSS {r['backup_rss'] / 1024:.0f} MiB")
    print(f"    {wire(r['backup_out'])}")
    print(f"    timeline: {r['backup_timeline']}")
    print(f"    server CPU {r['backup_cpu']:.1f} s = {r['backup_cpu'] / r['sha256sum_cpu']:.1f}x one sha256sum of the "
          f"database there ({r['sha256sum_cpu']:.1f} s); writers' lock held {lock_held(r['backup_out']) or 0:.2f} s "
          f"({(lock_held(r['backup_out']) or 0) / (r['size'] / 1024 ** 3):.2f} s per GiB)")
    print(f"fab backup, unchanged server:   {r['again']:7.1f} s   {r['again'] / r['scp_down']:5.2f}x scp down time   "
          f"peak RSS {r['again_rss'] / 1024:.0f} MiB")
    print(f"fab backup, after a change:     {r['incr']:7.1f} s   {r['incr'] / r['scp_down']:5.2f}x scp down time   "
          f"peak RSS {r['incr_rss'] / 1024:.0f} MiB")
    print(f"    {pages_line(r['incr_out'])}")
    print(f"    {wire(r['incr_out'])}: {wire_bytes(r['incr_out']) / r['size']:.2%} of the database's bytes")
    print(f"    timeline: {r['incr_timeline']}")
    print(f"    server CPU {r['incr_cpu']:.1f} s = {r['incr_cpu'] / r['sha256sum_cpu']:.1f}x one sha256sum of the "
          f"database there; writers' lock held {lock_held(r['incr_out']) or 0:.2f} s")
    print(f"fab backup --no-wait, after another change: {r['nowait']:7.1f} s   {r['nowait'] / r['scp_down']:5.2f}x "
          f"scp down time   peak RSS {r['nowait_rss'] / 1024:.0f} MiB   (stored and proven; its check runs after)")
    print(f"    {wire(r['nowait_out'])}")
    print(f"    timeline: {r['nowait_timeline']}")
    if "full_nowait" not in r:
        return
    print(f"fab backup --no-wait, full:     {r['full_nowait']:7.1f} s   {r['full_nowait'] / r['scp_down']:5.2f}x "
          f"scp down time   (stored and proven; its check runs after)")
    print(f"    {wire(r['full_nowait_out'])}")
    print(f"fab pull-server-db:             {r['pull']:7.1f} s   {r['pull'] / r['scp_down']:5.2f}x scp down time")
    print(f"fab push-local-db:              {r['push']:7.1f} s   {r['push'] / r['scp_up']:5.2f}x scp up time     "
          f"peak RSS {r['push_rss'] / 1024:.0f} MiB")
    print(f"    {pages_line(r['push_out'])}")
    print(f"    {wire(r['push_out'])}: {wire_bytes(r['push_out']) / r['size']:.2%} of the database's bytes")


@contextlib.contextmanager
def xfs_folder(work: Path, size: int, copies: int):
    """A folder on XFS with reflinks (a sparse loop image in `work`), room for `copies` whole databases."""
    image, mount = work / "xfs.img", work / "xfs"
    mount.mkdir()
    subprocess.run(["truncate", "-s", str(size * copies + 2 * 1024 ** 3), str(image)], check=True)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)
        image.unlink()
        mount.rmdir()


def disk_use(fab: list[str], env: dict) -> dict:
    """What the host's snapshots take on disk (`backups --json`), against their sizes as whole copies."""
    _, _, listing = timed([*fab, "backups", "--json"], env)
    records = json.loads(listing)
    return {"count": len(records) - 1, "disk": sum(r["disk_bytes"] for r in records),
            "first": records[0]["disk_bytes"], "sizes": sum(r["size_bytes"] for r in records)}


def disk_series(vm, work: Path, fab: list[str], env: dict, url: str, project: int, share: float, count: int) -> dict:
    """`count` incremental backups, each after `share` of the pages changed, into a folder on XFS (a loop
    device: reflinks): what they take on disk, against what they would take as whole copies."""
    size = int(vm.exec(f"stat -c %s {DB}").stdout.decode())
    with xfs_folder(work, size, 6) as mount:
        env = dict(env, LSVM_BACKUPS_DIR=str(mount))
        timed([*fab, "backup", "--no-media"], env)
        for n in range(count):
            change_share(vm, url, project, share, seed=100 + n)
            log(f"[disk] incremental backup {n + 1} of {count}")
            timed([*fab, "backup", "--no-media"], env)
        return disk_use(fab, env)


def provision_bench_vm(vm, work: Path, profile_extra: str = "") -> tuple[Path, str, dict, list[str]]:
    """`fab provision` of a fresh bench VM from a fab home in `work`: (ssh_config, url, env, fab command)."""
    ssh_config = work / "ssh_config"
    ssh_config.write_text(vm.ssh_config("vm", NOPASSWD_USER))
    url = f"http://127.0.0.1:{vm.http_port}"
    profile = work / "bench.yaml"
    profile.write_text(f"public_url: {url}\nlabel_studio:\n  admin_email: {EMAIL}\n{profile_extra}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SSH_", "FABRIC_"))}
    env.update(HOME=str(work), LSVM_CONFIG=str(profile), LABEL_STUDIO_PASSWORD=PASSWORD)
    fab = [sys.executable, "-m", "fabric", "-S", str(ssh_config), "-H", "vm"]
    log("provisioning the VM")
    timed([*fab, "provision"], env)
    return ssh_config, url, env, fab


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rate", default="100mbit",
                        help="also measure on a link shaped to this rate (tc syntax); 'none' skips it")
    parser.add_argument("--change", type=float, default=0.01, help="share of the pages changed before the "
                        "incremental backup and before the push (default 0.01)")
    parser.add_argument("--disk-series", type=int, default=24, help="incremental backups kept on XFS to "
                        "measure the disk they take (0 skips it)")
    parser.add_argument("--skip-scp-modes", action="store_true", help="only the disk series")
    parser.add_argument("--lean", action="store_true", help="for a large database (--size-mib 10240): only the "
                        "shaped link, no scp up, pull, push or disk series; the backups on XFS, whose disk use it prints")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lsvm-bench-data-"))
    vm = start_vm(build_image(), make_key(work))
    results = {}
    try:
        ssh_config, url, env, fab = provision_bench_vm(vm, work)
        size, project = make_data(vm, url, args.size_mib, work)
        ratios = [compression(vm, level) for level in STREAM_LEVELS]
        series = disk_series(vm, work, fab, env, url, project, args.change, args.disk_series) \
            if args.disk_series and not args.lean else None
        if args.lean:
            shape(vm, args.rate)
            with xfs_folder(work, size, 3) as mount:
                results[f"link shaped to {args.rate} both ways"] = measure(
                    vm, work, fab, env, ssh_config, "shaped", url, project, args.change, lean=mount)
                series = disk_use(fab, dict(env, LSVM_BACKUPS_DIR=str(mount)))
        elif not args.skip_scp_modes:
            results["loopback (no bandwidth limit)"] = measure(vm, work, fab, env, ssh_config, "loopback", url,
                                                              project, args.change)
        if args.rate != "none" and not args.skip_scp_modes and not args.lean:
            shape(vm, args.rate)
            results[f"link shaped to {args.rate} both ways"] = measure(vm, work, fab, env, ssh_config, "shaped", url,
                                                                      project, args.change)
    finally:
        vm.stop()
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"== data benchmark: {size / 1024 / 1024:.0f} MiB Label Studio database of varied text (manual pages), "
          f"one VM, one run (baseline: scp of the raw file) ==")
    print(f"zstd -{' / -'.join(map(str, STREAM_LEVELS))} (the range the backup stream adapts within) shrinks this "
          f"database {' / '.join(f'{r:.1f}x' for r in ratios)}")
    for mode, r in results.items():
        report(mode, r)
    if series:
        print(f"-- disk: {series['count'] + 1} snapshots (a full one, then {series['count']} later ones, "
              f"{args.change:.0%} of the pages changed before each changed one) on XFS (reflinks) --")
        print(f"on disk: {series['disk'] / 1024 ** 3:.2f} GiB, of which the first {series['first'] / 1024 ** 3:.2f} GiB; "
              f"as whole copies they would take {series['sizes'] / 1024 ** 3:.2f} GiB")
    print("(push includes its pre-push server backup, the local check of the database, the upload, the "
          "verified swap, the restart and the health check; scp does only the copy)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
