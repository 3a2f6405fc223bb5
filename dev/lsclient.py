"""A small Label Studio HTTP client (tests, benchmarks): session login, projects, imports. Standard library only."""

from __future__ import annotations

import http.cookiejar
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid


class Response:
    def __init__(self, status: int, body: bytes, url: str):
        self.status, self.body, self.url = status, body, url

    def json(self):
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


class LabelStudio:
    def __init__(self, base_url: str, timeout: float = 300):
        self.base = base_url.rstrip("/")
        parts = urllib.parse.urlsplit(self.base)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.timeout = timeout

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None) -> Response:
        headers = dict(headers or {})
        token = self.cookie("csrftoken")
        if token and method not in ("GET", "HEAD"):
            headers.setdefault("X-CSRFToken", token)
        if method not in ("GET", "HEAD") and self.origin.startswith("https:"):
            # Over HTTPS (which gunicorn tells Django from nginx's X-Forwarded-Proto) Django's CSRF check
            # wants the request's origin, as a browser sends it. Not over plain HTTP: behind a port the test
            # publishes, the origin's port is not the one nginx passes on in Host, and Django would refuse.
            headers.setdefault("Origin", self.origin)
            headers.setdefault("Referer", self.base + path)
        req = urllib.request.Request(self.base + path, data=body, method=method, headers=headers)
        try:
            with self.opener.open(req, timeout=self.timeout) as resp:
                return Response(resp.status, resp.read(), resp.url)
        except urllib.error.HTTPError as err:
            return Response(err.code, err.read(), err.url)

    def get(self, path: str) -> Response:
        return self.request("GET", path)

    def post_json(self, path: str, payload) -> Response:
        return self.request("POST", path, json.dumps(payload).encode(),
                            {"Content-Type": "application/json"})

    def cookie(self, name: str) -> str | None:
        return next((c.value for c in self.jar if c.name == name), None)

    def login(self, email: str, password: str) -> bool:
        self.get("/user/login/")
        form = urllib.parse.urlencode({"email": email, "password": password,
                                       "csrfmiddlewaretoken": self.cookie("csrftoken") or ""}).encode()
        resp = self.request("POST", "/user/login/", form,
                            {"Content-Type": "application/x-www-form-urlencoded"})
        return resp.status == 200 and "/user/login" not in resp.url and self.cookie("sessionid") is not None

    def signup(self, email: str, password: str) -> Response:
        self.get("/user/signup/")
        form = urllib.parse.urlencode({"email": email, "password": password,
                                       "csrfmiddlewaretoken": self.cookie("csrftoken") or ""}).encode()
        return self.request("POST", "/user/signup/", form,
                            {"Content-Type": "application/x-www-form-urlencoded"})

    def create_project(self, title: str) -> int:
        resp = self.post_json("/api/projects", {
            "title": title,
            "label_config": '<View><Text name="text" value="$text"/>'
                            '<Choices name="label" toName="text"><Choice value="a"/><Choice value="b"/>'
                            "</Choices></View>",
        })
        assert resp.status == 201, (resp.status, resp.text[:500])
        return resp.json()["id"]

    def import_file(self, project_id: int, filename: str, content: bytes) -> Response:
        boundary = uuid.uuid4().hex
        body = (
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
            "Content-Type: application/json\r\n\r\n"
        ).encode() + content + f"\r\n--{boundary}--\r\n".encode()
        return self.request("POST", f"/api/projects/{project_id}/import", body,
                            {"Content-Type": f"multipart/form-data; boundary={boundary}"})

    def task_count(self, project_id: int) -> int:
        resp = self.get(f"/api/projects/{project_id}/")
        assert resp.status == 200, resp.text[:300]
        return resp.json()["task_number"]


def wait_for_health(base_url: str, timeout: float = 300) -> dict:
    """Poll GET /health (a real signal) until it answers UP."""
    deadline = time.monotonic() + timeout
    last = None
    client = LabelStudio(base_url, timeout=5)
    while time.monotonic() < deadline:
        try:
            resp = client.get("/health")
            if resp.status == 200 and resp.json().get("status") == "UP":
                return resp.json()
            last = (resp.status, resp.text[:100])
        except OSError as exc:
            last = exc
        time.sleep(0.3)
    raise TimeoutError(f"{base_url}/health not UP within {timeout}s: {last}")
