"""Benchmark: `fab export` of a project of 100,000 tasks and 100,000 annotations, against Label Studio's own
CLI export on the server plus `scp` of its file (the way its docs send users with large projects; baseline),
and the web export a browser asks for, through nginx (timed beside them: it fails or takes longer).

    python -m bench.export [--tasks 100000] [--rounds 2]

One run, same VM: provisions a fresh test VM, makes a text project through Label Studio's API (sentences of
the manual pages Debian ships, NER spans and a choice per annotation), grows it to --tasks tasks with one
annotation each (the real schema, as Label Studio's migrations made it), then times, --rounds times in
turn: the baseline (`label-studio export ID JSON` as the service user with the service's environment over
ssh, then scp of its file), and `fab export --project ID` (JSON) with its peak RSS; last, the web export
(GET /api/projects/ID/export?exportType=JSON with a browser's session, through nginx, with the profile's
nginx.deny_export off: by default nginx refuses that endpoint). Reports each
round's ratio fab / baseline. Needs a Docker engine.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
import urllib.error
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from bench.data import (EMAIL, NER_CONFIG, PASSWORD, log, manual_sentences, grow_offline, ner_result,  # noqa: E402
                        provision_bench_vm, task_text, timed)
from dev.lsclient import LabelStudio  # noqa: E402
from dev.testvm.image import NOPASSWD_USER, build_image  # noqa: E402
from dev.testvm.machine import make_key, start_vm  # noqa: E402

ENV_FILE = "/opt/label-studio/label-studio.env"
CLI = "/opt/label-studio/current/bin/label-studio"

GROW = r"""
import json, random, sqlite3, sys
db, corpus, project, target, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
sentences = open(corpus, encoding="utf-8").read().split("\n")
rng = random.Random(seed)
LABELS = ["PER", "ORG", "LOC", "CMD", "FILE", "OPTION", "DATE", "MISC"]
con = sqlite3.connect(db)
def columns(table):
    return [r[1] for r in con.execute(f"pragma table_info({table})")]
task_cols, ann_cols = columns("task"), columns("task_completion")
task_row = dict(zip(task_cols, con.execute("select * from task where project_id = ? order by id limit 1",
                                           (project,)).fetchone()))
ann_row = dict(zip(ann_cols, con.execute("select a.* from task_completion a join task t on a.task_id = t.id "
                                         "where t.project_id = ? order by a.id limit 1", (project,)).fetchone()))
task_sql = f"insert into task ({','.join(task_cols)}) values ({','.join('?' * len(task_cols))})"
ann_sql = f"insert into task_completion ({','.join(ann_cols)}) values ({','.join('?' * len(ann_cols))})"
next_task = con.execute("select max(id) from task").fetchone()[0] + 1
next_ann = con.execute("select max(id) from task_completion").fetchone()[0] + 1
have = con.execute("select count(*) from task where project_id = ?", (project,)).fetchone()[0]
while have < target:
    tasks, anns = [], []
    for _ in range(min(5000, target - have)):
        text = " ".join(rng.sample(sentences, rng.randint(3, 12)))
        row = dict(task_row, id=next_task, data=json.dumps({"text": text, "meta": {"n": next_task}}))
        for key, value in (("unique_id", "%032x" % rng.getrandbits(128)), ("total_annotations", 1),
                           ("is_labeled", 1)):
            if key in row:
                row[key] = value
        tasks.append([row[c] for c in task_cols])
        result = []
        for _ in range(rng.randint(1, 6)):
            start = rng.randrange(max(1, len(text) - 20))
            end = min(len(text), start + rng.randint(3, 40))
            result.append({"id": "r%x" % rng.getrandbits(40), "from_name": "label", "to_name": "text",
                           "type": "labels", "value": {"start": start, "end": end, "text": text[start:end],
                                                      "labels": [rng.choice(LABELS)]}})
        arow = dict(ann_row, id=next_ann, task_id=next_task, result=json.dumps(result),
                    lead_time=round(rng.uniform(1, 300), 3))
        if "unique_id" in arow:
            arow["unique_id"] = "%032x" % rng.getrandbits(128)
        anns.append([arow[c] for c in ann_cols])
        next_ann += 1
        next_task += 1
        have += 1
    con.executemany(task_sql, tasks)
    con.executemany(ann_sql, anns)
    con.commit()
print(con.execute("select count(*) from task where project_id = ?", (project,)).fetchone()[0],
      con.execute("select count(*) from task_completion a join task t on a.task_id = t.id where t.project_id = ?",
                  (project,)).fetchone()[0])
