"""Every server-side script the toolkit builds parses as POSIX shell (`sh -n`), even when the profile
holds the strangest values validation lets through."""

from __future__ import annotations

import dataclasses
import itertools
import subprocess
from pathlib import PurePosixPath

import pytest

from tasks.core import commands, render
from tasks.core.commands import data, dbcheck, export, instances, offsite, probes, provision, swap, tls, upgrade
from tasks.core.commands.service import Screen, Systemd, service_manager, wait_for_health
from tasks.core.commands import media as media_commands
from tasks.core.defaults import DATABASE, MEDIA, SECRET_ENV
from tasks.core.media import MediaSettings
from tasks.core.profile import parse_profile
from tasks.core.offsite import OffsiteSettings
from tasks.core.provision import steps
from tasks.core.provision.facts import provision_facts_from_probe
from tasks.core.provision.plan import AdminRequest, Run
from tests.unit.samples import DATA, EMAIL, HOSTILE, PROFILES


def scripts_of(profile) -> dict[str, str]:
    manager = service_manager(profile)
    staged = PurePosixPath("/tmp/-x y/site")
    found = {
        "status probe": probes.status_probe(profile),
        "provision probe": probes.provision_probe(profile, EMAIL),
        "as service user": commands.as_service_user(profile, "python3", "-c", "print(1)"),
        "install file": commands.install_file(staged, profile.remote.env_file, mode="0600", owner="root", group="root"),
        "health wait": wait_for_health(profile, via_nginx=True, timeout=5, fail_on_crash=True),
        "health wait direct": wait_for_health(profile, via_nginx=False, timeout=5),
        "apt install": provision.apt_install(provision.wanted_packages(profile)),
        "useradd": provision.create_service_user(profile),
        "pip install": provision.pip_install_label_studio(profile, copy_database_from=None),
        "pip upgrade": provision.pip_install_label_studio(profile, copy_database_from="1.20.0"),
        "nginx site new": provision.apply_nginx_site(profile, staged, previous_exists=False),
        "nginx site update": provision.apply_nginx_site(profile, staged, previous_exists=True),
        "nginx link only": provision.apply_nginx_site(profile, None, previous_exists=True),
        "ensure admin": provision.ensure_admin(profile, staged, PurePosixPath("/tmp/-x y/secret")),
        "add app server": provision.add_app_server(profile),
        "screen launcher": render.screen_launcher(profile).content,
        "settle database": data.settle_database(profile),
    }
    for variant in (Systemd(profile), Screen(profile)):
        for verb in ("start", "stop", "restart"):
            found[f"{variant.kind} {verb}"] = variant.command(verb)
        found[f"{variant.kind} logs"] = variant.logs(10, follow=True)
        found[f"{variant.kind} recent log"] = variant.recent_log()
        found[f"{variant.kind} enable"] = variant.enable_at_boot() or "true"
    found["manager start"] = manager.start()
    found[f"{manager.kind} stop and disable"] = manager.stop_and_disable()
    found.update({
        "detect instances": instances.detect(profile),
        "port holder": instances.port_holder(profile),
        "owned health": instances.owned_health(profile, "http://127.0.0.1:1/health", "-x"),
        "stop unmanaged": instances.stop_unmanaged(profile, 123, 1000),
        "stop unmanaged at rest": instances.stop_unmanaged(profile, None, 1000),
        "revive unmanaged": instances.revive_unmanaged(profile),
        "wait serving": instances.wait_serving(8080, 30),
        "mark adopted": instances.mark_adopted(profile),
        "build release": provision.build_release(profile, "1!2.0.0.post1+local.7"),
        "switch release": provision.switch_release(profile, "releases/2.0.0"),
        "migration check": upgrade.migration_check(profile, "2.0.0", PurePosixPath("/var/-tmp/lsvm-x y")),
        "read upgrade record": upgrade.read_record(profile),
        "prune releases": upgrade.prune_releases(profile),
        "upgrade job": swap.job(profile, [DATABASE], 30, **upgrade.upgrade_steps(profile, "1.0", "2.0")),
        "rollback job": swap.job(profile, [DATABASE], 30, **upgrade.rollback_steps(profile, "ab" * 32)),
        "keep data job": swap.job(profile, [DATABASE], 30, **upgrade.keep_data_steps(profile)),
        "adopt swap job": swap.job(profile, [DATABASE], 30, restart_previous=False),
    })
    found.update(tls_scripts(profile))
    found.update(data_scripts(profile))
    found.update(offsite_scripts(profile))
    return found


