"""Label Studio's own exporter, run for `fab export` with the installed release's python, isolated, as the
service user, with the service's environment (the way templates/scripts/check_database.py runs).

  formats all | ID...
      {"projects": [{"id", "title", "tasks", "formats": [valid names], "media": [names that carry images]}],
       "missing": [ids]}: what each project can be exported as (Label Studio's converter decides by its
      labeling config).
  export WORK_DIR FORMAT DOWNLOAD_RESOURCES ID
      One project: its tasks read in one read-only transaction (a consistent view while annotators
      work), serialized by Label Studio's export serializer a thousand at a time with the options of
      its own `label-studio export`, converted by its converter. Everything it writes, the converter's
      temp files too, stays in WORK_DIR (an empty folder of the service user's, which root's script
      removes whatever the end). stdout: lines `tasks DONE TOTAL` and `converting`, then
      `file SIZE SHA256 EXT CODEC` and the file's bytes, compressed by CODEC (zstd or gzip). It ends as
      soon as its stdin closes: the laptop that asked is gone, so nothing is left to finish.
Errors: formats prints {"error": "..."}; export says why on the last line of stderr; both exit 1.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading

# Formats whose converter copies the task's images into the export (Label Studio names the variant
# that does FORMAT_WITH_IMAGES; VOC copies them when asked to download resources).
MEDIA_ALONE = ("VOC",)
WITH_IMAGES = "_WITH_IMAGES"
BATCH = 1000
SERIALIZER_CONTEXT = {"annotations__completed_by": {"only_id": None}, "interpolate_key_frames": True}


def fail(message: str) -> None:
    sys.stderr.write(" ".join(message.split())[:600] + "\n")
    sys.stderr.flush()
    os._exit(1)


def end_when_stdin_closes() -> None:
    """fab keeps our stdin open while it waits; EOF means it is gone (killed, Ctrl-C, lost link)."""

    def watch():
        # The raw descriptor: a daemon thread inside sys.stdin's buffer would abort the interpreter's exit.
        while os.read(0, 65536):
            pass
        os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


def setup_django() -> None:
    import label_studio

    sys.path.insert(0, os.path.dirname(label_studio.__file__))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "label_studio.core.settings.label_studio")
    import django

    django.setup()


def valid_formats(project) -> list:
    from data_export.models import DataExport

    return [f["name"] for f in DataExport.get_export_formats(project) if not f.get("disabled")]


def media_formats(names: list) -> list:
    return [n for n in names if n.endswith(WITH_IMAGES) or n in MEDIA_ALONE
            or (n + WITH_IMAGES) in names]


def formats(which: list) -> dict:
    from projects.models import Project

    if which == ["all"]:
        projects = list(Project.objects.order_by("id"))
        missing = []
    else:
        wanted = [int(i) for i in which]
        found = {p.id: p for p in Project.objects.filter(id__in=wanted)}
        projects = [found[i] for i in wanted if i in found]
        missing = [i for i in wanted if i not in found]
    listed = []
    for project in projects:
        names = valid_formats(project)
        listed.append({"id": project.id, "title": project.title, "tasks": project.tasks.count(),
                       "formats": names, "media": media_formats(names)})
    return {"projects": listed, "missing": missing}


def consistent_view(connection) -> None:
    """The first statement of the transaction: PostgreSQL keeps one snapshot for all of it. SQLite (WAL,
    as provision sets it) reads one snapshot from its first read to the end of the transaction."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")


def serialized_tasks(project, say) -> list:
    """Label Studio's export serializer over every task of the project, BATCH at a time."""
    from data_export.mixins import ExportMixin
    from data_export.serializers import ExportDataSerializer
    from tasks.models import Task

    options = ExportMixin._get_export_serializer_option(SERIALIZER_CONTEXT)
    ids = list(Task.objects.filter(project=project).order_by("id").values_list("id", flat=True))
    say(f"tasks 0 {len(ids)}")
    tasks = []
    for start in range(0, len(ids), BATCH):
        chunk = (Task.objects.filter(id__in=ids[start:start + BATCH]).order_by("id").select_related("project")
                 .prefetch_related("annotations", "predictions"))
        tasks += ExportDataSerializer(chunk, many=True, **options).data
        say(f"tasks {len(tasks)} {len(ids)}")
    return tasks


