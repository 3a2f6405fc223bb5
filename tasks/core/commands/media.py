"""migrate-media's server scripts: the copier (tasks/core/onserver/media_copy.py) run as the service user
in Label Studio's venv, and the switch. Pure builders, run as root.

Where uploads are kept is recorded where provision put it: the env file (`STORAGE_*` lines), the unit
(the keys' `EnvironmentFile=`) and the nginx site (the internal /file_download/ location). Switching is
installing the three as provision renders them for the other place (each written aside and renamed
over; nginx tested, then reloaded) with Label Studio stopped; undoing is installing the ones rendered
for the place it used. All six are staged beforehand in a root-only folder, with the copier. The keys
stay in provision's root-only 0600 file (`remote.media_env`): the copier gets them on stdin."""

from __future__ import annotations

from pathlib import PurePosixPath

from tasks.core.commands import install_staged_files, join, q, service_python
from tasks.core.commands.data import run_dir
from tasks.core.media import MediaSettings
from tasks.core.profile import Profile
from tasks.core.render import MEDIA_COPY_SOURCE, RenderedFile

COPIER_SOURCE = MEDIA_COPY_SOURCE
COPIER = "media_copy.py"
PLACES = ("local", "bucket")
RELOAD = "systemctl daemon-reload && nginx -t -q && systemctl reload nginx"


def stage_dir(profile: Profile) -> PurePosixPath:
    """Root-only: the copier and both places' env file, unit and nginx site (the swap job reads them)."""
    return run_dir(profile) / f"{profile.service.name}-migrate-media"


def copy(profile: Profile, bucket: MediaSettings, direction: str) -> str:
    """The copier as the service user (to-bucket or to-local), the keys on its stdin from the root-only
    file; it prints its report (JSON) on stdout."""
    if direction not in ("to-bucket", "to-local"):
        raise ValueError(direction)
    target = bucket.bucket
    copier = q(stage_dir(profile) / COPIER)
    # Without the file, "$(cat ...)" would be an empty program that python runs and calls a success.
    present = f"{{ [ -s {copier} ] || {{ echo 'the copier is missing: '{copier} >&2; false; }}; }}"
    words = join(direction, profile.remote.media_dir, profile.remote.media_state, target.bucket, target.prefix,
                 bucket.endpoint, bucket.s3_region)
    return f"{present} && {service_python(profile)} \"$(cat {copier})\" {words} < {q(profile.remote.media_env)}"


def copier_once(profile: Profile, bucket: MediaSettings, mode: str) -> str:
    """The copier's `list` (every object with its sha256) or `prune` (the local files the bucket holds)
    as the service user, its source in argv (not staged: run once), the keys on stdin from the
    root-only file."""
    if mode not in ("list", "prune"):
        raise ValueError(mode)
    target = bucket.bucket
    words = join(mode, profile.remote.media_dir, profile.remote.media_state, target.bucket, target.prefix,
                 bucket.endpoint, bucket.s3_region)
    return f"{service_python(profile)} {q(COPIER_SOURCE)} {words} < {q(profile.remote.media_env)}"


def switch_files(profile: Profile, place: str, files: list[RenderedFile]) -> str:
    """Install the env file, the unit and the nginx site rendered for `place` from the stage folder,
    then let systemd read the unit again and nginx its site (tested first)."""
    if place not in PLACES:
        raise ValueError(place)
    return " && ".join([*install_staged_files(stage_dir(profile), files, place), RELOAD])


def steps(profile: Profile, bucket: MediaSettings, to: str, files: dict[str, list[RenderedFile]]) -> dict:
    """The swap job's own steps (commands/swap.job): with Label Studio stopped, the final pass of the
    copier (only what came since the first), then the switch; undone by the files of the place it used."""
    place, back = ("bucket", "local") if to == "s3" else ("local", "bucket")
    return {"before_swap": copy(profile, bucket, "to-bucket" if to == "s3" else "to-local"),
            "after_swap": switch_files(profile, place, files[place]),
            "undo_swap": switch_files(profile, back, files[back])}
