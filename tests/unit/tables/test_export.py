"""export's pure core: the format word, which format Label Studio's converter is asked for (--with-media),
where each file goes, the exporter's stream header, and the atomic write of what arrives."""

from __future__ import annotations

import hashlib
import io
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tasks.core import export as exporting
from tasks.core.errors import RemoteError, SnapshotError, UsageError
from tasks.core.export import Destination, ProjectFacts

TEXT = ProjectFacts(3, "reviews", 1500, ("JSON", "JSON_MIN", "CSV", "TSV", "CONLL2003"), ())
IMAGES = ProjectFacts(4, "figures", 10, ("JSON", "JSON_MIN", "CSV", "COCO", "COCO_WITH_IMAGES", "YOLO",
                                         "YOLO_WITH_IMAGES", "VOC"),
                      ("COCO", "COCO_WITH_IMAGES", "YOLO", "YOLO_WITH_IMAGES", "VOC"))
NOW = datetime(2026, 12, 3, 18, 5, 9, tzinfo=timezone.utc)


@pytest.mark.parametrize("given, word", [("json", "JSON"), (" Json_Min ", "JSON_MIN"), ("coco", "COCO"),
                                         ("YOLO_OBB", "YOLO_OBB")])
def test_a_format_is_one_upper_case_word(given, word):
    assert exporting.format_word(given) == word


@pytest.mark.parametrize("given", ["", "x y", "json;rm", "../x", "1JSON", "é"])
def test_anything_else_is_refused_before_connecting(given):
    with pytest.raises(UsageError, match="a format is a word"):
        exporting.format_word(given)


@pytest.mark.parametrize("project, wanted, media, expected", [
    (TEXT, "JSON", False, ("JSON", False)),
    (TEXT, "CSV", False, ("CSV", False)),
    (IMAGES, "COCO", False, ("COCO", False)),
    (IMAGES, "COCO", True, ("COCO_WITH_IMAGES", True)),
    (IMAGES, "YOLO_WITH_IMAGES", False, ("YOLO_WITH_IMAGES", True)),
    (IMAGES, "VOC", True, ("VOC", True)),
])
def test_the_converter_is_asked_for_what_the_user_meant(project, wanted, media, expected):
    assert exporting.converter_format(project, wanted, media) == expected


def test_a_format_the_project_cannot_take_is_refused_listing_the_ones_it_can():
    with pytest.raises(UsageError) as refused:
        exporting.converter_format(TEXT, "COCO", False)
    assert str(refused.value) == ("project 3 cannot be exported as COCO; it can as: JSON, JSON_MIN, CSV, TSV, "
                                  "CONLL2003; nothing was run")


def test_with_media_is_refused_for_a_format_that_references_no_files():
    with pytest.raises(UsageError, match=r"project 4's are: COCO, YOLO, VOC \(CSV carries no files\)"):
        exporting.converter_format(IMAGES, "CSV", True)
    with pytest.raises(UsageError, match="project 3's are: none"):
        exporting.converter_format(TEXT, "JSON", True)


def test_files_go_into_a_folder_with_names_that_never_collide(tmp_path):
    plan = exporting.plan_exports([TEXT, IMAGES], [], "JSON", False, Destination(tmp_path, True), "vm", NOW)
    assert [e.path("json") for e in plan] == [tmp_path / "vm-project-3-json-20261203T180509Z.json",
                                              tmp_path / "vm-project-4-json-20261203T180509Z.json"]


def test_a_file_the_user_named_keeps_its_name_whatever_the_converter_makes(tmp_path):
    where = exporting.destination(str(tmp_path / "mine.data"), every=False)
    plan = exporting.plan_exports([IMAGES], [], "COCO", True, where, "vm", NOW)
    assert plan[0].path("zip") == tmp_path / "mine.data" and plan[0].format == "COCO_WITH_IMAGES"


def test_missing_projects_are_named_and_nothing_runs(tmp_path):
    with pytest.raises(UsageError, match=r"vm has no project 7, 9; nothing was run"):
        exporting.plan_exports([TEXT], [7, 9], "JSON", False, Destination(tmp_path, True), "vm", NOW)
    with pytest.raises(UsageError, match="no projects to export"):
        exporting.plan_exports([], [], "JSON", False, Destination(tmp_path, True), "vm", NOW)


def test_out_is_checked_before_connecting(tmp_path):
    (tmp_path / "taken.json").write_text("[]")
    assert exporting.destination(None, every=False) == Destination(Path.cwd(), True)
    assert exporting.destination(str(tmp_path), every=False) == Destination(tmp_path, True)
    assert exporting.destination(f"{tmp_path}/new/", every=False) == Destination(tmp_path / "new", True)
    assert exporting.destination(str(tmp_path / "all"), every=True) == Destination(tmp_path / "all", True)
    with pytest.raises(UsageError, match="exists; nothing was written"):
        exporting.destination(str(tmp_path / "taken.json"), every=False)
    with pytest.raises(UsageError, match="is a file; --all writes one file per project"):
        exporting.destination(str(tmp_path / "taken.json"), every=True)
    with pytest.raises(UsageError, match="does not exist"):
        exporting.destination(str(tmp_path / "no" / "x.json"), every=False)