def convert(project, tasks: list, export_format: str, download_resources: bool, work_dir: str):
    """Label Studio's own DataExport.generate_export_file, its copy of the input kept in work_dir instead
    of the data dir's export folder: (the open file it made, the file's extension)."""
    from data_export.models import DataExport

    def save_input(project, now, get_args, data, md5, name):
        path = os.path.join(work_dir, "input.json")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(data)
        return path

    if hasattr(DataExport, "save_export_files"):
        DataExport.save_export_files = staticmethod(save_input)
    out, _, filename = DataExport.generate_export_file(project, tasks, export_format, download_resources, {})
    extension = os.path.splitext(filename)[1].lstrip(".").lower()
    if not (extension.isalnum() and extension.isascii() and len(extension) <= 8):
        fail(f"the converter made a file named {filename!r}")
    return out, extension


def stream(source, extension: str, say) -> None:
    """The header, then the open file `source` compressed on stdout: zstd (all cores) when the server has
    it. Read twice from its start: for its sha256, then for the stream."""
    codec = "zstd" if shutil.which("zstd") else "gzip"
    digest, size = hashlib.sha256(), 0
    source.seek(0)
    for block in iter(lambda: source.read(1024 * 1024), b""):
        digest.update(block)
        size += len(block)
    say(f"file {size} {digest.hexdigest()} {extension} {codec}")
    source.seek(0)
    if codec == "zstd":
        done = subprocess.run(["zstd", "-q", "-1", "-T0", "-c"], stdin=source, stdout=sys.stdout.buffer)
        if done.returncode != 0:
            fail(f"zstd exited {done.returncode}")
        return
    import zlib

    packer = zlib.compressobj(1, zlib.DEFLATED, 31)
    for block in iter(lambda: source.read(1024 * 1024), b""):
        sys.stdout.buffer.write(packer.compress(block))
    sys.stdout.buffer.write(packer.flush())
    sys.stdout.buffer.flush()


def export(work_dir: str, export_format: str, download_resources: bool, project_id: int) -> None:
    from django.db import connection, transaction
    from projects.models import Project

    def say(line: str) -> None:
        sys.stdout.buffer.write((line + "\n").encode())
        sys.stdout.buffer.flush()

    with transaction.atomic():
        consistent_view(connection)
        project = Project.objects.filter(id=project_id).first()
        if project is None:
            fail(f"there is no project {project_id}")
        names = valid_formats(project)
        if export_format not in names:
            fail(f"project {project_id} cannot be exported as {export_format}; it can as: {', '.join(names)}")
        tasks = serialized_tasks(project, say)
        say("converting")
        made, extension = convert(project, tasks, export_format, download_resources, work_dir)
    del tasks
    with made:
        stream(made, extension, say)


def main(argv: list) -> None:
    if argv[:1] == ["formats"] and len(argv) > 1:
        setup_django()
        try:
            answer = formats(argv[1:])
        except Exception as exc:  # noqa: BLE001 - whatever Label Studio raises is the answer
            answer = {"error": " ".join(f"{type(exc).__name__}: {exc}".split())[:600]}
        print(json.dumps(answer))
        sys.exit(1 if "error" in answer else 0)
    if argv[:1] == ["export"] and len(argv) == 5:
        work_dir = argv[1]
        end_when_stdin_closes()
        # The converter's temp folders and files (mkdtemp, NamedTemporaryFile) land in work_dir too.
        tempfile.tempdir = work_dir
        os.environ["TMPDIR"] = work_dir
        setup_django()
        try:
            export(work_dir, argv[2], argv[3] == "yes", int(argv[4]))
        except BrokenPipeError:
            os._exit(3)
        except Exception as exc:  # noqa: BLE001 - whatever Label Studio raises is the answer
            fail(f"{type(exc).__name__}: {exc}")
        sys.stdout.flush()
        os._exit(0)   # done: no interpreter shutdown racing the watching thread
    fail("usage: formats all|ID... | export WORK_DIR FORMAT yes|no ID")


if __name__ == "__main__":
    main(sys.argv[1:])
