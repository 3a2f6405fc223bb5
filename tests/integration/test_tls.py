"""HTTPS on the test VM, with no internet: a real ACME server (Debian's pebble, inside the VM, External
Account Binding required) validating http-01 by really fetching it through our nginx, certbot's renewal
and deploy hook, a real browser (Debian's chromium) trusting pebble's root, tls.files with a CA made
here, and self-signed.

One VM per Debian release for the whole module. Tests run in file order, but each one first puts the
VM in the TLS mode it needs (`TlsVM.use`), so any of them also runs alone (`pytest -k NAME`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import ssl
import subprocess
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dev.lsclient import LabelStudio
from dev.testvm import machine as testvm
from dev.testvm.image import build_tls_image
from dev.testvm.machine import remove_image_later
from tests.integration.support.fab import PROJECT_ROOT, Fab
from tests.integration.support.machines import ADMIN_EMAIL, ADMIN_PASSWORD, TEST_WORKERS, start_clone
from tests.tlsca import TestCA, cert_pem

NAME = "labels.test"
ACME_DIRECTORY = "https://localhost:14000/dir"
EAB_KID = "kid-1"
EAB_HMAC_KEY = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"  # pebble's example key
ARTIFACTS = Path(os.environ.get("LSVM_ARTIFACTS_DIR", PROJECT_ROOT / "artifacts"))
MANAGED = "/opt/label-studio/label-studio.env /etc/nginx/sites-available/label-studio"


def sha256_fingerprint(der: bytes) -> str:
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


@dataclass
class TlsVM:
    vm: testvm.TestVM
    home: Path
    suite: str
    ca: TestCA                      # signs pebble's own listener certificate and the tls.files pairs
    mode: str = ""                  # the TLS mode the VM was last provisioned with
    last: subprocess.CompletedProcess | None = None
    pebble_running: bool = False
    files: dict = field(default_factory=dict)

    @property
    def https_port(self) -> int:
        return self.vm.published_port(443)

    @property
    def https_url(self) -> str:
        return f"https://{NAME}:{self.https_port}"

    def fab(self, profile: Path | None = None) -> Fab:
        return Fab(self.vm, self.home, env={"LSVM_CONFIG": str(profile or self.home / "profile.yaml")})

    def profile(self, mode: str, *, extra: str = "", name: str = "profile.yaml") -> Path:
        url = f"http://{NAME}:{self.vm.http_port}" if mode == "off" else self.https_url
        tls = {
            "off": "",
            "acme": f"tls:\n  mode: acme\n  hsts: true\n  acme:\n    directory: {ACME_DIRECTORY}\n"
                    "    email: ops@example.org\n",
            "files": "tls:\n  mode: files\n  files:\n"
                     f"    certificate: {self.files.get('certificate')}\n    key: {self.files.get('key')}\n",
            "self-signed": "tls:\n  mode: self-signed\n",
        }[mode]
        path = self.home / name
        path.write_text(f"server_name: {NAME}\npublic_url: {url}\nlabel_studio:\n  admin_email: {ADMIN_EMAIL}\n{TEST_WORKERS}"
                        f"{tls}{extra}")
        return path

    def provision(self, mode: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        if mode == "acme":
            self.start_pebble()
        result = self.fab(self.profile(mode))("provision", *args, env={
            "LABEL_STUDIO_PASSWORD": ADMIN_PASSWORD, "LSVM_ACME_EAB_KID": EAB_KID,
            "LSVM_ACME_EAB_HMAC_KEY": EAB_HMAC_KEY, **(env or {})})
        if "--dry-run" not in args:
            self.last = result
            if result.returncode == 0:
                self.mode = mode
        return result

    def use(self, mode: str) -> None:
        """Provision with `mode` unless that is what the VM serves already."""
        if self.mode != mode:
            result = self.provision(mode)
            assert result.returncode == 0, result.stdout + result.stderr

    def exec(self, command: str, **kwargs) -> str:
        return self.vm.exec(command, **kwargs).stdout.decode()

    # -- pebble, inside the VM -------------------------------------------------------------------

    def setup_pebble(self) -> None:
        """pebble listens on the VM's loopback with a certificate from our CA (which the VM trusts:
        certbot must verify the directory), and validates http-01 on port 80, the name resolving to
        the VM itself (/etc/hosts)."""
        listener = self.ca.leaf("localhost", "127.0.0.1")
        config = {"pebble": {
            "listenAddress": "127.0.0.1:14000", "managementListenAddress": "127.0.0.1:15000",
            "certificate": "/etc/pebble/cert.pem", "privateKey": "/etc/pebble/key.pem",
            "httpPort": 80, "tlsPort": 5001, "ocspResponderURL": "",
            "externalAccountBindingRequired": True, "externalAccountMACKeys": {EAB_KID: EAB_HMAC_KEY},
        }}
        self.vm.exec("install -d -m 0755 /etc/pebble")
        self.vm.exec("cat > /etc/pebble/cert.pem", input=self.ca.chain_pem(listener))
        self.vm.exec("umask 077; cat > /etc/pebble/key.pem", input=listener.key_pem)
        self.vm.exec("cat > /etc/pebble/config.json", input=json.dumps(config).encode())
        self.vm.exec("cat > /usr/local/share/ca-certificates/lsvm-test-ca.crt", input=self.ca.root_pem)
        self.vm.exec("update-ca-certificates >/dev/null 2>&1")
        self.vm.exec(f"grep -q ' {NAME}$' /etc/hosts || echo '127.0.0.1 {NAME}' >> /etc/hosts")

    def start_pebble(self) -> None:
        if self.pebble_running:
            return
        self.vm.exec("systemctl reset-failed pebble.service 2>/dev/null; "
                     "systemd-run --unit=pebble --setenv=PEBBLE_VA_NOSLEEP=1 --setenv=PEBBLE_WFE_NONCEREJECT=0 "
                     "/usr/bin/pebble -config /etc/pebble/config.json")
        poll = ("import ssl,time,urllib.request as u\n"
                "for i in range(120):\n"
                " try:u.urlopen('https://localhost:14000/dir',timeout=2);break\n"
                " except Exception:time.sleep(0.25)\n"
                "else:raise SystemExit('pebble did not answer')\n")
        self.vm.exec(f"python3 -c \"{poll}\"")
        self.pebble_running = True

    def pebble_root(self) -> bytes:
        """The root pebble made at start (it signs the certificates it issues)."""
        code = "import ssl,urllib.request as u;print(u.urlopen('https://localhost:15000/roots/0').read().decode())"
        return self.vm.exec(f"python3 -c \"{code}\"").stdout

    # -- what the outside sees -------------------------------------------------------------------

    def served_certificate(self) -> bytes:
        """DER of the certificate nginx presents for NAME (SNI) on the published HTTPS port."""
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", self.https_port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname=NAME) as tls:
                return tls.getpeercert(binary_form=True)

    def https_client(self, trust: bytes) -> LabelStudio:
        """A client that opens https://labels.test:<port> (resolved to 127.0.0.1) and checks the chain."""
        import http.client
        import urllib.request
        context = ssl.create_default_context(cadata=trust.decode())
        port = self.https_port

        class ToVM(http.client.HTTPSConnection):
            def connect(self):
                raw = socket.create_connection(("127.0.0.1", port), timeout=30)
                self.sock = context.wrap_socket(raw, server_hostname=NAME)

        class Handler(urllib.request.HTTPSHandler):
            def https_open(self, req):
                return self.do_open(ToVM, req)

        client = LabelStudio(self.https_url)
        client.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(client.jar),
                                                    Handler(context=context))
        return client


