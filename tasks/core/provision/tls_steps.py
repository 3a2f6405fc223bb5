"""The HTTPS steps of the provision plan (tls.mode acme, files, self-signed), pure like tasks.core.provision.steps.

HTTPS is switched on in the pass that finds everything it needs on the server: nginx installed (its
version decides the http2 syntax) and, for acme, a certificate. Until then the site keeps serving plain
HTTP (with certbot's http-01 answers in acme mode), the pass ends by obtaining the certificate, and
provision runs a second pass that turns HTTPS on (tasks/provision.py)."""

from __future__ import annotations

import dataclasses

from tasks.core import parse, render
from tasks.core.commands.tls import ENABLE_CERTBOT_TIMER, make_self_signed
from tasks.core.errors import ProfileError
from tasks.core.profile import Profile
from tasks.core.provision import tls
from tasks.core.provision.facts import ProvisionFacts
from tasks.core.provision.plan import NGINX_RELOAD, Change, InstallTlsFiles, ObtainCertificate, Run, managed_file
from tasks.core.provision.tls import Eab, LocalPair

RENEW_BEFORE_DAYS = 30   # a self-signed certificate closer to its end than this is made anew


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def http2_directive(nginx_version: str) -> bool:
    """nginx 1.25.1 brought `http2 on;` and deprecated `listen ... http2`."""
    return _version(nginx_version) >= (1, 25, 1)


def acme_certificate_ok(facts: ProvisionFacts, profile: Profile) -> bool:
    """Our certbot lineage holds a certificate for server_name, from the profile's ACME directory, valid now."""
    info = tls.leaf_info(facts.tls.cert_pem)
    return (info is not None and info.covers(profile.effective_server_name) and not info.expired()
            and bool(facts.tls.key_meta)
            and tls.renewal_server(facts.tls.renewal) == profile.tls.acme.directory)


def ready(facts: ProvisionFacts, profile: Profile) -> bool:
    """Can this pass serve HTTPS? nginx is there and, in acme mode, a certificate."""
    if not profile.tls.enabled:
        return False
    if facts.tls.assumed:
        return True
    if not facts.tls.nginx_version:
        return False
    return profile.tls.mode != "acme" or acme_certificate_ok(facts, profile)


def serving(facts: ProvisionFacts, profile: Profile) -> Profile:
    """The profile as this pass serves it: with TLS off until `ready` (URL, env file, health check), at
    the plain-HTTP URL Label Studio has now (its env file), or http://server_name on a new host."""
    if profile.tls.enabled and not ready(facts, profile):
        current = dict(parse.env_assignments(facts.files.get("env_file") or "")).get("LABEL_STUDIO_HOST", "")
        return dataclasses.replace(profile, public_url=current if current.startswith("http://") else None,
                                   tls=dataclasses.replace(profile.tls, mode="off"))
    return profile


def assume_ready(facts: ProvisionFacts) -> ProvisionFacts:
    """Plan mode: the facts of a second pass, as if the first one had put nginx and the certificate there."""
    return dataclasses.replace(facts, tls=dataclasses.replace(facts.tls, assumed=True))


def nginx_tls(facts: ProvisionFacts, profile: Profile, pair: LocalPair | None = None) -> render.NginxTls | None:
    """What the HTTPS server block needs, or None while this pass serves plain HTTP."""
    if not ready(facts, profile):
        return None
    full, chain, key = profile.remote.tls_files(profile.tls.mode)
    info = pair.info if pair is not None else (tls.leaf_info(facts.tls.cert_pem) if profile.tls.mode == "acme" else None)
    resolvers = tuple(f"[{r}]" if ":" in r else r for r in facts.tls.resolvers)
    return render.NginxTls(full, key, chain, http2_directive(facts.tls.nginx_version),
                           stapling=bool(info and info.ocsp and resolvers), resolvers=resolvers,
                           hsts=profile.tls.hsts)


def acme_webroot(profile: Profile):
    return profile.remote.acme_webroot if profile.tls.mode == "acme" else None


def _described(info: tls.CertInfo) -> str:
    return f"{', '.join(info.names)} from {info.issuer}, {info.days_left()} days left"


def certificate(facts: ProvisionFacts, profile: Profile, pair: LocalPair | None) -> list[Change]:
    """The certificate and key nginx will read, in place before the site that names them."""
    mode = profile.tls.mode
    if mode == "off" or not ready(facts, profile):
        return []
    reload = frozenset({NGINX_RELOAD})
    name = profile.effective_server_name
    current = tls.leaf_info(facts.tls.cert_pem)
    if mode == "acme":
        if facts.tls.assumed:
            return []
        assert current is not None
        return [Change(f"certificate {_described(current)}")]
    if mode == "files":
        if pair is None or pair.info is None:
            raise ProfileError("tls.mode files: the certificate and key are checked and installed by provision; "
                               "run it (with tls.mode off first when taking over an instance)")
        same = (facts.tls.cert_pem == pair.fullchain.decode() and facts.tls.key_sha256 == pair.key_sha256
                and facts.tls.key_meta == "root:root:600")
        if same:
            return [Change(f"certificate from tls.files is installed ({_described(pair.info)})")]
        where = profile.remote.tls_dir
        return [Change(f"installed the certificate and key from tls.files in {where} (key root-only 0600)", True,
                       plan=f"install the certificate for {', '.join(pair.info.names)} and its key in {where}",
                       action=InstallTlsFiles(profile, pair), notifies=reload)]
    ok = (current is not None and current.self_signed and current.covers(name)
          and current.days_left() > RENEW_BEFORE_DAYS and facts.tls.key_meta == "root:root:600")
    if ok:
        return [Change(f"self-signed certificate for {name} ({current.days_left()} days left)")]
    why = "none yet" if current is None else "it no longer fits"
    return [Change(f"created a self-signed certificate for {name} ({why})", True,
                   plan=f"create a self-signed certificate for {name} ({why})",
                   action=Run(make_self_signed(profile, name), "making a self-signed certificate"), notifies=reload)]


def renewal(facts: ProvisionFacts, profile: Profile) -> list[Change]:
    """acme: certbot's timer renews, and a deploy hook (nginx -t, then reload) loads the new certificate."""
    if profile.tls.mode != "acme":
        return []
    hook = managed_file(facts, "deploy_hook", render.certbot_deploy_hook(profile), "certbot deploy hook",
                              frozenset())
    timer = facts.tls.certbot_timer
    if timer.enabled == "enabled" and timer.running:
        return [hook, Change("certbot.timer is enabled (renews twice a day when due)")]
    return [hook, Change("enabled certbot.timer", True, plan="enable certbot.timer (renewal)",
                         action=Run(ENABLE_CERTBOT_TIMER, "enabling certbot.timer"))]


def obtain(facts: ProvisionFacts, profile: Profile, eab: Eab | None) -> list[Change]:
    """acme, no usable certificate yet: the last step of the HTTP pass asks the CA for one."""
    if profile.tls.mode != "acme" or ready(facts, profile):
        return []
    name, directory = profile.effective_server_name, profile.tls.acme.directory
    return [Change(f"obtained a certificate for {name} from {directory}", True,
                   plan=f"obtain a certificate for {name} from {directory} (http-01 through this nginx site)",
                   action=ObtainCertificate(profile, name, force=facts.tls.cert_pem is not None, eab=eab))]