OFFSITE_TARGETS = ("/mnt/-off.site/x_y", "s3://-bucket.x/-pre/fix")


def offsite_scripts(profile) -> dict[str, str]:
    """Every offsite script, for a path and an S3 target (set past validation: screen mode refuses offsite)."""
    found = {}
    for target in OFFSITE_TARGETS:
        p = dataclasses.replace(profile, offsite=OffsiteSettings(target=target, s3_endpoint="http://-x:9000"))
        found.update({
            f"{target} provision probe": probes.provision_probe(p, EMAIL),
            f"{target} offsite user": offsite.create_user(p),
            f"{target} leave group": offsite.leave_service_group(p),
            f"{target} install litestream": offsite.install_litestream(p),
            f"{target} store credentials": offsite.store_secret(p.remote.offsite_env),
            f"{target} init restic": offsite.init_repository(p),
            f"{target} files now": offsite.files_now(p),
            f"{target} watch now": offsite.watch_now(p),
            f"{target} list points": offsite.list_points(p),
            f"{target} list files": offsite.list_files(p),
            f"{target} restore files": offsite.restore_files_into_incoming(p, data.incoming_dir(p), "0123abcd"),
            f"{target} parts in incoming": offsite.parts_in_incoming(p, data.incoming_dir(p)),
            f"{target} write as replication user": offsite.write_as_replication_user(p, p.remote.offsite_state / "x.yml"),
            f"{target} report": probes.offsite_report(p),
            f"{target} shared database": offsite.shared_database(p),
            f"{target} restore at": offsite.restore_into_incoming(p, data.incoming_dir(p), "2026-12-03T07:30:00Z"),
            f"{target} restore newest": offsite.restore_into_incoming(p, data.incoming_dir(p), None),
            f"{target} drill now": offsite.drill_now(p),
        })
    return found


def tls_scripts(profile) -> dict[str, str]:
    """Every HTTPS script, in each TLS mode."""
    found = {}
    for mode in ("acme", "files", "self-signed"):
        p = dataclasses.replace(profile, tls=dataclasses.replace(profile.tls, mode=mode))
        found[f"{mode} provision probe"] = probes.provision_probe(p, EMAIL)
        found[f"{mode} status probe"] = probes.status_probe(p)
        found[f"{mode} https health"] = wait_for_health(p, via_nginx=True, timeout=5)
    found["certbot"] = tls.certbot_certonly(profile, "-x.example.org", config=None, force=False)
    found["certbot eab forced"] = tls.certbot_certonly(profile, "x.org", config=PurePosixPath("/tmp/-x y/s"), force=True)
    found["install tls files"] = tls.install_tls_files(profile, PurePosixPath("/tmp/-x y"))
    found["self-signed dns"] = tls.make_self_signed(profile, "-x.example.org")
    found["self-signed ip"] = tls.make_self_signed(profile, "10.0.0.1")
    return found