@pytest.fixture(scope="module")
def tls_vm(provisioned, suite: str, tmp_path_factory):
    """A provisioned VM (started from the one committed right after `provisioned`'s fresh provision, with
    Debian's pebble added) provisioned again with this module's profile: plain HTTP, as before TLS existed."""
    assert provisioned.image, provisioned.first_run.stdout + provisioned.first_run.stderr
    home = tmp_path_factory.mktemp(f"home-tls-{suite}")
    image = build_tls_image(suite, base=provisioned.image)
    remove_image_later(image)
    vm = start_clone(image, home, extra_ports=(443,))
    machine = TlsVM(vm, home, suite, TestCA.create())
    try:
        machine.setup_pebble()
        machine.use("off")
        yield machine
    finally:
        vm.stop()


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def http_get(machine: TlsVM, path: str = "/") -> tuple[int, dict]:
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", machine.vm.http_port, timeout=30)
    conn.request("GET", path, headers={"Host": NAME})
    resp = conn.getresponse()
    resp.read()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}


# ------------------------------------------------------------------------------------------------


def test_dry_run_shows_what_turning_https_on_would_change(tls_vm):
    tls_vm.use("off")
    before = tls_vm.exec(f"sha256sum {MANAGED}; ufw status")
    result = tls_vm.provision("acme", "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "would install certbot" in out
    assert f"would obtain a certificate for {NAME} from {ACME_DIRECTORY}" in out
    assert "then a second pass switches to HTTPS" in out
    assert f"+LABEL_STUDIO_HOST={tls_vm.https_url}" in out
    assert "+SESSION_COOKIE_SECURE=1" in out
    assert "+    listen 443 ssl" in out
    assert "would allow 443/tcp in ufw" in out
    assert tls_vm.exec(f"sha256sum {MANAGED}; ufw status") == before
    assert not tls_vm.exec("dpkg -l certbot 2>/dev/null | grep ^ii || true")


@pytest.mark.one_release("trixie")  # release-independent: one release (CI time)
def test_failed_issuance_keeps_serving_http_and_says_why_in_one_line(tls_vm):
    if tls_vm.mode not in ("", "off"):
        pytest.skip("needs the VM before its first certificate (runs first in the module, or alone)")
    tls_vm.vm.exec("systemctl stop pebble.service 2>/dev/null || true")
    tls_vm.pebble_running = True  # keep provision from starting it: the CA is down
    try:
        result = tls_vm.fab(tls_vm.profile("acme"))("provision", env={
            "LSVM_ACME_EAB_KID": EAB_KID, "LSVM_ACME_EAB_HMAC_KEY": EAB_HMAC_KEY})
    finally:
        tls_vm.pebble_running = False
    assert result.returncode == 5, result.stdout + result.stderr
    line = one_error_line(result)
    assert f"cannot reach the ACME server {ACME_DIRECTORY}" in line and "keeps serving over HTTP" in line
    assert "Traceback" not in result.stderr
    # Still the plain-HTTP site, answering through nginx, and Label Studio still told http://.
    status, headers = http_get(tls_vm, "/health")
    assert status == 200
    env = tls_vm.exec("cat /opt/label-studio/label-studio.env")
    assert f"LABEL_STUDIO_HOST=http://{NAME}:{tls_vm.vm.http_port}" in env
    assert "SESSION_COOKIE_SECURE" not in env
    assert "listen 443" not in tls_vm.exec("cat /etc/nginx/sites-available/label-studio")


def test_acme_certificate_from_pebble_through_our_nginx(tls_vm):
    tls_vm.use("acme")
    out = tls_vm.last.stdout
    assert f"obtained a certificate for {NAME} from {ACME_DIRECTORY}" in out, out
    assert "switching to HTTPS" in out
    # pebble really fetched the http-01 answer through our nginx (its access log), with validation on.
    access = tls_vm.exec("cat /var/log/nginx/access.log")
    assert re.search(r'"GET /\.well-known/acme-challenge/[A-Za-z0-9_-]+ HTTP/1\.1" 200 ', access), access
    assert "PEBBLE_VA_ALWAYS_VALID" not in tls_vm.exec("systemctl show -p Environment pebble.service")
    # nginx serves the certificate pebble issued, chaining to pebble's root.
    root = tls_vm.pebble_root()
    client = tls_vm.https_client(root)
    resp = client.get("/health")
    assert resp.status == 200 and json.loads(resp.body) == {"status": "UP"}
    served = tls_vm.served_certificate()
    live = tls_vm.exec("cat /etc/letsencrypt/live/label-studio/cert.pem")
    assert served == ssl.PEM_cert_to_DER_cert(live)
    issuer = tls_vm.exec("openssl x509 -noout -issuer -in /etc/letsencrypt/live/label-studio/cert.pem")
    assert "Pebble" in issuer
    # TLS 1.2 and 1.3 (and nothing older, says the site), HTTP/2 offered over both.
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in tls_vm.exec("cat /etc/nginx/sites-available/label-studio")
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        context = ssl.create_default_context(cadata=root.decode())
        context.minimum_version = context.maximum_version = version
        context.set_alpn_protocols(["h2", "http/1.1"])
        with socket.create_connection(("127.0.0.1", tls_vm.https_port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname=NAME) as tls:
                assert tls.version() == version.name.replace("v1_", "v1.")
                assert tls.selected_alpn_protocol() == "h2"
    # Port 80: 301 to the public https URL, except the ACME challenges.
    status, headers = http_get(tls_vm, "/projects/?x=1")
    assert status == 301 and headers["location"] == f"{tls_vm.https_url}/projects/?x=1"
    status, _ = http_get(tls_vm, "/.well-known/acme-challenge/missing")
    assert status == 404
    # HSTS (the profile asks for it), Label Studio told it is on https, ufw open on 443.
    import urllib.request
    assert "max-age=63072000" in client.opener.open(urllib.request.Request(
        f"{tls_vm.https_url}/health")).headers["Strict-Transport-Security"]
    env = tls_vm.exec("cat /opt/label-studio/label-studio.env")
    for line in (f"LABEL_STUDIO_HOST={tls_vm.https_url}", f"CSRF_TRUSTED_ORIGINS={tls_vm.https_url}",
                 "SESSION_COOKIE_SECURE=1", "CSRF_COOKIE_SECURE=1"):
        assert line in env.splitlines()
    assert "443/tcp" in tls_vm.exec("ufw status")
    assert "SHA-256 fingerprint of the certificate" in out
    # A script logs in over https with the real chain checked.
    assert client.login(ADMIN_EMAIL, ADMIN_PASSWORD)


def test_a_second_acme_provision_changes_nothing(tls_vm):
    tls_vm.use("acme")
    before = tls_vm.exec(f"sha256sum {MANAGED} /etc/letsencrypt/live/label-studio/cert.pem; "
                         "systemctl show -p MainPID label-studio.service nginx.service")
    result = tls_vm.provision("acme")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "~ changed" not in result.stdout
    assert " 0 changed" in result.stdout or "\n0 changed" in result.stdout
    assert "switching to HTTPS" not in result.stdout
    assert tls_vm.exec(f"sha256sum {MANAGED} /etc/letsencrypt/live/label-studio/cert.pem; "
                       "systemctl show -p MainPID label-studio.service nginx.service") == before


def test_renewal_dry_run_passes_and_the_deploy_hook_reloads_nginx(tls_vm):
    tls_vm.use("acme")
    assert tls_vm.exec("systemctl is-enabled certbot.timer").strip() == "enabled"
    assert tls_vm.exec("systemctl is-active certbot.timer").strip() == "active"
    # certbot's --dry-run goes to Let's Encrypt's staging CA unless told the server (README says so).
    dry = tls_vm.vm.exec(f"certbot renew --dry-run --no-random-sleep-on-renew --cert-name label-studio --server {ACME_DIRECTORY} 2>&1",
                         check=False, timeout=300)
    assert dry.returncode == 0, dry.stdout.decode()
    assert "Congratulations, all simulated renewals succeeded" in dry.stdout.decode()
    # A real renewal (forced: the certificate is not due) runs the deploy hook: nginx -t, then reload,
    # after which nginx serves the new certificate.
    before = tls_vm.served_certificate()
    renew = tls_vm.vm.exec("certbot renew --force-renewal --no-random-sleep-on-renew --cert-name label-studio 2>&1", check=False, timeout=300)
    assert renew.returncode == 0, renew.stdout.decode()
    hook = "/etc/letsencrypt/renewal-hooks/deploy/label-studio-nginx"
    assert hook in tls_vm.exec("cat /var/log/letsencrypt/letsencrypt.log")  # certbot logs the hook it ran
    live = ssl.PEM_cert_to_DER_cert(tls_vm.exec("cat /etc/letsencrypt/live/label-studio/cert.pem"))
    assert live != before
    assert tls_vm.served_certificate() == live


def test_a_browser_logs_in_over_https_with_secure_cookies(tls_vm, tmp_path):
    tls_vm.use("acme")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    # Chromium trusts pebble's root through its own NSS database (a home of the test's own).
    browser_home = tmp_path / "browser-home"
    nssdb = browser_home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    (tmp_path / "pebble-root.pem").write_bytes(tls_vm.pebble_root())
    subprocess.run(["certutil", "-d", f"sql:{nssdb}", "-N", "--empty-password"], check=True)
    subprocess.run(["certutil", "-d", f"sql:{nssdb}", "-A", "-t", "C,,", "-n", "pebble test root",
                    "-i", str(tmp_path / "pebble-root.pem")], check=True)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900",
                f"--user-data-dir={tmp_path / 'profile'}", f"--host-resolver-rules=MAP {NAME} 127.0.0.1"):
        options.add_argument(arg)
    service = Service("/usr/bin/chromedriver", env={**os.environ, "HOME": str(browser_home)})
    driver = webdriver.Chrome(service=service, options=options)
    title = f"made in the browser over https ({tls_vm.suite})"
    try:
        # Opening the projects page asks for a login, then lands there.
        driver.get(f"{tls_vm.https_url}/projects/")
        try:
            WebDriverWait(driver, 60).until(ec.presence_of_element_located((By.NAME, "email")))
        except TimeoutException:
            # Once (CI on a loaded machine) the first load showed no login form within 60 s. A person
            # reloads: so does the test, once, and says so in the warnings summary with what it saw.
            seen = f"{driver.current_url}: {driver.find_element(By.TAG_NAME, 'body').text[:500]!r}"
            driver.get(f"{tls_vm.https_url}/projects/")
            WebDriverWait(driver, 60).until(ec.presence_of_element_located((By.NAME, "email")))
            warnings.warn(f"the login form came only after a reload; the first load showed {seen}")
        assert driver.current_url.startswith(f"{tls_vm.https_url}/user/login/")
        assert driver.execute_script("return window.isSecureContext") is True
        driver.find_element(By.NAME, "email").send_keys(ADMIN_EMAIL)
        driver.find_element(By.NAME, "password").send_keys(ADMIN_PASSWORD)
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        WebDriverWait(driver, 60).until(lambda d: d.current_url.startswith(f"{tls_vm.https_url}/projects"))
        WebDriverWait(driver, 60).until(lambda d: "Create" in d.find_element(By.TAG_NAME, "body").text)
        cookies = {c["name"]: c for c in driver.get_cookies()}
        assert cookies["sessionid"]["secure"] is True
        assert cookies["csrftoken"]["secure"] is True
        # An API call from the page. Label Studio 1.23 skips CSRF checks on its API unless asked
        # (?enforce_csrf_checks=1): asked, it refuses a call without the token and accepts one with it,
        # which needs the https origin in CSRF_TRUSTED_ORIGINS (Django sees plain HTTP behind nginx).
        call = ("const [token, title, done] = arguments; const headers = {'Content-Type': 'application/json'};"
                "if (token) headers['X-CSRFToken'] = token;"
                "fetch('/api/projects?enforce_csrf_checks=1', {method: 'POST', headers, credentials: 'same-origin',"
                " body: JSON.stringify({title})})"
                ".then(r => r.text().then(t => done([r.status, t]))).catch(e => done([0, String(e)]));")
        status, body = driver.execute_async_script(call, None, title)
        assert status == 403 and "CSRF" in body, body[:300]
        status, body = driver.execute_async_script(call, cookies["csrftoken"]["value"], title)
        assert status == 201, body[:300]
        assert json.loads(body)["title"] == title
        # The projects page lists it; the screenshot is kept as the test's artifact (also when it does not).
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / f"tls-{tls_vm.suite}-projects.png"

        def diagnosis():
            listed = driver.execute_async_script(
                "const done = arguments[0]; fetch('/api/projects?page_size=100', {credentials: 'same-origin'})"
                ".then(r => r.text().then(t => done(r.status + ' ' + t))).catch(e => done(String(e)));")
            body = driver.find_element(By.TAG_NAME, "body").text
            journal = tls_vm.exec("journalctl -u label-studio --no-pager -n 30 -o cat || true")
            return (f"page at {driver.current_url}:\n{body[:1500]}\nGET /api/projects: {listed[:1500]}\n"
                    f"service journal:\n{journal}")

        def listed_within(seconds):
            try:
                WebDriverWait(driver, seconds).until(lambda d: title in d.find_element(By.TAG_NAME, "body").text)
                return True
            except TimeoutException:
                return False

        # Once (CI, both releases) the page never showed it in 60 s; it never did so here. A person would reload:
        # so does the test, once, and says so in the warnings summary with what the page and the API showed.
        driver.get(f"{tls_vm.https_url}/projects/")
        if not listed_within(30):
            first = diagnosis()
            driver.refresh()
            if not listed_within(30):
                driver.save_screenshot(str(shot))
                raise AssertionError(f"the projects page never listed {title!r}, reloaded or not (screenshot "
                                     f"{shot})\nfirst load: {first}\nafter a reload: {diagnosis()}")
            warnings.warn(f"the projects page listed {title!r} only after a reload; first load: {first}")
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
    finally:
        driver.quit()


@pytest.mark.one_release("bookworm")  # release-independent: one release (CI time)
def test_status_shows_issuer_names_and_days_left(tls_vm):
    tls_vm.use("acme")
    result = tls_vm.fab(tls_vm.profile("acme"))("status")
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("https"))
    assert f"acme: {NAME}, issued by Pebble Intermediate" in line and "days left" in line
    assert "health (via nginx, https)  UP" in result.stdout
    assert "expires in" not in result.stderr   # pebble's certificates last years, not days


