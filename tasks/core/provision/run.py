"""provision's work on one connected server: the checks made here first, the plan, its two passes
(HTTP, then HTTPS once a certificate is there) and the report. `fab provision` runs it on -H's server,
`fab site-provision` on each app VM of a site."""

from __future__ import annotations

import os
import time
from typing import Callable

from tasks.core import media, offsite, ui
from tasks.core import site as sites
from tasks.core.commands import read_file
from tasks.core.commands.service import service_manager
from tasks.core.connect import Host
from tasks.core.edge import admin_email, ask_database_password, ask_new_password
from tasks.core.errors import RemoteError, UsageError
from tasks.core.files import write_atomic
from tasks.core.profile import Profile
from tasks.core.provision import facts, plan, steps, tls, tls_steps
from tasks.core.provision.health import wait_for_health
from tasks.core.provision.offsite_steps import OffsiteSecrets
from tasks.core.provision.plan import AdminRequest
from tasks.core.provision.refusals import check_host, refuse_database_switch, refuse_media_switch, refuse_neighbours


def check_tls_locally(profile: Profile) -> tuple[tls.LocalPair | None, tls.Eab | None]:
    """The profile's TLS rules, the tls.files pair and the EAB values, all checked on this machine."""
    tls.check_profile(profile)
    pair = tls.load_local_pair(profile) if profile.tls.mode == "files" else None
    if pair is not None and pair.info is not None:
        warning = tls.expiry_warning(pair.info)
        if warning:
            ui.warn(f"tls.files: {warning}")
    eab = tls.eab_from_env() if profile.tls.mode == "acme" else None
    return pair, eab


def https_pass(host: Host, profile: Profile, first: facts.ProvisionFacts, email: str | None,
               tls_pair: tls.LocalPair | None, eab: tls.Eab | None, *, shown: list, dry_run: bool) -> list:
    """The first pass served HTTP (nginx or the certificate was not there yet); this one switches to
    HTTPS. In plan mode it is shown as if the first pass had run, without the steps already shown."""
    admin = AdminRequest(email)
    if dry_run:
        ui.out.print("\n[bold]then a second pass switches to HTTPS[/bold] (shown as if the first had run):")
        seen = {(change.line(True), change.diff) for change in shown}
        second = [change for change in steps.plan(tls_steps.assume_ready(first), profile, admin, tls_pair=tls_pair)
                  if (change.line(True), change.diff) not in seen and (change.changed or change.action is not None)]
        return plan.apply(host, second, dry_run=True)
    wait_for_health(host, tls_steps.serving(first, profile), via_nginx=True)
    found = facts.provision_facts(host, profile, email or "")
    if not tls_steps.ready(found, profile):
        raise RemoteError("HTTPS could not be switched on: the certificate or nginx is still missing after the first pass")
    ui.out.print("\n[bold]switching to HTTPS[/bold]")
    changes = plan.apply(host, steps.plan(found, profile, admin, tls_pair=tls_pair, eab=eab), dry_run=False)
    wait_for_health(host, profile, via_nginx=True)
    return changes


def report_certificate(host: Host, profile: Profile) -> None:
    """What nginx now serves: names, issuer, days left; the fingerprint to compare with the browser's."""
    pem = host.run(read_file(profile.remote.tls_files(profile.tls.mode)[0]), sudo=True, what="reading the certificate").stdout
    info = tls.leaf_info(pem)
    if info is None:
        raise RemoteError("nginx serves HTTPS but the certificate file cannot be read back")
    ui.out.print(f"HTTPS certificate: {', '.join(info.names)}, issued by {info.issuer}, "
                 f"{info.days_left()} days left (until {info.not_after:%Y-%m-%d}).")
    label = "self-signed certificate" if profile.tls.mode == "self-signed" else "certificate"
    ui.out.print(f"SHA-256 fingerprint of the {label} (your browser shows the same): {info.sha256}")
    warning = tls.expiry_warning(info)
    if warning:
        ui.warn(warning)


