"""The CLI's exit codes: the one table (README.md "Exit codes" shows the same).

A script can tell apart what went wrong without parsing the error line: the
controller could not be reached (7) is not a BMC that failed (6), drift found (8)
is not an error (1). An error from the API is mapped by its machine code
(``{"error": code}`` in the body); a code this table does not name falls back on
the codes of its error classes, then on the HTTP status, then on 1.
"""

from __future__ import annotations

from typing import Any

OK = 0
ERROR = 1  # any other failure: an action failed, apply had failures, an unexpected error
USAGE = 2  # bad usage or input refused (422); `prov plan`: changes pending (Terraform's -detailed-exitcode)
NOT_FOUND = 3  # 404: no such host, rack, profile, task, template, guest
CONFLICT = 4  # 409/412: duplicate, invalid state or transition, stale precondition
AUTH = 5  # 401/403: the API token is missing, invalid, revoked or lacks the scope
PEER = 6  # a peer failed: a BMC (bmc_*), libvirt, the boot services, Ansible, the lab; a failed task
UNREACHABLE = 7  # the prov controller could not be reached (refused, no route, DNS, TLS, no answer)
DRIFT = 8  # `prov drift`: something differs from the last applied inventory
TIMEOUT = 9  # gave up waiting for a task or a state (the work may still finish: `prov task show ID`)
WARNED = 10  # `prov template render --strict`: rendered, but with warnings (printed on stderr)
NOT_CONFIRMED = 11  # `apply`: a plan that installs, starts guests or deletes was not confirmed (nothing changed)
INTERRUPTED = 130  # Ctrl-C (the shell's 128 + SIGINT)

# What each code means, in the README's words (tests/unit/cli/test_cli_exit_codes.py keeps both in step).
MEANING: dict[int, str] = {
    OK: "success; `plan`: nothing to do; `drift`: no drift",
    ERROR: "error: an action or a task failed, `apply` had failures, anything not listed below",
    USAGE: "usage error or input refused (bad option, bad value, HTTP 422); `plan`: changes pending",
    NOT_FOUND: "not found (HTTP 404)",
    CONFLICT: "conflict or invalid state (HTTP 409, 412): duplicate, transition not allowed",
    AUTH: "API token refused (HTTP 401, 403)",
    PEER: "a peer failed: BMC (`bmc_*`), libvirt, boot services, Ansible, lab (HTTP 502, 504)",
    UNREACHABLE: "the prov controller could not be reached",
    DRIFT: "`drift`: drift found",
    TIMEOUT: "timed out while waiting for a task or a state",
    WARNED: "`template render --strict`: rendered with warnings",
    NOT_CONFIRMED: "`apply`: not confirmed (the answer was not `yes`, or not a terminal and no `--yes`); "
                   "nothing changed",
    INTERRUPTED: "interrupted (Ctrl-C)",
}

# The API's error codes (errors.py and the classes defined next to their layer) -> exit code.
BY_ERROR_CODE: dict[str, int] = {
    "invalid_input": USAGE,
    "template_error": USAGE,
    "virt_refused": USAGE,
    "inventory_error": USAGE,
    "body_too_large": USAGE,
    "not_found": NOT_FOUND,
    "conflict": CONFLICT,
    "invalid_transition": CONFLICT,
    "precondition_failed": CONFLICT,
    "task_cancelled": CONFLICT,
    "unauthorized": AUTH,
    "forbidden": AUTH,
    "driver_error": PEER,
    "bmc_auth": PEER,
    "bmc_unreachable": PEER,
    "bmc_timeout": PEER,
    "bmc_busy": PEER,
    "bmc_unsupported": PEER,
    "bmc_error": PEER,
    "operator_action": PEER,
    "virt_error": PEER,
    "boot_error": PEER,
    "config_error": PEER,
    "lab_error": PEER,
    "install_failed": PEER,
    "controller_unreachable": UNREACHABLE,
}

# An error whose code is unknown here (a newer controller): by its HTTP status.
BY_HTTP_STATUS: dict[int, int] = {
    400: USAGE,
    401: AUTH,
    403: AUTH,
    404: NOT_FOUND,
    409: CONFLICT,
    412: CONFLICT,
    422: USAGE,
    502: PEER,
    504: PEER,
}


def for_error_code(code: str | None, http_status: int | None = None) -> int:
    """The exit code of an API error body's ``error`` (and its HTTP status as the fallback)."""
    if code and code in BY_ERROR_CODE:
        return BY_ERROR_CODE[code]
    if http_status is not None and http_status in BY_HTTP_STATUS:
        return BY_HTTP_STATUS[http_status]
    return ERROR


def for_error(exc: Any) -> int:
    """The exit code of a ProvError: its code, its classes' codes (nearest first), then its HTTP status."""
    details = getattr(exc, "details", None)
    details = details if isinstance(details, dict) else {}
    # the code the controller sent when this client has no class for it (provisioner.client.ApiError)
    codes = [details.get("error_code")] + [getattr(cls, "code", None) for cls in type(exc).__mro__]
    for code in codes:
        if isinstance(code, str) and code in BY_ERROR_CODE:
            return BY_ERROR_CODE[code]
    status = details.get("http_status")
    return for_error_code(None, status if isinstance(status, int) else None)


def for_task(task: dict[str, Any]) -> int:
    """A finished task that did not succeed: the exit code of the error it recorded (``result.error``)."""
    result = task.get("result")
    body = result.get("error") if isinstance(result, dict) else None
    if task.get("status") == "failed" and isinstance(body, dict):
        code = for_error_code(str(body.get("error") or ""))
        if code != ERROR:
            return code
    return ERROR
