"""migrate-media: what moves where, the steps in words, what is refused before anything changes, and the
copier's report in one line. The task (tasks/media.py) pairs each step with its act."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from tasks.core import media
from tasks.core.commands import media as commands
from tasks.core.commands.service import service_manager
from tasks.core.connect import Host
from tasks.core.errors import UsageError
from tasks.core.media import MediaSettings
from tasks.core.profile import Profile
from tasks.core.provision import steps, tls_steps
from tasks.core.provision.facts import ProvisionFacts
from tasks.core.render import RenderedFile
from tasks.core.transfer import staged_for_swap
from tasks.core.ui import human_bytes

PLACES = {"s3": "bucket", "local": "local"}


@dataclass(frozen=True)
class Move:
    """Both sides as profiles: `source` keeps the uploads where the server has them now (read from its
    env file), `target` where the profile wants them; `bucket` is whichever side's bucket."""

    to: str
    source: Profile
    target: Profile

    @property
    def bucket(self) -> MediaSettings:
        return (self.target if self.to == "s3" else self.source).media

    def files(self, facts: ProvisionFacts) -> dict[str, list[RenderedFile]]:
        """The env file, the unit and the nginx site for each place, rendered as provision renders them."""
        rendered = {}
        for side in (self.source, self.target):
            manager = service_manager(tls_steps.serving(facts, side))
            place = "bucket" if side.media.in_bucket else "local"
            rendered[place] = [manager.env_file(), manager.definition(), steps.site_file(facts, side)]
        return rendered


@dataclass(frozen=True)
class PlanWords:
    keys: str | None
    backup: str
    copy: str
    switch: tuple[str, ...]

    def lines(self) -> list[str]:
        return [*([self.keys] if self.keys else []), self.backup, self.copy, *self.switch]


def settings_from_lines(lines: list[tuple[str, str]]) -> MediaSettings:
    """The media settings a server's env file records (media.label_studio_env's lines)."""
    values = dict(lines)
    folder = values.get("STORAGE_AWS_FOLDER", "")
    return MediaSettings(storage=f"s3://{values.get('STORAGE_AWS_BUCKET_NAME', '')}{'/' + folder if folder else ''}",
                         s3_endpoint=values.get("STORAGE_AWS_ENDPOINT_URL"),
                         s3_region=values.get("STORAGE_AWS_REGION_NAME", "us-east-1"))


def plan(facts: ProvisionFacts, to: str, profile: Profile, alias: str) -> tuple[Move, PlanWords]:
    """The move and its steps in words; UsageError for what it refuses (nothing changed)."""
    if to not in PLACES:
        raise UsageError(f"--to must be one of: {', '.join(PLACES)} (not '{to}')")
    env = facts.files.get("env_file")
    if env is None:
        raise UsageError(f"Label Studio is not provisioned on {alias} (no {profile.remote.env_file})",
                         hint=f"fab -H {alias} provision")
    lines = media.server_lines(env)
    server = settings_from_lines(lines) if lines else MediaSettings()
    if (to == "s3") == server.in_bucket:
        where = media.describe_lines(lines) if lines else f"files in {profile.remote.media_dir}"
        raise UsageError(f"Label Studio on {alias} already keeps its uploads {'in ' if lines else 'as '}{where}; "
                         "nothing to do")
    if (to == "s3") != profile.media.in_bucket:
        raise UsageError(f"the profile says media.storage: {profile.media.storage}; migrate-media moves the uploads "
                         "to where the profile says",
                         hint=f"set media.storage: {'s3://bucket/prefix' if to == 's3' else 'local'} in "
                              f"{profile.config_file}, then run this again")
    if profile.service.manager != "systemd":
        raise UsageError("migrate-media needs the systemd service manager (service.manager: systemd)")
    source = dataclasses.replace(profile, media=server)
    move = Move(to, source, profile)
    rendered = move.files(facts)[PLACES["local" if to == "s3" else "s3"]]
    current = [facts.files.get("env_file"), facts.files.get(service_manager(profile).definition_key),
               facts.files.get("nginx_site")]
    if [file.content for file in rendered] != current:
        raise UsageError(f"the env file, the unit or the nginx site on {alias} is not what the profile makes (apart "
                         "from the uploads): migrate-media switches exactly the uploads' lines; nothing was changed",
                         hint=f"run `fab -H {alias} provision` with media.storage: {server.storage} first")
    bucket = move.bucket.describe()
    local = profile.remote.media_dir
    if to == "s3":
        copy = (f"copy every file of {local} into {bucket} while Label Studio serves, each object proven to hold "
                "its bytes (the bucket's MD5 of what it stored against the copier's, else read back and its sha256 "
                "compared), its sha256 recorded")
        final = "stop Label Studio; copy what came since; check it the same way"
        kept = f"the files stay in {local} (migrate-media --prune removes those the bucket holds)"
    else:
        copy = (f"copy every object of {bucket} into {local} while Label Studio serves, each file checked by sha256 "
                "(the one recorded when it was sent, or read back from the disk)")
        final = "stop Label Studio; copy what came since; check it the same way"
        kept = f"the objects stay in {bucket}"
    return move, PlanWords(
        keys=(f"the bucket's keys in {profile.remote.media_env} (root, 0600)" if to == "s3" else None),
        backup="a verified snapshot of the server into backups/ (label pre-migrate-media)",
        copy=copy,
        switch=(final,
                f"switch Label Studio to {'the bucket' if to == 's3' else 'local files'}: "
                f"{profile.remote.env_file}, {profile.remote.unit_file} and {profile.remote.nginx_site} as provision "
                "renders them (each renamed into place; nginx tested, then reloaded); start; health gate",
                f"on any failure: back as it was, exit non-zero; {kept}"),
    )


def prune_plan(facts: ProvisionFacts, profile: Profile, alias: str) -> MediaSettings:
    """The bucket whose local copies may go: the server's, which must be the profile's."""
    lines = media.server_lines(facts.files.get("env_file"))
    if not lines:
        raise UsageError(f"Label Studio on {alias} keeps its uploads as files: they are the only copy, and stay",
                         hint=f"fab -H {alias} migrate-media --to s3 moves them first")
    server = settings_from_lines(lines)
    if media.label_studio_env(profile.media) != lines:
        raise UsageError(f"the profile says media.storage: {profile.media.storage}; the server keeps its uploads in "
                         f"{server.describe()}; nothing was changed")
    return server


def staged(host: Host, move: Move, files: dict[str, list[RenderedFile]]):
    """The copier and both places' files in the root-only stage folder for the time of the block
    (transfer.staged_for_swap)."""
    return staged_for_swap(host, commands.stage_dir(move.target), {commands.COPIER: commands.COPIER_SOURCE}, files,
                           "staging the copier and the files of both places")


def summary(report: dict) -> str:
    checked = ", ".join(f"{n} by {how}" for how, n in sorted(report.get("checked", {}).items())) or "none new"
    return (f"{report['files']} files ({human_bytes(report.get('bytes', 0))}): {report.get('sent', 0)} copied and checked "
            f"({checked}), {report.get('kept', 0)} already there, in {report.get('seconds', 0)}s")