"""


def make_project(vm, url: str, tasks: int) -> int:
    """A text project of `tasks` tasks, one annotation each; returns its id."""
    rng = random.Random(5)
    sentences = manual_sentences()
    ls = LabelStudio(url)
    assert ls.login(EMAIL, PASSWORD)
    project = ls.post_json("/api/projects", {"title": "manuals", "label_config": NER_CONFIG}).json()["id"]
    seed = [{"text": task_text(sentences, rng)} for _ in range(200)]
    assert ls.import_file(project, "tasks.json", json.dumps(seed).encode()).status == 201
    for task in ls.get(f"/api/tasks?project={project}&page_size=200&fields=all").json()["tasks"]:
        resp = ls.post_json(f"/api/tasks/{task['id']}/annotations/",
                            {"result": ner_result(task["data"]["text"], rng), "lead_time": 12.5})
        assert resp.status == 201, resp.text[:200]
    log(f"project {project}: 200 tasks annotated through the API; growing it to {tasks} tasks")
    out = grow_offline(vm, url, sentences, GROW, project, tasks, 11)
    log(f"tasks, annotations of project {project}: {out.strip()}")
    return project


def baseline(ssh_config: Path, work: Path, project: int, env: dict) -> tuple[float, float, int]:
    """Label Studio's CLI export on the server (the service user, the service's environment), then scp of
    its file: (export seconds, scp seconds, bytes)."""
    remote = f"/home/{NOPASSWD_USER}/cli-export.json"
    ssh = ["ssh", "-F", str(ssh_config), "vm"]
    script = (f"set -a && . {ENV_FILE} && set +a && rm -f {remote} && "
              f"runuser -u labelstudio -- env -C /var/lib/label-studio HOME=/var/lib/label-studio "
              f"{CLI} export {project} JSON --export-path /var/tmp/cli-export.json && "
              f"mv /var/tmp/cli-export.json {remote} && chown {NOPASSWD_USER} {remote}")
    exported, _, _ = timed([*ssh, f"sudo sh -c '{script}'"], env)
    local = work / "cli-export.json"
    copied, _, _ = timed(["scp", "-q", "-F", str(ssh_config), f"vm:{remote}", str(local)], env)
    size = local.stat().st_size
    local.unlink()
    return exported, copied, size


def web_export(url: str, project: int, timeout: float = 3600) -> tuple[float, str]:
    """What a browser's Export button asks for, with its session, through nginx: (seconds, outcome)."""
    ls = LabelStudio(url, timeout=timeout)
    assert ls.login(EMAIL, PASSWORD)
    start = time.perf_counter()
    try:
        resp = ls.get(f"/api/projects/{project}/export?exportType=JSON")
        outcome = f"HTTP {resp.status}, {len(resp.body) / 1024 / 1024:.1f} MiB"
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        outcome = f"failed: {exc}"
    return time.perf_counter() - start, outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="lsvm-bench-export-"))
    vm = start_vm(build_image(), make_key(work))
    rounds = []
    try:
        # The web export needs nginx to pass /api/projects/ID/export (deny_export, on by default, refuses it).
        ssh_config, url, env, fab = provision_bench_vm(vm, work, "nginx:\n  deny_export: false\n")
        project = make_project(vm, url, args.tasks)
        for n in range(args.rounds):
            log(f"round {n + 1}: label-studio export on the server + scp")
            cli, scp, size = baseline(ssh_config, work, project, env)
            out = work / f"fab-{n}"
            out.mkdir()
            log(f"round {n + 1}: fab export")
            took, rss, printed = timed([*fab, "export", "--project", str(project), "--out", f"{out}/"], env)
            exported = next(out.iterdir())
            rounds.append({"cli": cli, "scp": scp, "size": size, "fab": took, "rss": rss,
                           "fab_size": exported.stat().st_size})
            shutil.rmtree(out)
        log("the web export through nginx")
        web, outcome = web_export(url, project)
    finally:
        vm.stop()
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"== export benchmark: a project of {args.tasks} tasks and {args.tasks} annotations, one VM, one run "
          "(baseline: label-studio export on the server + scp of its file) ==")
    for n, r in enumerate(rounds, 1):
        base = r["cli"] + r["scp"]
        print(f"round {n}: baseline {base:.1f}s (export {r['cli']:.1f}s + scp {r['scp']:.1f}s of "
              f"{r['size'] / 1024 / 1024:.1f} MiB); fab export {r['fab']:.1f}s ({r['fab'] / base:.2f}x), "
              f"{r['fab_size'] / 1024 / 1024:.1f} MiB, peak RSS {r['rss'] / 1024:.0f} MiB")
    print(f"web export through nginx (a browser's Export button): {web:.1f}s, {outcome}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