def data_scripts(profile) -> dict[str, str]:
    """Every script of backup, push and restore, in each of its shapes."""
    p = profile.remote
    work = PurePosixPath(f"{profile.backup.server_tmp_dir}/lsvm-backup.-a $b")
    holder = "backup by $(id)@'laptop' since `date` ;"
    lock = data.data_lock(profile, holder)
    found = {
        "sqlite tool": data.sqlite_tool("check", work / DATABASE),
        "as owner": data.owner(profile, "echo 'x' \"$1\""),
        "server counts": data.server_counts(profile),
        "release migrations": dbcheck.shipped_migrations(profile),
        "orm check": dbcheck.read_every_table(profile),
        "orm check of a file": dbcheck.read_every_table(profile, PurePosixPath("/var/lib/x/in coming.sqlite3")),
        "export formats": export.project_formats(profile, [3, 12]),
        "export formats of all": export.project_formats(profile, None),
        "export": export.export_project(profile, 3, "COCO_WITH_IMAGES", True),
        "export, sudo -S": commands.sudo_with_password_on_stdin(export.export_project(profile, 3, "JSON", False)),
        "data lock": lock,
        "data lock, sudo -n": commands.sudo_noninteractive(lock),
        "data lock, sudo -S": commands.sudo_with_password_on_stdin(lock),
        "work dir": data.make_work_dir(profile, "backup"),
        "remove work dir": data.remove_work_dir(profile, work),
        "free space": data.free_space(work),
        "file size": data.file_size(profile, p.database),
        "prepare copy": data.prepare_copy(profile, work, '{"counter": 1, "size": 2}'),
        "prepare copy, first": data.prepare_copy(profile, work, "null"),
        "file list": data.write_file_list(profile, work),
        "serve backup": data.serve_backup(profile),
        "serve backup, offsite restore": data.serve_backup(profile, work_dir=work, data_dir=work / "offsite"),
        "apply delta": data.apply_delta_incoming(profile),
        "codec probe": data.CODEC_PROBE,
        "make incoming": data.make_incoming(profile),
        "hash incoming": data.hash_incoming(profile),
        "hash incoming but the rebuilt database": data.hash_incoming(profile, [DATABASE]),
        "remove incoming": data.remove_incoming(profile),
        "remove swap leftovers": data.remove_swap_leftovers(profile),
        "unfinished swap": data.unfinished_swap(profile),
        "temp dir": commands.MAKE_TEMPDIR,
        "private file": commands.empty_private_file(work / "secret"),
        "swap follow": swap.follow(profile),
        "wait until exited": Screen(profile).wait_until_exited(),
        # What the service user runs (the wrappers above quote these into `sh -c`).
        "owner: file list": data.file_list_script(work),
        "owner: make incoming": data.make_incoming_script(p.data_dir),
        "owner: remove leftovers": data.remove_leftovers_script(p.data_dir),
    }
    for codec in data.COMPRESS:
        for dump, listed in ((True, True), (True, False), (False, True)):
            found[f"stream {codec} dump={dump} files={listed}"] = data.stream_snapshot(
                profile, work, codec, listed_files=listed, work_file="dump" if dump else None)
        found[f"receive upload {codec}"] = data.receive_upload(profile, codec)
        found[f"owner: receive upload {codec}"] = data.receive_script(p.data_dir, codec)
        found[f"owner: stream {codec}"] = data.stream_script(work, p.data_dir, codec, listed_files=True, work_file="dump")
    for parts in ([DATABASE], [DATABASE, SECRET_ENV, MEDIA], [DATABASE, MEDIA]):
        found[f"swap {'+'.join(parts)}"] = data.swap(profile, parts)
        found[f"rollback {'+'.join(parts)}"] = data.rollback(profile, parts)
        found[f"swap job {'+'.join(parts)}"] = swap.job(profile, parts, 30)
        found[f"swap job {'+'.join(parts)}, read before"] = swap.job(profile, parts, 30, read_after_start=False)
        found[f"owner: swap {'+'.join(parts)}"] = data.swap_script(p.data_dir, parts)
        found[f"owner: rollback {'+'.join(parts)}"] = data.rollback_script(p.data_dir, parts)
        found[f"swap launch {'+'.join(parts)}"] = swap.launch(profile, parts, 30)
    return found


