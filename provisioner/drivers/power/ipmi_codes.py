"""IPMI's own error numbers, what they mean and how prov classifies them.

Two tables: the completion code every IPMI response carries (IPMI 2.0 table 5-2)
and the status code of the RMCP+ session set-up messages (Open Session, RAKP
2/4; IPMI 2.0 table 13-15). pyghmi turns both into English text and often drops
the number; ipmi.py maps its text back (through pyghmi's own tables) and
``describe_completion``/``rmcp_kind`` give the message and the class.

``worker_error`` then turns a worker's (kind, reason) plus what the wire probe
saw (ipmi_probe.py) into the error class and its message: the probe outranks
pyghmi, which never sees ICMP errors.
"""

from __future__ import annotations

from provisioner.drivers.power.base import BmcSpec
from provisioner.drivers.power.ipmi_probe import WireProbe
from provisioner.errors import BmcAuthError, BmcBusy, BmcError, BmcTimeout, BmcUnreachable, BmcUnsupported, DriverError

# IPMI 2.0 table 5-2, "Completion Codes" (generic ones; 0x80-0xBE are command-specific)
COMPLETION_CODES: dict[int, str] = {
    0xC0: "node busy",
    0xC1: "invalid command",
    0xC2: "invalid command for the given LUN",
    0xC3: "timeout while processing the command",
    0xC4: "out of space",
    0xC5: "reservation cancelled or invalid reservation ID",
    0xC6: "request data truncated",
    0xC7: "request data length invalid",
    0xC8: "request data field length limit exceeded",
    0xC9: "parameter out of range",
    0xCA: "cannot return the number of requested data bytes",
    0xCB: "requested sensor, data or record not present",
    0xCC: "invalid data field in request",
    0xCD: "command illegal for the specified sensor or record type",
    0xCE: "command response could not be provided",
    0xCF: "cannot execute a duplicated request",
    0xD0: "SDR repository in update mode",
    0xD1: "device in firmware update mode",
    0xD2: "BMC initialization in progress",
    0xD3: "destination unavailable",
    0xD4: "insufficient privilege level",
    0xD5: "command not supported in the present state",
    0xD6: "sub-function disabled or unavailable",
    0xFF: "unspecified error",
}

# How a completion code is classified (anything else: bmc_error).
# Busy (retryable): node busy, timeout while processing, response could not be provided,
# unspecified error (also what pyghmi's own retransmit timeout reports, 0xffff & 0xff).
CC_BUSY = frozenset({0xC0, 0xC3, 0xCE, 0xFF})
# Unsupported: invalid command, out of range, invalid data field, not supported in this state.
CC_UNSUPPORTED = frozenset({0xC1, 0xC9, 0xCC, 0xD5})

# IPMI 2.0 table 13-15, "RMCP+ and RAKP Message Status Codes" -> class.
# The BMC refused who we are (user, role, password/integrity check): bmc_auth.
RMCP_AUTH = frozenset({0x09, 0x0A, 0x0C, 0x0D, 0x0E, 0x0F})
# Out of sessions (try again later): bmc_busy.
RMCP_BUSY = frozenset({0x01, 0x0B})


def describe_completion(code: int) -> str:
    """'completion code 0xd4 (insufficient privilege level)' for a message (IPMI 2.0 table 5-2)."""
    meaning = COMPLETION_CODES.get(code)
    if meaning is None:
        meaning = "command-specific code" if 0x80 <= code <= 0xBE else "unknown code"
    return f"completion code {code:#04x} ({meaning})"


def completion_kind(code: int) -> str:
    if code in CC_BUSY:
        return "busy"
    if code in CC_UNSUPPORTED:
        return "unsupported"
    return "error"


def rmcp_kind(status: int) -> str:
    if status in RMCP_AUTH:
        return "auth"
    if status in RMCP_BUSY:
        return "busy"
    return "error"


# How each call is named in messages.
_OP_LABEL = {"ping": "login", "get_power": "power status", "set_power": "power change",
             "set_bootdev": "boot device change", "get_bootdev": "boot device query"}


def unreachable_error(spec: BmcSpec, reason: str) -> BmcUnreachable:
    return BmcUnreachable(f"BMC {spec.label}: {reason}", bmc=spec.label, reason=reason)


def timeout_error(spec: BmcSpec, seconds: float, op: str, probe: WireProbe) -> BmcTimeout:
    seconds = round(seconds, 1)
    text = f"BMC {spec.label}: no answer within {seconds}s"
    if probe.answered:  # the port is right and something listens: the session or the command stalled
        text += f" to the {_OP_LABEL.get(op, op)} (its RMCP port answers session-less requests)"
    return BmcTimeout(text, bmc=spec.label, seconds=seconds)


def worker_error(kind: str, spec: BmcSpec, text: str, op: str, elapsed: float, probe: WireProbe) -> DriverError:
    """The worker's (kind, reason) and what the wire probe saw -> the error class and message."""
    bmc = spec.label
    if probe.unreachable:  # the wire is the better witness: pyghmi never sees ICMP errors
        return unreachable_error(spec, probe.unreachable)
    what = _OP_LABEL.get(op, op)
    if kind == "auth":
        return BmcAuthError(f"BMC {bmc}: user or password refused ({text})", bmc=bmc, reason=text)
    if kind == "timeout":
        return timeout_error(spec, elapsed, op, probe)
    if kind == "unreachable":
        return unreachable_error(spec, text)
    if kind == "busy":
        return BmcBusy(f"BMC {bmc}: busy, {what} failed: {text}", bmc=bmc, reason=text)
    if kind == "unsupported":
        return BmcUnsupported(f"BMC {bmc}: {what} not supported: {text}", bmc=bmc, operation=what, reason=text)
    return BmcError(f"BMC {bmc}: {what} failed: {text or 'the BMC gave no reason'}", bmc=bmc, reason=text)