@pytest.mark.parametrize("line, parsed", [
    ("file 12 " + "a" * 64 + " json zstd\n", (12, "a" * 64, "json", "zstd")),
    ("file 0 " + "0" * 64 + " zip gzip", (0, "0" * 64, "zip", "gzip")),
    ("file 12 " + "a" * 64 + " sh zstd", None),          # an extension fab does not know
    ("file 12 " + "a" * 63 + " json zstd", None),
    ("file -1 " + "a" * 64 + " json zstd", None),
    ("file 12 " + "a" * 64 + " ../x zstd", None),
    ("tasks 10 20", None),
])
def test_the_stream_header_is_read_strictly(line, parsed):
    assert exporting.parse_header(line) == parsed


def test_progress_lines():
    assert exporting.parse_tasks_line("tasks 1000 1500\n") == (1000, 1500)
    assert exporting.parse_tasks_line("tasks x 1500") is None and exporting.parse_tasks_line("converting") is None


def test_the_projects_answer_is_parsed_or_its_error_said():
    projects, missing = exporting.parse_formats({"projects": [{"id": 3, "title": "reviews", "tasks": 1500,
                                                               "formats": list(TEXT.formats), "media": []}],
                                                 "missing": [8]}, "vm")
    assert projects == [TEXT] and missing == [8]
    with pytest.raises(RemoteError, match="reading the projects on vm failed: OperationalError: no such table"):
        exporting.parse_formats({"error": "OperationalError: no such table"}, "vm")
    with pytest.raises(RemoteError, match="no answer"):
        exporting.parse_formats(None, "vm")


def test_what_arrives_gets_its_name_only_when_complete(tmp_path):
    target = tmp_path / "out.json"
    data = b"[" + b"x" * 3_000_000 + b"]"
    moved = []
    exporting._write_atomically(target, io.BytesIO(data), moved.append,
                                expected=(len(data), hashlib.sha256(data).hexdigest()))
    assert sum(moved) == len(data)
    assert target.read_bytes() == data and target.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_a_broken_stream_leaves_no_partial_file(tmp_path):
    class Breaks(io.BytesIO):
        def read(self, size=-1):
            if self.tell() > 1000:
                raise OSError("connection lost")
            return super().read(min(size, 600))

    with pytest.raises(OSError, match="connection lost"):
        exporting._write_atomically(tmp_path / "out.json", Breaks(b"y" * 5000), lambda n: None,
                                    expected=(5000, "0" * 64))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sent, why", [(b"mine, changed", "more bytes came than the server announced"),
                                       (b"mind", "arrived damaged")])
def test_a_file_unlike_what_the_server_announced_never_gets_the_name(tmp_path, sent, why):
    with pytest.raises(SnapshotError, match=why):
        exporting._write_atomically(tmp_path / "out.json", io.BytesIO(sent), lambda n: None,
                                    expected=(4, hashlib.sha256(b"mine").hexdigest()))
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_appeared_meanwhile_is_never_replaced(tmp_path):
    target = tmp_path / "out.json"

    class AppearsMeanwhile(io.BytesIO):
        def read(self, size=-1):
            data = super().read(size)
            if not data and not target.exists():
                target.write_bytes(b"someone else's")
            return data

    with pytest.raises(UsageError, match="appeared while the export ran"):
        exporting._write_atomically(target, AppearsMeanwhile(b"mine"), lambda n: None,
                                    expected=(4, hashlib.sha256(b"mine").hexdigest()))
    assert target.read_bytes() == b"someone else's" and [p.name for p in tmp_path.iterdir()] == ["out.json"]


# ------------------------------------------------------------------------------------------------
# The contract between the exporter on the server (templates/scripts/export_project.py) and this side


def exporter_module():
    import importlib.util

    path = Path(__file__).resolve().parents[3] / "templates" / "scripts" / "export_project.py"
    spec = importlib.util.spec_from_file_location("export_project_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("codec", ["gzip"] + (["zstd"] if shutil.which("zstd") else []))
def test_what_the_exporter_streams_is_what_this_side_reads(tmp_path, capfdbinary, monkeypatch, codec):
    from tasks.core.transfer import Codec

    exporter = exporter_module()
    if codec == "gzip":
        monkeypatch.setattr(exporter.shutil, "which", lambda name: None)
    made = tmp_path / "export.json"
    made.write_bytes(b'[{"id": 1, "data": {"text": "\xc3\xbc"}}]' * 5000)

    def say(line):
        exporter.sys.stdout.buffer.write((line + "\n").encode())
        exporter.sys.stdout.buffer.flush()

    with made.open("rb") as source:
        source.read(10)          # the converter's file object may be anywhere: stream starts from the top
        exporter.stream(source, "json", say)
    raw = io.BytesIO(capfdbinary.readouterr().out)
    header = exporting.parse_header(raw.readline().decode())
    assert header == (made.stat().st_size, hashlib.sha256(made.read_bytes()).hexdigest(), "json", codec)
    target = tmp_path / "here" / "x.json"
    exporting._write_atomically(target, Codec(codec).reader(raw), lambda n: None, expected=header[:2])
    assert target.read_bytes() == made.read_bytes()


def test_the_exporter_refuses_a_call_it_does_not_know_in_one_line():
    import subprocess
    import sys

    from tasks.core.commands.export import EXPORT_SOURCE

    done = subprocess.run([sys.executable, "-I", "-c", EXPORT_SOURCE, "export", "/tmp"], capture_output=True,
                          text=True)
    assert done.returncode == 1 and done.stderr == "usage: formats all|ID... | export WORK_DIR FORMAT yes|no ID\n"
