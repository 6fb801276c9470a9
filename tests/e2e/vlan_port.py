"""A userspace 802.1Q access port on a Linux bridge, for machines whose kernel has no VLAN support.

The e2e lab proves that an installed guest answers on a tagged VLAN. The natural controller end
of that VLAN is ``ip link add link BRIDGE type vlan``, but this project's machines run a kernel
built without 802.1Q (``CONFIG_VLAN_8021Q`` unset; no bonding either, and no bridge VLAN
filtering), so :class:`VlanPort` does a switch's access-port job in userspace instead:

    guest prov0.42 --(tagged, VID 42)--> lab bridge --> veth pair --> VlanPort --> TAP (untagged,
                                                                                   the test's address)

A veth pair is a port of the lab bridge (``<tag>a``; the bridge learns the TAP's MAC there), and
its peer (``<tag>b``) is read and written raw (AF_PACKET); only frames tagged with the VLAN id
cross to the TAP, untagged, and every frame from the TAP goes back tagged. The TAP holds the
test's address on the VLAN subnet, so ICMP and SSH from the test reach the guest over the VLAN and
nothing else: an untagged frame never crosses.

The kernel moves a received 802.1Q tag out of the frame into packet metadata
(``skb_vlan_untag``); AF_PACKET reports it with ``PACKET_AUXDATA`` (``tp_vlan_tci``,
``TP_STATUS_VLAN_VALID``; packet(7)), so both an in-band tag and a stripped one are handled.

Offloads: a virtio guest leaves TCP/UDP checksums to the host (virtio-net's NEEDS_CSUM) and sends
segments of up to 64 KiB (TSO); both stay "to do" across the bridge and a veth, so a raw socket
would read frames with no checksum (first e2e run: ICMP crossed, every TCP SYN-ACK was dropped by
the test's stack). The bridge-side veth end therefore has checksum offload, TSO and GSO switched
off (SIOCETHTOOL, as ``ethtool -K PORT tx off tso off gso off`` would: the machines have no ethtool),
so the kernel segments and checksums before the frame reaches the relay; a frame still marked
``TP_STATUS_CSUMNOTREADY`` has its IPv4 TCP/UDP checksum computed here.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator

# <linux/if_tun.h>, <linux/if_packet.h>, <linux/if_ether.h>
TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000
ETH_P_ALL, ETH_P_8021Q = 0x0003, 0x8100
SOL_PACKET, PACKET_AUXDATA = 263, 8
PACKET_OUTGOING = 4
TP_STATUS_CSUMNOTREADY, TP_STATUS_VLAN_VALID = 1 << 3, 1 << 4
# <linux/sockios.h>, <linux/ethtool.h>: struct ethtool_value {u32 cmd; u32 data;}
SIOCETHTOOL = 0x8946
ETHTOOL_STXCSUM, ETHTOOL_STSO, ETHTOOL_SGSO = 0x17, 0x1F, 0x24
ETHTOOL_GTXCSUM = 0x16
_AUXDATA = struct.Struct("IIIHHHH")  # tp_status, tp_len, tp_snaplen, tp_mac, tp_net, tp_vlan_tci, tp_vlan_tpid
_VID_MASK = 0x0FFF


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def _ethtool(dev: str, cmd: int, value: int | None = None) -> int:
    """One ethtool_value command on ``dev`` (set when ``value`` is given); returns the data word."""
    import array

    buf = array.array("B", struct.pack("II", cmd, value or 0))
    ifreq = struct.pack("16sP", dev.encode(), buf.buffer_info()[0])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifreq)
    return int(struct.unpack("II", buf.tobytes())[1])


def offloads_off(dev: str) -> None:
    for cmd in (ETHTOOL_STXCSUM, ETHTOOL_STSO, ETHTOOL_SGSO):
        _ethtool(dev, cmd, 0)
    if _ethtool(dev, ETHTOOL_GTXCSUM):
        raise RuntimeError(f"{dev}: transmit checksum offload is still on")


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def fill_l4_checksum(frame: bytes) -> bytes:
    """An untagged Ethernet frame with its IPv4 TCP/UDP checksum computed (RFC 793/768 pseudo-header)."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return frame
    ihl = (frame[14] & 0x0F) * 4
    proto, total = frame[23], struct.unpack("!H", frame[16:18])[0]
    at = {6: 16, 17: 6}.get(proto)  # where the checksum sits in the TCP / UDP header
    start = 14 + ihl
    end = 14 + total
    if at is None or end > len(frame) or start + at + 2 > end:
        return frame
    seg = bytearray(frame[start:end])
    seg[at:at + 2] = b"\0\0"
    pseudo = frame[26:34] + struct.pack("!BBH", 0, proto, len(seg))
    csum = ~_sum16(pseudo + bytes(seg)) & 0xFFFF
    if proto == 17 and csum == 0:
        csum = 0xFFFF  # UDP: 0 means "no checksum"
    seg[at:at + 2] = struct.pack("!H", csum)
    return frame[:start] + bytes(seg) + frame[end:]


