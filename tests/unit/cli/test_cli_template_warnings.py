"""``prov template render`` warns (issue 19, item 4): on stderr, exit 0, or exit 10 with --strict.

Against the real API in-process; its controller runs on the embedded defaults (PROV_PUBLIC_URL
unset, 127.0.0.1), as a newcomer's does.
"""

from __future__ import annotations

import httpx

import provisioner.cli.template  # noqa: F401  (registers the commands)
from provisioner.cli import exitcodes


def _enrol(prov, uid: str, *profile_args: str) -> str:  # type: ignore[no-untyped-def]
    r = prov("profile", "add", f"p-{uid}", *profile_args)
    assert r.exit_code == 0, r.output
    host = f"tw-{uid}"
    r = prov("host", "add", host, "--mac", f"02:{uid[0:2]}:{uid[2:4]}:{uid[4:6]}:{uid[6:8]}:0a",
             "--profile", f"p-{uid}")
    assert r.exit_code == 0, r.output
    return host


def _warnings(stderr: str) -> list[str]:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert all(ln.startswith("warning: ") for ln in lines), lines
    return lines


def test_kickstart_for_a_debian_image_profile(prov, uid):  # type: ignore[no-untyped-def]
    host = _enrol(prov, uid, "--os-family", "debian", "--install-method", "image",
                  "--image-url", "images/debian12.raw")
    r = prov("template", "render", "kickstart", "--host", host)
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("#version=RHEL9")  # the text itself is untouched
    lines = _warnings(r.stderr)
    text = "\n".join(lines)
    assert "never served a kickstart" in text and "debian" in text and "Anaconda" in text
    assert "PROV_PUBLIC_URL is unset" in text and "http://127.0.0.1:" in text
    assert "no SSH key" in text

    strict = prov("template", "render", "kickstart", "--host", host, "--strict")
    assert strict.exit_code == exitcodes.WARNED == 10
    assert strict.stdout == r.stdout and _warnings(strict.stderr) == lines


def test_the_api_answers_the_same_warnings(prov, live_api, uid):  # type: ignore[no-untyped-def]
    host = _enrol(prov, uid, "--os-family", "rhel", "--install-method", "preseed",
                  "--kernel-url", "images/x/linux", "--initrd-url", "images/x/initrd.gz")
    r = httpx.get(f"{live_api.url}/api/v1/hosts/{host}/preview/preseed",
                  headers={"Authorization": f"Bearer {live_api.token}"}, timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"host", "kind", "template", "text", "warnings"}
    assert (body["host"], body["kind"], body["template"]) == (host, "preseed", "preseed/default.j2")
    assert [w["code"] for w in body["warnings"]] == ["os_family_mismatch", "no_ssh_key", "public_url_unset"]
    cli = prov("template", "render", "preseed", "--host", host)
    assert cli.exit_code == 0 and cli.stdout == body["text"]
    assert _warnings(cli.stderr) == [f"warning: {w['message']}" for w in body["warnings"]]
    # the plain text route is unchanged
    plain = httpx.get(f"{live_api.url}/api/v1/hosts/{host}/rendered/preseed",
                      headers={"Authorization": f"Bearer {live_api.token}"}, timeout=10)
    assert plain.status_code == 200 and plain.text == body["text"]


def test_errors_keep_their_codes(prov, uid):  # type: ignore[no-untyped-def]
    r = prov("template", "render", "kickstart", "--host", f"missing-{uid}", "--strict")
    assert r.exit_code == exitcodes.NOT_FOUND
    assert r.stderr.startswith("error: ") and "warning" not in r.stderr
