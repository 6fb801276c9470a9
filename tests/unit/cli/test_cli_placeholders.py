"""What a newcomer who pastes a README placeholder gets (issue 19, item 2): one readable line naming
the field or option, exit 2, nothing created; never a regular expression or a traceback."""

from __future__ import annotations

from tests.unit.cli.conftest import one_error_line


def test_checksum_placeholder(prov, uid):  # type: ignore[no-untyped-def]
    r = prov("profile", "add", f"img-{uid}", "--install-method", "image", "--image-url", "images/x.raw",
             "--image-checksum", "sha256:...")
    assert r.exit_code == 2
    line = one_error_line(r)
    assert line == ("error: image_checksum: not a checksum: 'sha256:...' "
                    "(expected sha256:<64 hex digits> or sha512:<128 hex digits>)")
    assert prov("profile", "show", f"img-{uid}").exit_code == 3


def test_password_file_that_is_not_there(prov, tmp_path, uid):  # type: ignore[no-untyped-def]
    r = prov("host", "add", f"pw-{uid}", "--mac", f"02:00:{uid[0:2]}:{uid[2:4]}:{uid[4:6]}:{uid[6:8]}",
             "--bmc-address", "10.0.0.21", "--bmc-password-file", str(tmp_path / "web01.pw"))
    assert r.exit_code == 2
    assert one_error_line(r) == f"error: --bmc-password-file: {tmp_path / 'web01.pw'}: No such file or directory"


def test_ip_placeholder(prov, uid):  # type: ignore[no-untyped-def]
    r = prov("host", "add", f"ip-{uid}", "--mac", f"02:01:{uid[0:2]}:{uid[2:4]}:{uid[4:6]}:{uid[6:8]}",
             "--ip", "10.0.0.x")
    assert r.exit_code == 2
    assert one_error_line(r).startswith("error: ip_address: not an IP address: '10.0.0.x'")