@pytest.mark.one_release("bookworm")  # release-independent: one release (CI time)
def test_files_mode_refuses_a_bad_pair_before_touching_the_server(tls_vm, tmp_path):
    other_key = tls_vm.ca.leaf(NAME).key_pem
    good = tls_vm.ca.leaf(NAME)
    expired = tls_vm.ca.leaf(NAME, expired=True)
    wrong = tls_vm.ca.leaf("other.test")
    cases = {
        "mismatched key": (tls_vm.ca.chain_pem(good), other_key, "does not belong to"),
        "expired": (tls_vm.ca.chain_pem(expired), expired.key_pem, "expired on"),
        "wrong name": (tls_vm.ca.chain_pem(wrong), wrong.key_pem, f"is for other.test, not for server_name {NAME}"),
    }
    before = tls_vm.exec(f"sha256sum {MANAGED}; ls -la /etc/label-studio 2>&1 || true; last -w 2>/dev/null | wc -l")
    logins = tls_vm.exec("journalctl -u ssh --no-pager -o cat | grep -c 'Accepted publickey' || true")
    for label, (chain, key, expected) in cases.items():
        (tmp_path / "cert.pem").write_bytes(chain)
        (tmp_path / "key.pem").write_bytes(key)
        tls_vm.files = {"certificate": tmp_path / "cert.pem", "key": tmp_path / "key.pem"}
        result = tls_vm.fab(tls_vm.profile("files", name="bad.yaml"))("provision")
        assert result.returncode == 2, (label, result.stdout + result.stderr)
        assert expected in one_error_line(result), label
    # Nothing reached the server: no SSH login at all, nothing changed there.
    assert tls_vm.exec("journalctl -u ssh --no-pager -o cat | grep -c 'Accepted publickey' || true") == logins
    assert tls_vm.exec(f"sha256sum {MANAGED}; ls -la /etc/label-studio 2>&1 || true; last -w 2>/dev/null | wc -l") == before


