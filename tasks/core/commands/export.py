"""export's server scripts: Label Studio's own exporter (templates/scripts/export_project.py, sent inline)
run with the release's python as the service user, in a temp folder root makes for it and empties
afterwards, also when the exporter was killed or the laptop went away (the exporter ends itself when
its stdin closes). Pure builders, run as root."""

from __future__ import annotations

from pathlib import Path

from tasks.core.commands import join, q
from tasks.core.commands.data import make_work_dir, remove_work_dir_named
from tasks.core.commands.provision import release_python
from tasks.core.profile import Profile

EXPORT_SOURCE = (Path(__file__).resolve().parents[3] / "templates" / "scripts" / "export_project.py").read_text()
WORK_DIR = '"$d"'        # the export script's temp folder: make_work_dir's answer, in a shell variable
FORMATS_TIMEOUT = 300   # Django's start-up and one converter per project


def project_formats(profile: Profile, project_ids: list[int] | None) -> str:
    """JSON: what each project (None: every project) can be exported as, and the ids that do not exist."""
    which = ["all"] if project_ids is None else [int(i) for i in project_ids]
    return f"{release_python(profile, timeout=FORMATS_TIMEOUT)} {q(EXPORT_SOURCE)} {join('formats', *which)}"


def export_project(profile: Profile, project_id: int, export_format: str, download_resources: bool) -> str:
    """One project exported into a fresh temp folder and streamed on stdout (progress lines, a header,
    the compressed file); the folder is emptied by the service user and removed by root whatever the
    exporter's end, and the exporter's status is the script's."""
    exporter = (f"{release_python(profile)} {q(EXPORT_SOURCE)} export {WORK_DIR} "
                f"{join(export_format, 'yes' if download_resources else 'no', int(project_id))}")
    return (f"d=$({make_work_dir(profile, 'export')}) || exit 1\n"
            f"{exporter}\n"
            "status=$?\n"
            f"{remove_work_dir_named(profile, WORK_DIR)}\n"
            "exit $status")