class VlanPort:
    """Frames tagged ``vid`` on ``bridge`` <-> untagged frames of the TAP ``name`` holding ``address``."""

    def __init__(self, bridge: str, vid: int, name: str, address: str) -> None:
        if len(name) > 13:  # the veth ends are name + "a"/"b" (IFNAMSIZ: 15 characters)
            raise ValueError(f"{name!r}: at most 13 characters")
        self.bridge, self.vid, self.name, self.address = bridge, vid, name, address
        self.port, self.peer = f"{name}a", f"{name}b"
        self.frames = {"tagged_in": 0, "tagged_out": 0, "dropped": 0, "checksummed": 0}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tap = -1
        self._raw: socket.socket | None = None

    def start(self) -> None:
        _ip("link", "add", self.port, "type", "veth", "peer", "name", self.peer)
        _ip("link", "set", self.port, "master", self.bridge)
        offloads_off(self.port)  # the bridge transmits into this end: whole, checksummed frames only
        for dev in (self.port, self.peer):
            _ip("link", "set", dev, "up")
        self._tap = os.open("/dev/net/tun", os.O_RDWR)
        fcntl.ioctl(self._tap, TUNSETIFF, struct.pack("16sH", self.name.encode(), IFF_TAP | IFF_NO_PI))
        _ip("addr", "add", self.address, "dev", self.name)
        _ip("link", "set", self.name, "up")
        raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        raw.bind((self.peer, 0))
        raw.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        self._raw = raw
        self._thread = threading.Thread(target=self._relay, name=f"vlan-port-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._raw is not None:
            self._raw.close()
        if self._tap >= 0:
            os.close(self._tap)  # the TAP goes with its last file descriptor
        subprocess.run(["ip", "link", "del", self.port], capture_output=True, timeout=30, check=False)

    def _from_bridge(self, raw: socket.socket) -> None:
        data, ancillary, _, addr = raw.recvmsg(65535, socket.CMSG_SPACE(_AUXDATA.size))
        if addr[2] == PACKET_OUTGOING:  # our own frames, seen on their way out
            return
        vid, partial = None, False
        for level, kind, payload in ancillary:
            if level == SOL_PACKET and kind == PACKET_AUXDATA and len(payload) >= _AUXDATA.size:
                status, *_, tci, _tpid = _AUXDATA.unpack(payload[:_AUXDATA.size])
                partial = bool(status & TP_STATUS_CSUMNOTREADY)
                if status & TP_STATUS_VLAN_VALID:
                    vid = tci & _VID_MASK
        if vid is None and len(data) >= 18 and struct.unpack("!H", data[12:14])[0] == ETH_P_8021Q:
            vid = struct.unpack("!H", data[14:16])[0] & _VID_MASK  # the tag still in the frame
            data = data[:12] + data[16:]
        if vid != self.vid:
            self.frames["dropped"] += 1  # untagged or another VLAN: not this access port's
            return
        self.frames["tagged_in"] += 1
        if partial:
            self.frames["checksummed"] += 1
            data = fill_l4_checksum(data)
        os.write(self._tap, data)

    def _from_tap(self, raw: socket.socket) -> None:
        frame = os.read(self._tap, 65535)
        if len(frame) < 14:
            return
        raw.send(frame[:12] + struct.pack("!HH", ETH_P_8021Q, self.vid) + frame[12:])
        self.frames["tagged_out"] += 1

    def _relay(self) -> None:
        raw = self._raw
        assert raw is not None
        while not self._stop.is_set():
            ready, _, _ = select.select([raw.fileno(), self._tap], [], [], 0.5)
            for r in ready:
                with contextlib.suppress(OSError):
                    if r == raw.fileno():
                        self._from_bridge(raw)
                    else:
                        self._from_tap(raw)


@contextlib.contextmanager
def vlan_port(bridge: str, vid: int, name: str, address: str) -> Iterator[VlanPort]:
    port = VlanPort(bridge, vid, name, address)
    try:
        port.start()
        yield port
    finally:
        port.stop()
