"""What the consoles print: byte sizes for people, a mark per step, errors on stderr."""

from __future__ import annotations

import pytest

from tasks.core import ui


@pytest.mark.parametrize("size, text", [
    (None, "-"), (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
    (1024 ** 2 - 1, "1024.0 KiB"), (1024 ** 2, "1.0 MiB"), (3 * 1024 ** 3, "3.0 GiB"),
    (5 * 1024 ** 4, "5.0 TiB"), (1024 ** 5, "1024.0 TiB"),
])
def test_human_bytes(size, text):
    assert ui.human_bytes(size) == text


@pytest.mark.parametrize("changed, mark", [(True, "~ changed  "), (False, "= unchanged")])
def test_a_step_is_its_mark_then_what_happened(capsys, changed, mark):
    ui.step(changed, "nginx site [default] is up to date")
    assert capsys.readouterr().out == f"{mark} nginx site [default] is up to date\n"  # markup shown as typed


def test_errors_and_warnings_go_to_stderr(capsys):
    ui.error("cannot resolve host 'vm'")
    ui.warn("untested OS")
    out, err = capsys.readouterr()
    assert (out, err) == ("", "error: cannot resolve host 'vm'\nwarning: untested OS\n")


def test_a_transfer_summary_gives_size_rate_and_wire_bytes(capsys):
    ui.transfer_summary("uploaded", 4 * 1024 ** 2, 2.0, wire=1024 ** 2)
    assert capsys.readouterr().out == "  uploaded: 4.0 MiB in 2.0s (2.0 MiB/s, 1.0 MiB on the wire)\n"


def test_text_from_a_server_prints_verbatim_even_when_it_looks_like_an_emoji_code(capsys):
    ui.out.print("SHA-256 fingerprint: 5E:98:0A:CD:79:7F")  # ":CD:" is rich's code for an optical disc
    assert capsys.readouterr().out == "SHA-256 fingerprint: 5E:98:0A:CD:79:7F\n"
