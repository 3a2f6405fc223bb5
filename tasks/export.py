"""export: a project's tasks and annotations in any format Label Studio's converter offers, made on the
server by Label Studio itself and brought here (a browser's export of a large project times out)."""

from __future__ import annotations

from datetime import datetime, timezone

from tasks.core import export as exporting, ui
from tasks.core.data import snapshots
from tasks.core.edge import CONFIG_HELP, open_host, task, task_edge, whole_number
from tasks.core.errors import UsageError


@task(help={"config": CONFIG_HELP, "project": "the project's id (the number in its URL)",
            "all": "every project, one file each (--out is then a folder)",
            "format": "JSON (default), JSON_MIN, CSV, TSV, COCO, YOLO, ... : whatever Label Studio offers for the "
                      "project (a wrong one is refused with the list)",
            "out": "the file to write, or a folder for it (default: here, named <host>-project-<id>-<format>-<UTC "
                   "time>.<ext>); an existing file is never replaced",
            "with-media": "copy the tasks' images into the export (formats that reference image files: COCO, YOLO, "
                          "VOC...)"})
@task_edge
def export(c, config=None, project=None, all=False, format="JSON", out=None, with_media=False):
    """Export a project (or --all) with Label Studio's own exporter on the server; streamed here, sha256-checked."""
    if (project is None) == (not all):
        raise UsageError("name one --project ID, or --all")
    wanted = [whole_number(project, "project")] if project is not None else None
    if wanted and wanted[0] < 1:
        raise UsageError(f"--project {project}: a project id is a number from 1")
    export_format = exporting.format_word(format)
    where = exporting.destination(out, bool(all))
    profile, host = open_host(c, config, sudo=True)
    with snapshots.server_lock(host, profile, "export"):
        projects, missing = exporting.read_projects(host, profile, wanted)
        plan = exporting.plan_exports(projects, missing, export_format, with_media, where, host.alias,
                                      datetime.now(timezone.utc))
        for item in plan:
            # A project's title is anyone's text: never rich markup (its repr already escapes control characters).
            ui.out.print(f"export of {item.describe()}", markup=False, highlight=False)
            path, size, sha, seconds = exporting.run_export(host, profile, item)
            ui.out.print(f"  {path}: {ui.human_bytes(size)} in {seconds:.1f}s, sha256 {sha}", markup=False,
                         highlight=False)
