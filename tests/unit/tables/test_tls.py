"""HTTPS, the pure part: the tls profile section, certificate checks against a CA made here, EAB from
the environment, certbot's failures in one line, and the TLS steps of the provision plan."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from tasks.core import render
from tasks.core.commands.service import UnitState
from tasks.core.errors import ProfileError, UsageError
from tasks.core.profile import parse_profile
from tasks.core.provision import steps, tls
from tasks.core.provision import tls_steps as steps_tls
from tasks.core.provision.facts import TlsFacts
from tasks.core.provision.plan import AdminRequest, InstallTlsFiles, NginxSite, ObtainCertificate, Run
from tasks.service import certificate_row
from tests.tlsca import TestCA
from tests.unit.samples import PROFILE

NAME = "labels.example.org"
ADMIN = AdminRequest("admin@example.com")


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA.create()


def profile(mode: str, **tls_keys) -> object:
    extra = "".join(f"  {key}: {value}\n" for key, value in tls_keys.items())
    return dataclasses.replace(parse_profile(f"server_name: {NAME}\ntls:\n  mode: {mode}\n{extra}", host="vm"),
                               address="127.0.0.1")


# ------------------------------------------------------------------------------------------------
# Profile


def test_mode_off_is_the_default_and_yaml_off_means_the_mode():
    assert parse_profile("").tls.mode == "off"
    assert parse_profile("tls:\n  mode: off\n").tls.mode == "off"
    assert not parse_profile("tls:\n  mode: off\n").tls.enabled


@pytest.mark.parametrize("text, problem", [
    ("tls:\n  mode: on\n", "'tls.mode' must be one of: off, acme, files, self-signed"),
    ("tls:\n  mode: acme\n  acme:\n    directory: http://ca.example/dir\n", "must be an https:// URL"),
    ("tls:\n  acme:\n    email: nobody\n", "'tls.acme.email' must be an email address"),
    ("tls:\n  acme:\n    eab_hmac_key: x\n", "unknown key 'tls.acme.eab_hmac_key'"),
    ("tls:\n  hsts: 1\n", "'tls.hsts' must be true or false"),
])
def test_bad_tls_keys_are_one_line_errors(text, problem):
    with pytest.raises(ProfileError, match=problem.replace(".", r"\.").replace("(", r"\(")):
        parse_profile(text, source="p.yaml")


def test_the_public_url_turns_https_with_tls():
    assert profile("self-signed").url == f"https://{NAME}"
    assert profile("self-signed").origin == f"https://{NAME}"
    assert profile("off").url == f"http://{NAME}"


@pytest.mark.parametrize("text, problem", [
    ("tls:\n  mode: acme\n", "needs server_name"),
    ("server_name: 10.1.2.3\ntls:\n  mode: acme\n", "not an IP address"),
    (f"server_name: {NAME}\ntls:\n  mode: files\n", "needs tls.files.certificate and tls.files.key"),
    (f"server_name: {NAME}\npublic_url: http://{NAME}\ntls:\n  mode: self-signed\n", "must start with https://"),
])
def test_what_a_mode_needs_from_the_profile(text, problem):
    with pytest.raises(ProfileError, match=problem):
        tls.check_profile(parse_profile(text))


def test_self_signed_works_with_an_ip_or_no_server_name():
    tls.check_profile(parse_profile("server_name: 10.1.2.3\ntls:\n  mode: self-signed\n"))
    tls.check_profile(parse_profile("tls:\n  mode: self-signed\n"))


# ------------------------------------------------------------------------------------------------
# Certificates


def test_a_good_pair_is_accepted_with_its_chain(ca):
    leaf = ca.leaf(NAME, ocsp_url="http://ocsp.example.org/")
    pair = tls.check_pair(ca.chain_pem(leaf), leaf.key_pem, NAME)
    assert pair.info.names == (NAME,) and pair.info.ocsp and not pair.info.self_signed
    assert pair.info.issuer == "lsvm test intermediate (lsvm tests)"
    assert pair.chain == ca.intermediate.cert_pem        # what the health check trusts
    assert tls.parse_chain(pair.fullchain)[0] == leaf.cert
    assert "PRIVATE" not in repr(pair)


@pytest.mark.parametrize("case, problem", [
    ("other key", "key does not belong to cert"),
    ("expired", "cert expired on"),
    ("wrong name", f"cert is for other.example.org, not for server_name {NAME}"),
    ("not yet valid", None),
    ("no certificate", "cert: no PEM certificate in it"),
    ("not a key", "key: not a PEM private key"),
    ("reversed chain", "the chain is out of order"),
])
def test_a_bad_pair_is_refused_in_one_line(ca, case, problem):
    leaf = ca.leaf(NAME)
    chain, key = ca.chain_pem(leaf), leaf.key_pem
    now = None
    if case == "other key":
        key = ca.leaf(NAME).key_pem
    elif case == "expired":
        old = ca.leaf(NAME, expired=True)
        chain, key = ca.chain_pem(old), old.key_pem
    elif case == "wrong name":
        other = ca.leaf("other.example.org")
        chain, key = ca.chain_pem(other), other.key_pem
    elif case == "not yet valid":
        now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=2)
        problem = "cert is not valid before"
    elif case == "no certificate":
        chain = b"hello"
    elif case == "not a key":
        key = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    elif case == "reversed chain":
        chain = leaf.cert_pem + ca.root.cert_pem + ca.intermediate.cert_pem
    with pytest.raises(ProfileError) as err:
        tls.check_pair(chain, key, NAME, cert_source="cert", key_source="key", now=now)
    message = str(err.value)
    assert "\n" not in message
    assert problem in message


@pytest.mark.parametrize("pattern, name, matches", [
    (NAME, NAME, True), (NAME.upper(), NAME, True), (f"{NAME}.", NAME, True),
    ("*.example.org", NAME, True), ("*.example.org", "a.b.example.org", False),
    ("*.example.org", "example.org", False), ("10.0.0.1", "10.0.0.1", True), ("*.0.0.1", "10.0.0.1", False),
])
def test_names_match_like_browsers_match_them(pattern, name, matches):
    assert tls.name_matches(pattern, name) is matches


def test_expiry_warning_under_14_days(ca):
    info = tls.cert_info(ca.leaf(NAME, days=10).cert)
    assert tls.expiry_warning(info).startswith("the certificate expires in 9 day")
    assert tls.expiry_warning(tls.cert_info(ca.leaf(NAME, days=60).cert)) is None
    assert "expired" in tls.expiry_warning(tls.cert_info(ca.leaf(NAME, expired=True).cert))


def test_status_row_names_issuer_names_and_days(ca):
    pem = ca.chain_pem(ca.leaf(NAME, days=30)).decode()
    key, value = certificate_row("acme", pem)
    assert key == "https"
    assert value.startswith(f"acme: {NAME}, issued by lsvm test intermediate (lsvm tests), 29 days left")
    assert certificate_row("off", pem) is None
    assert "no certificate on the server yet" in certificate_row("self-signed", None)[1]


# ------------------------------------------------------------------------------------------------
# ACME


def test_eab_comes_only_from_the_environment_and_in_pairs():
    assert tls.eab_from_env({}) is None
    eab = tls.eab_from_env({tls.EAB_KID_ENV: "kid-1", tls.EAB_HMAC_ENV: "c2VjcmV0"})
    assert eab.kid == "kid-1" and "c2VjcmV0" not in repr(eab)
    assert tls.certbot_ini(eab) == b"eab-kid = kid-1\neab-hmac-key = c2VjcmV0\n"
    with pytest.raises(UsageError, match="set both"):
        tls.eab_from_env({tls.EAB_KID_ENV: "kid-1"})


def test_the_eab_key_never_reaches_argv():
    from pathlib import PurePosixPath

    from tasks.core.commands.tls import certbot_certonly
    script = certbot_certonly(profile("acme"), NAME, config=PurePosixPath("/tmp/x/secret"), force=False)
    assert "--config /tmp/x/secret" in script and "eab" not in script
    assert "--webroot-path /var/www/label-studio-acme" in script and "--cert-name label-studio" in script
    assert "--register-unsafely-without-email" in script


@pytest.mark.parametrize("output, expected", [
    ("An unexpected error occurred:\nrequests.exceptions.ConnectionError: HTTPSConnectionPool(host='x', port=14000): "
     "Max retries exceeded with url: /dir (Caused by NewConnectionError('Failed to establish a new connection: "
     "[Errno 111] Connection refused'))",
     "cannot reach the ACME server https://ca.test/dir"),
    ("Certbot failed to authenticate some domains (authenticator: webroot). The Certificate Authority reported "
     "these problems:\n  Domain: labels.example.org\n  Type:   dns\n  Detail: DNS problem: NXDOMAIN looking up A "
     "for labels.example.org\n\nHint: ...", "DNS for labels.example.org does not point here: DNS problem: NXDOMAIN"),
    ("  Domain: labels.example.org\n  Type:   connection\n  Detail: 1.2.3.4: Fetching http://labels.example.org/"
     ".well-known/acme-challenge/x: Timeout during connect (likely firewall problem)",
     "could not reach http://labels.example.org/ on port 80"),
    ("An unexpected error occurred:\nError creating new order :: too many certificates (5) already issued for this "
     "exact set of domains in the last 168h0m0s", "rate limit (too many certificates (5) already issued"),
    ("An unexpected error occurred:\nThe server experienced an internal error :: externalAccountRequired",
     "requires External Account Binding: set LSVM_ACME_EAB_KID"),
    ("Saving debug log to /var/log/letsencrypt/letsencrypt.log\nsomething odd happened\n"
     "Ask for help or search for solutions at https://community.letsencrypt.org.",
     "certbot failed: something odd happened"),
])
def test_certbot_failures_become_one_line_reasons(output, expected):
    reason = tls.certbot_failure(output, "https://ca.test/dir", "labels.example.org")
    assert expected in reason and "\n" not in reason


def test_renewal_server_is_read_from_certbot_renewal_file():
    conf = "version = 2.1.0\n[renewalparams]\naccount = abc\nserver = https://ca.test/dir\nauthenticator = webroot\n"
    assert tls.renewal_server(conf) == "https://ca.test/dir"
    assert tls.renewal_server(None) is None


# ------------------------------------------------------------------------------------------------
# The plan


def with_tls(facts, **values):
    return dataclasses.replace(facts, tls=dataclasses.replace(facts.tls, **values))


def on_nginx(facts, version="1.22.1"):
    return with_tls(facts, nginx_version=version, resolvers=("10.0.0.2",),
                    certbot_timer=UnitState("loaded", "active", "waiting", "enabled"))


def acme_profile():
    return dataclasses.replace(PROFILE, server_name=NAME, public_url=None,
                               tls=dataclasses.replace(PROFILE.tls, mode="acme"))


def test_acme_without_a_certificate_keeps_http_and_ends_by_obtaining_one(provisioned):
    facts = on_nginx(provisioned)
    changes = steps.plan(facts, acme_profile(), ADMIN)
    what = [c.what for c in changes if c.changed]
    assert what[0] == "installed certbot"
    assert "ufw allows 443/tcp" in what
    assert what[-1] == f"obtained a certificate for {NAME} from https://acme-v02.api.letsencrypt.org/directory"
    assert isinstance(changes[-1].action, ObtainCertificate) and not changes[-1].action.force
    # Label Studio keeps its plain-HTTP URL and env file while there is no certificate.
    assert "env file is up to date" in [c.what for c in changes]
    site = next(c for c in changes if isinstance(c.action, NginxSite)).action.site.content
    assert "location ^~ /.well-known/acme-challenge/" in site and "listen 443" not in site
    assert steps_tls.serving(facts, acme_profile()).url == PROFILE.url


def test_acme_with_its_certificate_serves_https(provisioned, ca):
    leaf = ca.leaf(NAME, ocsp_url="http://ocsp.example.org/")
    facts = with_tls(on_nginx(provisioned, "1.26.3"), cert_pem=ca.chain_pem(leaf).decode(), key_meta="root:root:600",
                     renewal="server = https://acme-v02.api.letsencrypt.org/directory\n")
    changes = steps.plan(facts, acme_profile(), ADMIN)
    assert not any(isinstance(c.action, ObtainCertificate) for c in changes)
    assert f"certificate {NAME} from lsvm test intermediate (lsvm tests), 89 days left" in [c.what for c in changes]
    site = next(c for c in changes if isinstance(c.action, NginxSite)).action.site.content
    assert "listen 443 ssl;\n    http2 on;" in site                  # nginx >= 1.25.1
    assert "ssl_stapling on;" in site and "resolver 10.0.0.2 valid=300s;" in site
    assert "ssl_certificate /etc/letsencrypt/live/label-studio/fullchain.pem;" in site
    assert f"return 301 https://{NAME}$request_uri;" in site and "acme-challenge" in site
    env = next(c for c in changes if c.what.endswith("label-studio.env")).diff
    assert f"+LABEL_STUDIO_HOST=https://{NAME}" in env and "+SESSION_COOKIE_SECURE=1" in env
    # Another CA in the profile than the lineage's: a new certificate, replacing the old one.
    moved = dataclasses.replace(acme_profile(), tls=dataclasses.replace(
        acme_profile().tls, acme=dataclasses.replace(acme_profile().tls.acme, directory="https://ca.test/dir")))
    assert isinstance(steps.plan(facts, moved, ADMIN)[-1].action, ObtainCertificate)
    assert steps.plan(facts, moved, ADMIN)[-1].action.force


def test_a_bare_host_turns_https_on_in_a_second_pass(bare):
    p = dataclasses.replace(acme_profile(), tls=dataclasses.replace(acme_profile().tls, mode="self-signed"))
    assert not steps_tls.ready(bare, p)                 # nginx is not there yet: no version for http2
    assert steps_tls.ready(steps_tls.assume_ready(bare), p)
    bare = dataclasses.replace(bare, installed_packages=bare.installed_packages - {"openssl"})
    changes = steps.plan(bare, p, ADMIN)
    assert not any("self-signed" in c.what for c in changes)
    assert "installed python3-venv, nginx, sqlite3, zstd, python3-xxhash, ufw, openssl" in [c.what for c in changes]


def test_files_mode_installs_the_pair_once(provisioned, ca):
    leaf = ca.leaf(NAME)
    pair = tls.check_pair(ca.chain_pem(leaf), leaf.key_pem, NAME)
    p = dataclasses.replace(acme_profile(), tls=dataclasses.replace(acme_profile().tls, mode="files"))
    facts = on_nginx(provisioned)
    changes = steps.plan(facts, p, ADMIN, tls_pair=pair)
    install = [c for c in changes if isinstance(c.action, InstallTlsFiles)]
    assert len(install) == 1 and "nginx-reload" in install[0].notifies
    assert "reloaded nginx" in [c.what for c in changes if c.changed]
    site = next(c for c in changes if isinstance(c.action, NginxSite)).action.site.content
    assert "ssl_stapling" not in site and "listen 443 ssl http2;" in site
    done = with_tls(facts, cert_pem=pair.fullchain.decode(), key_sha256=pair.key_sha256, key_meta="root:root:600")
    assert not any(isinstance(c.action, InstallTlsFiles) for c in steps.plan(done, p, ADMIN, tls_pair=pair))
    loose = with_tls(done, key_meta="root:root:644")    # the key must be root-only
    assert any(isinstance(c.action, InstallTlsFiles) for c in steps.plan(loose, p, ADMIN, tls_pair=pair))


def test_self_signed_is_made_on_the_server_when_missing_or_unfit(provisioned, ca):
    p = dataclasses.replace(acme_profile(), tls=dataclasses.replace(acme_profile().tls, mode="self-signed"))
    facts = on_nginx(provisioned)
    made = [c for c in steps.plan(facts, p, ADMIN) if c.what.startswith("created a self-signed")]
    assert len(made) == 1 and isinstance(made[0].action, Run) and "openssl req -x509" in made[0].action.script
    not_self_signed = with_tls(facts, cert_pem=ca.chain_pem(ca.leaf(NAME)).decode(), key_meta="root:root:600")
    assert [c.what for c in steps.plan(not_self_signed, p, ADMIN) if "self-signed" in c.what] == [
        f"created a self-signed certificate for {NAME} (it no longer fits)"]


def test_tls_off_plans_exactly_what_it_did_before(provisioned):
    assert [c.what for c in steps.plan(provisioned, PROFILE, ADMIN) if c.changed] == []
    assert render.nginx_site(PROFILE, ipv6=True).content == render.nginx_site(PROFILE, ipv6=True, tls=None).content


def test_the_renewal_steps_enable_the_timer_and_the_deploy_hook(provisioned):
    changes = steps_tls.renewal(provisioned, acme_profile())
    assert [c.what for c in changes] == [
        "created certbot deploy hook /etc/letsencrypt/renewal-hooks/deploy/label-studio-nginx", "enabled certbot.timer"]
    hook = changes[0].action.file
    assert hook.mode == "0755" and "nginx -t -q && systemctl reload nginx" in hook.content
    assert steps_tls.renewal(provisioned, PROFILE) == []


def test_tls_facts_are_parsed_from_the_probe():
    import base64

    from tasks.core.provision.facts import tls_facts
    b = {"tls": ["nginx_version=1.22.1", f"cert={base64.b64encode(b'PEM').decode()}", "key_sha256=ab",
                 "key_meta=root:root:600", "renewal=-", "resolvers=10.0.0.2 fd00::1 "],
         "certbot_timer": ["LoadState=loaded", "ActiveState=active", "UnitFileState=enabled"]}
    facts = tls_facts(b)
    assert facts == TlsFacts("1.22.1", "PEM", "ab", "root:root:600", None, ("10.0.0.2", "fd00::1"),
                             UnitState("loaded", "active", "", "enabled"))


# ------------------------------------------------------------------------------------------------
# The HTTPS health request (run on the server by tasks/core/onserver/instances.py)


@pytest.fixture(scope="module")
def https_server(ca, tmp_path_factory):
    """A local HTTPS server presenting leaf + intermediate for NAME, answering like /health."""
    import http.server
    import ssl
    import threading

    folder = tmp_path_factory.mktemp("https")
    leaf = ca.leaf(NAME)
    (folder / "chain.pem").write_bytes(ca.chain_pem(leaf))
    (folder / "key.pem").write_bytes(leaf.key_pem)
    (folder / "intermediate.pem").write_bytes(ca.intermediate.cert_pem)
    (folder / "other.pem").write_bytes(TestCA.create("other").intermediate.cert_pem)

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'{"status": "UP", "host": "%s"}' % self.headers["Host"].encode()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "chain.pem", folder / "key.pem")
    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], folder
    server.shutdown()


def test_the_https_health_request_checks_chain_and_name_like_a_browser(https_server):
    from tasks.core.onserver.instances import https_get
    port, folder = https_server
    url = f"https://127.0.0.1:{port}/health"
    answer = https_get(url, NAME, str(folder / "intermediate.pem"))   # the intermediate is enough
    assert answer.startswith("200 ") and f'"host": "{NAME}:{port}"' in answer
    wrong_name = https_get(url, "other.example.org", str(folder / "intermediate.pem"))
    assert wrong_name.startswith("0 SSLCertVerificationError") and "\n" not in wrong_name
    assert https_get(url, NAME, str(folder / "other.pem")).startswith("0 SSLCertVerificationError")
