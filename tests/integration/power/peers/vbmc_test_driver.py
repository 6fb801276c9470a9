"""virtualbmc's VirtualBMC (a pyghmi Bmc) in front of libvirt's in-process test driver.

argv[1]: a 0600 JSON file with username, password, port, state_file.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from _common import DOMAIN, open_and_keep, publish_forever
from virtualbmc.vbmc import VirtualBMC

cfg = json.loads(Path(sys.argv[1]).read_text())
conn = open_and_keep()
dom = conn.lookupByName(DOMAIN)
if dom.isActive():
    dom.destroy()  # start powered off, so a power-on is observable
publish_forever(conn, cfg["state_file"])
bmc = VirtualBMC(username=cfg["username"], password=cfg["password"], port=int(cfg["port"]),
                 address="127.0.0.1", domain_name=DOMAIN, libvirt_uri="test:///default")
bmc.listen(timeout=1)
