"""Every error prov raises on purpose.

Each class carries a stable machine code, an HTTP status and a message template
(the pattern Ironic and VirtualBMC use). The API has one exception handler that
turns a ``ProvError`` into ``{"error": code, "message": text, ...details}`` and
the CLI turns the same JSON back into one readable line and an exit code
(provisioner/cli/exitcodes.py maps the codes).
Vendor libraries' exceptions are translated into these classes in the one
module that imports the vendor library; nothing else ever sees them.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ProvError(Exception):
    code: ClassVar[str] = "error"
    http_status: ClassVar[int] = 500
    template: ClassVar[str] = "internal error"

    def __init__(self, message: str | None = None, **details: Any) -> None:
        self.details = details
        if message is None:
            try:
                message = self.template.format(**details)
            except (KeyError, IndexError):
                message = self.template
        self.message = message
        super().__init__(message)

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        for key, value in self.details.items():
            if isinstance(value, str | int | float | bool | list | dict) or value is None:
                body[key] = value
            else:
                body[key] = str(value)
        return body


# --- client-side problems (4xx) -------------------------------------------------


class InvalidInput(ProvError):
    code = "invalid_input"
    http_status = 422
    template = "{field}: {reason}"


class NotFound(ProvError):
    code = "not_found"
    http_status = 404
    template = "{kind} {name!r} not found"


class Conflict(ProvError):
    code = "conflict"
    http_status = 409
    template = "{reason}"


class InvalidTransition(Conflict):
    code = "invalid_transition"
    template = "host {host} is {state}: event {event!r} not allowed (allowed: {allowed})"


class PreconditionFailed(ProvError):
    """``If-Match`` named another version of the object (RFC 9110 section 13.1.1): it changed since
    the client read it, so the change was not made. Read it again, then retry."""

    code = "precondition_failed"
    http_status = 412
    template = "{kind} {name!r} changed since it was read (If-Match does not match its ETag); read it again"


class Unauthorized(ProvError):
    code = "unauthorized"
    http_status = 401
    template = "missing or invalid API token"


class Forbidden(ProvError):
    code = "forbidden"
    http_status = 403
    template = "{reason}"


class TemplateError(InvalidInput):
    code = "template_error"
    template = "template {template}: {reason}"


# --- driver / peer problems -----------------------------------------------------


class DriverError(ProvError):
    """A peer (BMC, libvirt, dnsmasq, ansible...) failed. 502: the fault is beyond us."""

    code = "driver_error"
    http_status = 502
    template = "{reason}"
    retryable: ClassVar[bool] = False


class BmcAuthError(DriverError):
    code = "bmc_auth"
    template = "BMC {bmc}: user or password refused"


class BmcUnreachable(DriverError):
    code = "bmc_unreachable"  # refused, ICMP port/host unreachable, no route, no such name
    template = "BMC {bmc}: unreachable ({reason})"
    retryable = True


class BmcTimeout(DriverError):
    code = "bmc_timeout"  # nothing came back within the call's deadline
    http_status = 504
    template = "BMC {bmc}: no answer within {seconds}s"
    retryable = True


class BmcBusy(DriverError):
    code = "bmc_busy"
    template = "BMC {bmc}: busy ({reason})"
    retryable = True


class BmcUnsupported(DriverError):
    code = "bmc_unsupported"
    http_status = 501
    template = "BMC {bmc}: {operation} not supported"


class BmcError(DriverError):
    code = "bmc_error"
    template = "BMC {bmc}: {reason}"


class VirtError(DriverError):
    code = "virt_error"
    template = "libvirt: {reason}"


class VirtRefused(InvalidInput):
    """Pre-flight says the host cannot run what was asked."""

    code = "virt_refused"
    template = "{reason}"


class BootError(DriverError):
    code = "boot_error"
    template = "{reason}"


class ConfigRunError(DriverError):
    code = "config_error"
    template = "{reason}"


class LabError(DriverError):
    """The virtual lab (``prov lab``) could not be built, inspected or removed."""

    code = "lab_error"
    template = "lab: {reason}"