def media_scripts(profile) -> dict[str, str]:
    """migrate-media's: the copier both ways, the switch both ways, the swap job with them."""
    bucket = MediaSettings(storage="s3://bucket-a/a-b/c_d", s3_endpoint="http://10.0.0.1:9000")
    files = {place: [render.unit_file(profile)] for place in media_commands.PLACES}
    found = {"media stage": commands.install_into_private_dir(media_commands.stage_dir(profile),
                                                              PurePosixPath("/tmp/-x y"), ["a b", "-c"]),
             "media unstage": commands.remove(media_commands.stage_dir(profile)),
             "media list": media_commands.copier_once(profile, bucket, "list"),
             "media prune": media_commands.copier_once(profile, bucket, "prune")}
    for to in ("s3", "local"):
        for name, script in media_commands.steps(profile, bucket, to, files).items():
            found[f"media {to}: {name}"] = script
        found[f"media {to}: swap job"] = swap.job(profile, [], 30, **media_commands.steps(profile, bucket, to, files))
    return found


def plan_scripts(profile) -> dict[str, str]:
    """Every Run action of the plans for a bare and a provisioned host, with and without an admin."""
    found = {}
    with_offsite = dataclasses.replace(profile, offsite=OffsiteSettings(target=OFFSITE_TARGETS[0]))
    for name in ("bare", "provisioned"):
        facts = provision_facts_from_probe((DATA / f"provision_probe_{name}.txt").read_text())
        for admin in (AdminRequest(EMAIL), AdminRequest(EMAIL, "pw", reset=True)):
            for variant, p in (("", profile), ("offsite, ", with_offsite)):
                for change in steps.plan(facts, p, admin):
                    if isinstance(change.action, Run):
                        found[f"{variant}{name}: {change.plan or change.what}"] = change.action.script
    return found


CASES = [(f"{pname}: {sname}", script)
         for pname, profile in PROFILES.items()
         for sname, script in itertools.chain(scripts_of(profile).items(), plan_scripts(profile).items(),
                                              media_scripts(profile).items())]


@pytest.mark.parametrize("name, script", CASES, ids=[c[0] for c in CASES])
def test_script_is_valid_posix_shell(name, script):
    result = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, f"{name}: {result.stderr}"


def test_the_hostile_email_reaches_the_probe_as_one_argument():
    script = probes.provision_probe(HOSTILE, EMAIL)
    assert commands.q(EMAIL) in script


def test_a_failed_step_before_the_swap_stops_the_swap():
    """The swap job calls swap_data as a plain command: as an `if` condition the shell would ignore the
    `set -e` inside it, and a failed before_swap (a final conversion that hit a full disk) would go on
    to switch and start Label Studio on what it left."""
    profile = parse_profile("", host="vm")
    script = swap.job(profile, [DATABASE], 30, before_swap="false", after_swap="echo switched")
    body = script[script.index("swap_data() ("):]
    body = body[:body.index("\n)\n") + 3]
    call = next(line for line in script.splitlines() if "run swap_data" in line)
    assert not call.lstrip().startswith(("if ", "while ")), call
    shell = f'{body}\nrun() {{ "$@"; }}\n{call}\necho "status=$swapped"\n'
    out = subprocess.run(["sh", "-c", shell], capture_output=True, text=True)
    assert "switched" not in out.stdout and "status=0" not in out.stdout, out.stdout + out.stderr


def test_a_failed_undo_step_stops_the_job_before_the_data_goes_back_or_anything_starts():
    """An upgrade's undo (the release links back) that fails must not be followed by the old data and a
    start: the new release would run on the original database."""
    profile = parse_profile("", host="vm")
    script = swap.job(profile, [DATABASE], 30, undo_swap="false\necho undone-anyway")
    body = script[script.index("undo_steps() ("):]
    body = body[:body.index("\n)\n") + 3]
    tail = script[script.index("run undo_steps"):]
    stubs = ('say() { echo "said $*"; }\nsaid() { echo last; }\nrun() { "$@"; }\n'
             'rollback_data() { echo rolled-back-data; }\nstart_service() { echo started; }\n'
             'old_healthy() { :; }\ncleanup() { :; }\n')
    out = subprocess.run(["sh", "-c", f"{stubs}{body}\n{tail}"], capture_output=True, text=True)
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"said {swap.ROLLBACK_FAILED} undoing the steps around the swap failed" in out.stdout
    for never in ("undone-anyway", "rolled-back-data", "started"):
        assert never not in out.stdout, out.stdout
