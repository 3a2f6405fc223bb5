"""Benchmark: what serves Label Studio. The same load (bench.load: 16 official-SDK clients saving
annotations for 60 s through nginx) against, on the same VM and the same data:

  runserver + rollback journal   `label-studio start` on SQLite as Label Studio leaves it (the baseline:
                                 this toolkit before, the seed guide)
  runserver + WAL                the dev server alone on a WAL database (where the gain comes from)
  uwsgi (HumanSignal)            HumanSignal's deploy/uwsgi.ini settings (2 processes per core, harakiri,
                                 max-requests, reload-on-rss, lazy-apps, thunder-lock), WAL database
  gunicorn + WAL (toolkit)       what `fab provision` runs now, and the same under systemd MemoryMax=2G

and on a PostgreSQL VM: runserver as before (TLS over loopback, libpq's default) and without TLS vs
gunicorn (no TLS over loopback, as provision sets it). Then the total memory of the app server, and a first
page load of /projects/ in headless Chromium (cold cache) behind runserver and behind gunicorn + nginx.

    python -m bench.app_server [--seconds 60] [--clients 16] [--no-postgresql] [--no-browser]

Every alternative server runs as the service user in a transient systemd unit with the service's
environment, on 127.0.0.1:8080 behind the same nginx. Needs a Docker engine (like the integration tests).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from bench.load import LoadResult, run_load  # noqa: E402
from dev.lsclient import LabelStudio, wait_for_health  # noqa: E402
from dev.testvm.image import NOPASSWD_USER, build_image  # noqa: E402
from dev.testvm.machine import make_key, start_vm  # noqa: E402

ADMIN, PASSWORD = "admin@example.com", "bench-password-1"
DB = "/var/lib/label-studio/label_studio.sqlite3"
ENV_FILES = "-p EnvironmentFile=/opt/label-studio/label-studio.env"
PG_ENV = " -p EnvironmentFile=/opt/label-studio/label-studio-database.env"
PYUWSGI = "pyuwsgi==2.0.30.post1"
LABEL_CONFIG = ('<View><Text name="text" value="$text"/><Choices name="label" toName="text">'
                '<Choice value="pos"/><Choice value="neg"/></Choices></View>')


class Bench:
    def __init__(self, work: Path, name: str, extra_yaml: str = ""):
        self.home = work / name
        self.home.mkdir()
        self.vm = start_vm(build_image("bookworm"), make_key(self.home))
        (self.home / "ssh_config").write_text(self.vm.ssh_config("vm", NOPASSWD_USER))
        self.url = f"http://127.0.0.1:{self.vm.http_port}"
        profile = self.home / "vm.yaml"
        profile.write_text(f"public_url: {self.url}\nlabel_studio:\n  admin_email: {ADMIN}\n{extra_yaml}")
        self.env = dict(os.environ, HOME=str(self.home), LSVM_CONFIG=str(profile), LABEL_STUDIO_PASSWORD=PASSWORD)
        subprocess.run([sys.executable, "-m", "fabric", "-S", str(self.home / "ssh_config"), "-H", "vm", "provision"],
                       cwd=PROJECT_ROOT, env=self.env, check=True, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        self.pg = "postgresql" in extra_yaml
        session = LabelStudio(self.url)
        assert session.login(ADMIN, PASSWORD)
        self.token = session.post_json("/api/token/", {}).json()["token"]
        from label_studio_sdk import LabelStudio as SDK
        sdk = SDK(base_url=self.url, api_key=self.token)
        self.project = sdk.projects.create(title="Load", label_config=LABEL_CONFIG).id
        sdk.projects.import_tasks(id=self.project, request=[{"text": f"load task {i}"} for i in range(500)])

    def sh(self, command: str, timeout: float = 600) -> str:
        return self.vm.exec(command, timeout=timeout).stdout.decode()

    def site_packages(self) -> str:
        return self.sh("ls -d /opt/label-studio/current/lib/python3*/site-packages").strip()

    def stop_all(self) -> None:
        self.sh("systemctl stop label-studio; systemctl stop lsvm-bench 2>/dev/null; "
                "systemctl reset-failed lsvm-bench 2>/dev/null; true")

    def journal_mode(self, mode: str) -> None:
        self.sh(f"runuser -u labelstudio -- sqlite3 -init /dev/null {DB} 'PRAGMA journal_mode={mode}'")

    def transient(self, command: str) -> None:
        """`command` as the service user with the service's environment, in unit lsvm-bench."""
        env = ENV_FILES + (PG_ENV if self.pg else "")
        self.sh(f"systemd-run --unit=lsvm-bench --uid=labelstudio --gid=labelstudio {env} "
                "-p WorkingDirectory=/var/lib/label-studio -E HOME=/var/lib/label-studio "
                "-E DJANGO_SETTINGS_MODULE=core.settings.label_studio " + command)

    def runserver(self, sslmode: str | None = None) -> None:
        env = f"/usr/bin/env PGSSLMODE={sslmode} " if sslmode else ""   # over the env file's own value
        self.transient(env + "/opt/label-studio/current/bin/label-studio start --data-dir /var/lib/label-studio "
                       "--internal-host 127.0.0.1 --port 8080 --no-browser")

    def uwsgi(self) -> None:
        self.sh(f"/opt/label-studio/current/bin/python -m pip install -q --disable-pip-version-check "
                f"--root-user-action=ignore {PYUWSGI}")
        cores = int(self.sh("nproc").strip())
        self.transient(
            f"/opt/label-studio/current/bin/uwsgi --chdir {self.site_packages()}/label_studio "
            "--http 127.0.0.1:8080 --module core.wsgi:application --master --single-interpreter "
            f"--processes {2 * cores} --threads 1 --vacuum --die-on-term --buffer-size 65535 --http-timeout 300 "
            "--need-app --ignore-sigpipe --ignore-write-errors --disable-write-exception --harakiri 120 "
            "--post-buffering 4096 --disable-logging --log-5xx --enable-threads --thunder-lock --lazy-apps "
            "--max-requests 5000 --reload-on-rss 2048 --worker-reload-mercy 300")

    def gunicorn(self, memory_max: str | None = None) -> None:
        if memory_max:
            self.sh(f"systemctl set-property --runtime label-studio MemoryMax={memory_max}")
        self.sh("systemctl start label-studio")

    def app_server_memory(self) -> str:
        rss = self.sh("ps -eo rss=,args= | awk '/bin\\/gunicorn --config/ && !/awk/ {s += $1; n += 1} "
                      "END {print n, s}'").split()
        return f"{rss[0]} processes, {int(rss[1]) / 1024:.0f} MB RSS in all"

    def load(self, clients: int, seconds: float) -> LoadResult:
        assert wait_for_health(self.url, timeout=300) == {"status": "UP"}
        return run_load(self.url, self.token, self.project, clients=clients, seconds=seconds, max_requests=5000,
                        timeout=120)