def offsite_credentials_for(profile: Profile, found: facts.ProvisionFacts) -> dict[str, str] | None:
    """An S3 target's credentials from this machine's environment (checked here), None to keep the ones
    stored on the server; refused when there are none anywhere."""
    if not profile.offsite.needs_credentials:
        return None
    values = offsite.credentials_from_env(dict(os.environ))
    if values is None and found.offsite.credentials_meta:
        return None
    problem = offsite.credentials_problem(values or {})
    if problem:
        raise UsageError(f"offsite.target {profile.offsite.target}: {problem}; nothing was changed",
                         hint="the keys of an account that may write to that bucket (and only to it)")
    return values


def offsite_sftp_key_for(profile: Profile, found: facts.ProvisionFacts) -> str | None:
    """An SFTP target's private key from the file $LSVM_OFFSITE_SFTP_KEY names (checked here), None to keep
    the one stored on the server; refused when there is none anywhere."""
    if not profile.offsite.needs_key:
        return None
    try:
        key = offsite.sftp_key_from(dict(os.environ))
    except ValueError as exc:
        raise UsageError(f"offsite.target {profile.offsite.target}: {exc}; nothing was changed") from None
    if key is None and not found.offsite.sftp_key_meta:
        raise UsageError(f"offsite.target {profile.offsite.target}: ${offsite.SFTP_KEY_ENV} must name the private key "
                         "file of that account on this machine (it goes to the VM, root-only, never in the profile); "
                         "nothing was changed", hint="a key of its own, without a passphrase, allowed only there")
    return key


def offsite_notify_url_for(profile: Profile, found: facts.ProvisionFacts) -> str | None:
    """offsite.notify: the apprise URL(s) from this machine's $LSVM_NOTIFY_URL (checked here), None to keep
    the ones stored on the server; refused when there are none anywhere."""
    if not (profile.offsite.enabled and profile.offsite.notify):
        return None
    url = os.environ.get(offsite.NOTIFY_ENV, "").strip()
    if not url and found.offsite.notify_meta:
        return None
    problem = offsite.notify_url_problem(url)
    if problem:
        raise UsageError(f"offsite.notify is on: {problem}; nothing was changed",
                         hint="apprise's URL forms: https://github.com/caronc/apprise/wiki (json://, mailtos://, ntfys://, ...)")
    return url


def offsite_password_for(host: Host, profile: Profile, found: facts.ProvisionFacts, *, dry_run: bool) -> str | None:
    """restic's password for this host: this machine's copy (backups/<host>/offsite-password, 0600); when
    it has none, the server's, copied here first; when neither has one, a new one, kept here before it
    is sent. Without it nothing restores .env and media once the VM is gone."""
    if not profile.offsite.enabled:
        return None
    local = profile.backups_dir() / offsite.PASSWORD_FILE
    if local.exists():
        password = local.read_text(errors="replace").strip()
        problem = offsite.password_problem(password)
        if problem:
            raise UsageError(f"{local} {problem}; nothing was changed",
                             hint="put back the copy you keep elsewhere, or remove the file only if the target "
                                  "holds no snapshot of .env and media yet")
        return password
    if found.offsite.restic_password_meta:
        content = host.run(read_file(profile.remote.restic_env), sudo=True, what="reading restic's password").stdout
        password = offsite.password_from_file(content or "")
        if password is None or offsite.password_problem(password):
            raise RemoteError(f"{profile.remote.restic_env} on {host.alias} holds no password this toolkit made; "
                              "nothing was changed")
        if not dry_run:
            write_atomic(local, f"{password}\n".encode())
            ui.step(True, f"copied restic's password from {host.alias} to {local} (0600)")
        return password
    password = offsite.new_password()
    if not dry_run:
        write_atomic(local, f"{password}\n".encode())
        ui.step(True, f"made restic's password for {host.alias}'s .env and media: kept in {local} (0600); keep a copy "
                      "somewhere else as well (without it they cannot be read back once the VM is gone)")
    return password


