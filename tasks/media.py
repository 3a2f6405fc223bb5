"""migrate-media: move the uploads between the server's disk and the profile's S3 bucket, every object
checked by sha256 before the switch."""

from __future__ import annotations

import contextlib
import os

from tasks.core import media, procedure, ui
from tasks.core import site as sites
from tasks.core.data import engine, local, media_move, snapshots
from tasks.core.data.catalog import report_snapshot
from tasks.core.data.swap import refuse_foreign_port, refuse_unfinished_swap, run_swap
from tasks.core.commands import media as commands
from tasks.core.defaults import SWAP_HEALTH_TIMEOUT
from tasks.core.edge import CONFIG_HELP, HEALTH_HELP, YES_HELP, confirm, open_host, task, task_edge
from tasks.core.errors import RemoteError, SwapFailed, UsageError
from tasks.core.procedure import Step
from tasks.core.provision import facts, plan, steps


@task(help={"to": "s3 (the bucket the profile's media.storage names) or local (the data dir's media/)",
            "prune": "with the uploads in the bucket: remove the local files it holds, each as it was sent",
            "config": CONFIG_HELP, "yes": YES_HELP, "dry-run": "read the server and print the plan; change nothing",
            "health-timeout": HEALTH_HELP})
@task_edge
def migrate_media(c, to=None, prune=False, config=None, yes=False, dry_run=False,
                  health_timeout=SWAP_HEALTH_TIMEOUT):
    """Move the server's uploads between its disk and the profile's S3 bucket, every object checked by sha256."""
    if prune:
        if to:
            raise UsageError("--prune removes the local copies of uploads already moved: give it no --to")
        return _prune(c, config, yes, dry_run)
    if not to:
        raise UsageError("where to? --to s3 (the profile's media.storage) or --to local")
    if to not in media_move.PLACES:
        raise UsageError(f"--to must be one of: {', '.join(media_move.PLACES)} (not '{to}')")
    profile, host = open_host(c, config, sudo=True)
    found = facts.provision_facts(host, profile, "")
    sites.refuse_member(host.alias, found.files.get("site_marker"), "migrate-media")
    move, words = media_move.plan(found, to, profile, host.alias)
    keys = media.keys_given(profile.media, dict(os.environ), stored=bool(found.media.credentials_meta))
    with contextlib.ExitStack() as held:
        reports: dict = {}
        plan_steps = _steps(host, found, move, words, keys, int(health_timeout), held, reports)
        ui.out.print(f"migrate-media on {host.alias}: {move.source.media.describe()} -> {move.target.media.describe()}")
        procedure.show(plan_steps, numbered=True)
        if dry_run:
            ui.out.print("dry run: nothing was changed")
            return
        confirm(f"move the uploads of {host.alias} to {move.target.media.describe()}? (backed up first; Label Studio "
                "stops for the final copy)", yes)
        held.enter_context(local.local_lock(profile.backups_dir()))
        held.enter_context(snapshots.server_lock(host, profile, "migrate-media"))
        refuse_unfinished_swap(host, profile)
        refuse_foreign_port(host, profile)
        procedure.run(plan_steps)
    if to == "s3":
        ui.out.print(f"The files stay in {profile.remote.media_dir}, no longer used: `fab -H {host.alias} "
                     "migrate-media --prune` removes those the bucket holds.")
    else:
        ui.out.print(f"The objects stay in {move.bucket.describe()}, no longer used.")


def _prune(c, config: str | None, yes: bool, dry_run: bool) -> None:
    """The local files of uploads moved into the bucket, removed once the bucket is proven to hold them."""
    profile, host = open_host(c, config, sudo=True)
    found = facts.provision_facts(host, profile, "")
    bucket = media_move.prune_plan(found, profile, host.alias)
    ui.out.print(f"remove from {profile.remote.media_dir} on {host.alias} every file {bucket.describe()} holds as it "
                 "was sent (sha256 recorded then, unchanged here, the same object there); any other file stays")
    if dry_run:
        ui.out.print("dry run: nothing was changed")
        return
    confirm(f"remove those local files on {host.alias}?", yes)
    with snapshots.server_lock(host, profile, "migrate-media --prune"):
        out = host.run(commands.copier_once(profile, bucket, "prune"), sudo=True, timeout=None,
                       what="removing the local copies").stdout
    report = media.copier_report(out)
    ui.step(report["removed"] > 0, f"removed {report['removed']} of {report['files']} local files "
                                   f"({ui.human_bytes(report['bytes'])}); {report['kept']} stay")
    if report["kept_files"]:
        ui.warn(f"kept (not in the bucket as they were sent): {', '.join(report['kept_files'])}")


def _steps(host, found, move: media_move.Move, words: media_move.PlanWords, keys: dict | None, health_timeout: int,
           held: contextlib.ExitStack, reports: dict) -> list[Step]:
    """migrate-media, step by step: what its plan says and what it does."""
    to, profile = move.to, move.target
    files = move.files(found)

    def store_keys() -> None:
        plan.apply(host, steps.media_keys(found, profile, keys), dry_run=False)

    def backup() -> None:
        report_snapshot(engine.take_server_snapshot(host, move.source, label="pre-migrate-media"),
                        "server backed up as")

    def copy() -> None:
        held.enter_context(media_move.staged(host, move, files))
        direction = "to-bucket" if to == "s3" else "to-local"
        with ui.err.status(f"copying the uploads {'into' if to == 's3' else 'out of'} {move.bucket.describe()}"):
            out = host.run(commands.copy(profile, move.bucket, direction), sudo=True, timeout=None,
                           what="copying the uploads").stdout
        reports["first"] = media.copier_report(out)
        ui.step(True, f"copied while Label Studio served: {media_move.summary(reports['first'])}")
        if reports["first"].get("not_files"):
            ui.warn(f"not files, left out: {', '.join(reports['first']['not_files'])}")

    def switch() -> None:
        place = "the bucket" if to == "s3" else "local files"
        try:
            run_swap(host, profile, [], health_timeout=health_timeout,
                     steps=commands.steps(profile, move.bucket, to, files),
                     swapped=f"the uploads copied since, checked; Label Studio switched to {place} (env file, unit "
                             "and nginx site renamed in)",
                     serving=f"its uploads in {place}")
        except SwapFailed as failed:
            if failed.previous_serving:
                raise RemoteError(f"migrate-media to {to} failed ({failed.why or failed.message}); Label Studio is "
                                  "back on its uploads where they were") from None
            raise

    return [
        *([Step.of(store_keys, words.keys)] if words.keys else []),
        Step.of(backup, words.backup),
        Step.of(copy, words.copy),
        Step.of(switch, *words.switch),
    ]