def first_page_load(bench: Bench, work: Path) -> float:
    """Seconds from opening /projects/ (logged in, browser cache emptied) until the project list shows."""
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    def shows_the_project(driver) -> bool:  # read by a script: the page may be replaced meanwhile
        return "Load" in (driver.execute_script("return document.body ? document.body.innerText : ''") or "")

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    profile = Path(tempfile.mkdtemp(dir=work, prefix="chromium-"))
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900",
                f"--user-data-dir={profile}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(f"{bench.url}/user/login/")
        WebDriverWait(driver, 120).until(ec.presence_of_element_located((By.NAME, "email")))
        driver.find_element(By.NAME, "email").send_keys(ADMIN)
        driver.find_element(By.NAME, "password").send_keys(PASSWORD)
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        WebDriverWait(driver, 120).until(shows_the_project)
        driver.get("about:blank")
        driver.execute_cdp_cmd("Network.clearBrowserCache", {})
        start = time.monotonic()
        driver.get(f"{bench.url}/projects/")
        WebDriverWait(driver, 120).until(shows_the_project)
        return time.monotonic() - start
    finally:
        driver.quit()


def line(name: str, result: LoadResult, base: LoadResult | None = None) -> str:
    ratio = ""
    if base is not None and base.ok:
        p95 = result.percentile(0.95) / base.percentile(0.95) if base.percentile(0.95) else float("nan")
        ratio = f"  | {result.ok / base.ok:4.1f}x saved, p95 {p95:4.2f}x"
    return f"{name:34} {result.summary()}{ratio}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.app_server", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--no-postgresql", action="store_true")
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="lsvm-bench-app-server-"))
    report: list[str] = []
    benches: list[Bench] = []
    try:
        print("provisioning a SQLite VM ...", file=sys.stderr, flush=True)
        b = Bench(work, "sqlite")
        benches.append(b)
        results = {}
        for name, start, mode in (("runserver + rollback journal", b.runserver, "DELETE"),
                                  ("runserver + WAL", b.runserver, "WAL"),
                                  ("uwsgi (HumanSignal's settings)", b.uwsgi, "WAL"),
                                  ("gunicorn + WAL (toolkit)", b.gunicorn, None)):
            print(f"  {name} ...", file=sys.stderr, flush=True)
            b.stop_all()
            if mode:
                b.journal_mode(mode)
            start()
            results[name] = b.load(args.clients, args.seconds)
            print(f"    {results[name].summary()}", file=sys.stderr, flush=True)
            if name.startswith("gunicorn"):
                memory = b.app_server_memory()
            if name.startswith("runserver + rollback") and not args.no_browser:
                old_page = first_page_load(b, work)
        if not args.no_browser:
            new_page = first_page_load(b, work)
        b.stop_all()
        b.gunicorn(memory_max="2G")
        limited = b.load(args.clients, args.seconds)
        limited_memory = b.app_server_memory()
        base = results["runserver + rollback journal"]
        report.append(f"== SQLite: {args.clients} SDK clients for {args.seconds:.0f} s, same VM, same data "
                      "(ratios against runserver + rollback journal) ==")
        report += [line(name, result, base) for name, result in results.items()]
        report.append(line("gunicorn + WAL, MemoryMax=2G", limited, base))
        uw = results["uwsgi (HumanSignal's settings)"]
        report.append(f"gunicorn vs HumanSignal's uwsgi: {results['gunicorn + WAL (toolkit)'].ok / uw.ok:.2f}x saved")
        report.append(f"app server memory after the load: {memory}; under MemoryMax=2G: {limited_memory}")
        if not args.no_browser:
            report.append(f"first /projects/ load in Chromium (cold cache): runserver {old_page:.2f} s, "
                          f"gunicorn + nginx static {new_page:.2f} s ({new_page / old_page:.2f}x)")
        if not args.no_postgresql:
            print("provisioning a PostgreSQL VM ...", file=sys.stderr, flush=True)
            p = Bench(work, "postgresql", "database:\n  engine: postgresql\n")
            benches.append(p)
            pg = {}
            # The baseline as the toolkit ran it before: libpq's default (prefer: TLS over loopback); then
            # runserver without TLS, to show what the app server itself adds.
            for name, start in (("runserver (PostgreSQL), before", lambda: p.runserver("prefer")),
                                ("runserver (PostgreSQL), no TLS", lambda: p.runserver("disable")),
                                ("gunicorn (PostgreSQL, toolkit)", p.gunicorn)):
                print(f"  {name} ...", file=sys.stderr, flush=True)
                p.stop_all()
                start()
                pg[name] = p.load(args.clients, args.seconds)
            report.append("== PostgreSQL (ratios against runserver) ==")
            base = pg["runserver (PostgreSQL), before"]
            report += [line(name, result, base) for name, result in pg.items()]
    finally:
        for bench in benches:
            bench.vm.stop()
    print()
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