def provision_host(host: Host, profile: Profile, *, dry_run: bool = False, reset_password: bool = False,
                   tls_pair: tls.LocalPair | None = None, eab: tls.Eab | None = None, site_key: str | None = None,
                   site_marker: str | None = None, http_from: tuple[str, ...] | None = None,
                   site_database_password: str | None = None,
                   before_changes: Callable[[], None] | None = None) -> None:
    """Provision the connected `host` as `profile` says (its TLS settings already checked here). A site
    gives its SECRET_KEY (`site_key`), the file that marks the VM as one of its app VMs (`site_marker`),
    the addresses its firewall lets reach HTTP (`http_from`: the balancer's and the site's own), the
    password of the database VM it set up (`site_database_password`, else asked as always) and what
    to do before the first change (drain the VM at the load balancer); nothing is called when the plan
    changes nothing. Without a site, an app VM of one is refused (site-provision drains it)."""
    started = time.monotonic()
    email = admin_email(profile)
    if reset_password and not email:
        raise UsageError("--reset-password needs label_studio.admin_email in the profile (or LABEL_STUDIO_USERNAME)")
    found = facts.provision_facts(host, profile, email or "")
    check_host(profile, found)
    refuse_neighbours(host.alias, found)
    if site_marker is None:
        sites.refuse_member(host.alias, found.files.get("site_marker"), "provision")
    refuse_database_switch(host.alias, profile, found)
    refuse_media_switch(host.alias, profile, found)
    problem = steps.version_problem(found, profile)
    if problem:
        raise UsageError(f"{problem}; nothing was changed",
                         hint=f"to go back to the release that ran before the last upgrade: fab -H {host.alias} rollback")
    if not email and not found.db_users:
        raise UsageError(f"no admin to create: set label_studio.admin_email in {profile.config_file} "
                         "or LABEL_STUDIO_USERNAME")
    admin = AdminRequest(email, reset=reset_password)
    if not dry_run and steps.needs_password(found, admin):
        admin = AdminRequest(email, ask_new_password(email), reset_password)
    database_password = None
    if not dry_run and steps.database_password_needed(found, profile):
        database_password = site_database_password or ask_database_password(profile)
    offsite_secrets = OffsiteSecrets(offsite_credentials_for(profile, found),
                                     offsite_password_for(host, profile, found, dry_run=dry_run),
                                     offsite_notify_url_for(profile, found), offsite_sftp_key_for(profile, found))
    media_keys = media.keys_given(profile.media, dict(os.environ), stored=bool(found.media.credentials_meta))

    mode = "plan only: nothing on the server changes" if dry_run else f"profile: {profile.source}"
    ui.out.print(f"[bold]provision {host.alias}[/bold] ({mode})")
    planned = steps.plan(found, profile, admin, tls_pair=tls_pair, eab=eab, database_password=database_password,
                         offsite_secrets=offsite_secrets, media_keys_given=media_keys, site_key=site_key,
                         site_marker=site_marker, http_from=http_from)
    if before_changes is not None and not dry_run and any(change.changed for change in planned):
        before_changes()
    changes = plan.apply(host, planned, dry_run=dry_run)
    if profile.tls.enabled and not tls_steps.ready(found, profile):
        changes += https_pass(host, profile, found, email, tls_pair, eab, shown=changes, dry_run=dry_run)
    elif not dry_run:
        wait_for_health(host, profile, via_nginx=True)
    changed = sum(change.changed for change in changes)
    took = time.monotonic() - started
    if dry_run:
        ui.out.print(f"\n{changed} step(s) would change, {len(changes) - changed} already as wanted "
                     f"({took:.1f}s). Nothing was changed.")
        return
    ui.out.print(f"\n[bold]{changed} changed[/bold], {len(changes) - changed} unchanged in {took:.1f}s. "
                 f"Label Studio is up at [bold]{profile.url}[/bold]")
    if email:
        ui.out.print(f"Log in as {email}.")
    if profile.tls.enabled:
        report_certificate(host, profile)
    hint = service_manager(profile).reboot_hint()
    if hint:
        ui.warn("screen mode does not survive a reboot. To start it at boot, add this line with "
                f"`sudo crontab -e` on the server:\n  {hint}")


