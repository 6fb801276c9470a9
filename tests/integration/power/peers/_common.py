"""Shared by the peer wrappers: keep test:///default alive and publish the domain's state."""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import libvirt

DOMAIN = "test"  # the domain libvirt's test driver defines (and starts) by default


def open_and_keep() -> Any:
    # The test driver forgets everything when the last connection in this process
    # closes; the peers open and close their own connections per request, so this
    # one stays open for the life of the process.
    return libvirt.open("test:///default")


def publish_forever(conn: Any, path: str, interval: float = 0.05) -> None:
    def loop() -> None:
        last = ""
        while True:
            dom = conn.lookupByName(DOMAIN)
            data = json.dumps({
                "active": bool(dom.isActive()),
                "xml": dom.XMLDesc(0),
                "inactive_xml": dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE),
            })
            if data != last:
                tmp = f"{path}.tmp"
                with open(tmp, "w") as fh:
                    fh.write(data)
                os.replace(tmp, path)
                last = data
            time.sleep(interval)

    threading.Thread(target=loop, daemon=True).start()
