"""TFTP packets on tftpy's codec: request parsing, OACK/ERROR encoding, option negotiation.

tftpy parses every *request* (RRQ/WRQ) and encodes every OACK and ERROR
packet (the request path is not hot); DATA and ACK on the per-block hot path
are built and read by tftp_transfer.py itself. Options: RFC 2347 negotiation,
RFC 2348 blksize, RFC 2349 tsize and timeout, RFC 7440 windowsize.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tftpy.TftpPacketFactory import TftpPacketFactory
from tftpy.TftpPacketTypes import TftpPacketERR, TftpPacketOACK, TftpPacketRRQ, TftpPacketWRQ
from tftpy.TftpShared import TftpErrors

if TYPE_CHECKING:
    from provisioner.drivers.boot.tftp_config import TftpConfig

# --- protocol constants ---------------------------------------------------------
OP_RRQ, OP_WRQ, OP_DATA, OP_ACK, OP_ERROR, OP_OACK = 1, 2, 3, 4, 5, 6
DEFAULT_BLKSIZE = 512  # RFC 1350
MIN_BLKSIZE, MAX_BLKSIZE = 8, 65464  # RFC 2348 section 2 (65464 = 65535 - IP/UDP/TFTP headers)
MIN_TIMEOUT, MAX_TIMEOUT = 1, 255  # RFC 2349 section 2 (seconds)
MIN_WINDOWSIZE, MAX_WINDOWSIZE = 1, 65535  # RFC 7440 section 3
MAX_REQUEST = 1024  # an RRQ with options fits easily; larger first datagrams are junk


# A request or transfer turned down, with the TFTP error code the client is sent.
class Refused(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


_factory = TftpPacketFactory()


def error_packet(code: int, message: str) -> bytes:
    """An ERROR datagram (tftpy's encoder; it only knows fixed texts, so give it ours)."""
    pkt = TftpPacketERR()
    pkt.errorcode = code
    pkt.errmsgs = {code: message.encode("ascii", "replace")[:200]}
    return bytes(pkt.encode().buffer)


def oack_packet(options: dict[str, str]) -> bytes:
    pkt = TftpPacketOACK()
    pkt.options = options
    return bytes(pkt.encode().buffer)


def parse_request(datagram: bytes) -> TftpPacketRRQ | TftpPacketWRQ:
    """Decode a first datagram with tftpy; anything else is refused with a TFTP error code."""
    if len(datagram) < 4 or len(datagram) > MAX_REQUEST:
        raise Refused(TftpErrors.IllegalTftpOp, "malformed request")
    opcode = int.from_bytes(datagram[:2], "big")
    if opcode not in (OP_RRQ, OP_WRQ):
        raise Refused(TftpErrors.IllegalTftpOp, "expected a read request")
    try:
        pkt = _factory.parse(datagram)
    except Exception as exc:  # tftpy raises TftpException, struct.error, UnicodeDecodeError...
        raise Refused(TftpErrors.IllegalTftpOp, "malformed request") from exc
    assert isinstance(pkt, TftpPacketRRQ | TftpPacketWRQ)
    return pkt


def negotiate(options: dict[str, str], size: int, cfg: TftpConfig) -> tuple[dict[str, str], int, float, int]:
    """RFC 2347: answer only the options we understand; returns (oack, blksize, timeout, window)."""
    oack: dict[str, str] = {}
    blksize, timeout, window = DEFAULT_BLKSIZE, cfg.timeout, 1
    for raw_key, raw_val in options.items():
        key = raw_key.lower()  # option names are case-insensitive (RFC 2347)
        try:
            val = int(raw_val)
        except ValueError:
            continue  # an option we cannot read is simply not acknowledged
        if key == "blksize" and val >= MIN_BLKSIZE:
            blksize = min(val, cfg.max_blksize)
            oack["blksize"] = str(blksize)
        elif key == "tsize" and val == 0:  # on a read request the client sends 0 (RFC 2349)
            oack["tsize"] = str(size)
        elif key == "timeout" and MIN_TIMEOUT <= val <= min(MAX_TIMEOUT, cfg.max_client_timeout):
            # RFC 2349: the OACK must carry the client's own value, so a longer timeout is not
            # lowered but declined (left out of the OACK, RFC 2347): we keep our cfg.timeout.
            timeout = float(val)
            oack["timeout"] = str(val)
        elif key == "windowsize" and val >= MIN_WINDOWSIZE:
            window = min(val, cfg.max_windowsize, MAX_WINDOWSIZE)
            oack["windowsize"] = str(window)
    return oack, blksize, timeout, window