@pytest.mark.one_release("bookworm")  # release-independent: one release (CI time)
def test_files_mode_serves_our_own_certificate(tls_vm, tmp_path):
    leaf = tls_vm.ca.leaf(NAME, "www.labels.test", ocsp_url="http://ocsp.labels.test/")
    (tmp_path / "chain.pem").write_bytes(tls_vm.ca.chain_pem(leaf))
    (tmp_path / "key.pem").write_bytes(leaf.key_pem)
    tls_vm.files = {"certificate": tmp_path / "chain.pem", "key": tmp_path / "key.pem"}
    result = tls_vm.provision("files")
    assert result.returncode == 0, result.stdout + result.stderr
    assert tls_vm.served_certificate() == ssl.PEM_cert_to_DER_cert(cert_pem(leaf.cert).decode())
    assert tls_vm.exec("stat -c '%U:%G %a' /etc/label-studio/tls/privkey.pem /etc/label-studio/tls").split("\n")[:2] == [
        "root:root 600", "root:root 700"]
    # The chain names an OCSP responder: stapling is configured (and nginx accepted it).
    site = tls_vm.exec("cat /etc/nginx/sites-available/label-studio")
    assert "ssl_stapling on;" in site and "ssl_certificate /etc/label-studio/tls/fullchain.pem;" in site
    client = tls_vm.https_client(tls_vm.ca.root_pem)
    assert client.get("/health").status == 200
    assert client.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    again = tls_vm.provision("files")
    assert again.returncode == 0 and "~ changed" not in again.stdout, again.stdout + again.stderr


@pytest.mark.one_release("trixie")  # release-independent: one release (CI time)
def test_self_signed_prints_the_fingerprint_nginx_serves(tls_vm):
    result = tls_vm.provision("self-signed")
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(line for line in result.stdout.splitlines() if "SHA-256 fingerprint of the self-signed" in line)
    printed = line.rsplit(" ", 1)[1]
    served = tls_vm.served_certificate()
    assert printed == sha256_fingerprint(served)
    assert tls_vm.exec("stat -c '%U:%G %a' /etc/label-studio/tls/privkey.pem").strip() == "root:root 600"
    # The health gate checked the chain it serves: a script trusting exactly this certificate logs in.
    client = tls_vm.https_client(ssl.DER_cert_to_PEM_cert(served).encode())
    assert client.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    again = tls_vm.provision("self-signed")
    assert again.returncode == 0 and "~ changed" not in again.stdout, again.stdout
    assert tls_vm.served_certificate() == served
