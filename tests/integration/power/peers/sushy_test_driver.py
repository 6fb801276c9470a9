"""sushy-emulator (libvirt driver) in front of libvirt's in-process test driver.

argv[1]: a 0600 JSON file with username, password, port, state_file, workdir.
Basic auth via an htpasswd file with bcrypt at 4 rounds (the default costs ~0.3 s a request).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import bcrypt

sys.path.insert(0, os.path.dirname(__file__))
from _common import open_and_keep, publish_forever

cfg = json.loads(Path(sys.argv[1]).read_text())
conn = open_and_keep()
workdir = cfg["workdir"]
htpasswd = os.path.join(workdir, "htpasswd")
digest = bcrypt.hashpw(cfg["password"].encode(), bcrypt.gensalt(rounds=4)).decode()
with open(htpasswd, "w") as fh:
    fh.write(f"{cfg['username']}:{digest}\n")
conf = os.path.join(workdir, "emulator.conf")
with open(conf, "w") as fh:
    fh.write("SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\n")
    fh.write(f"SUSHY_EMULATOR_LISTEN_PORT = {int(cfg['port'])}\n")
    fh.write("SUSHY_EMULATOR_LIBVIRT_URI = 'test:///default'\n")
    fh.write(f"SUSHY_EMULATOR_AUTH_FILE = {htpasswd!r}\n")
    fh.write("SUSHY_EMULATOR_BOOT_LOADER_MAP = {'UEFI': {'x86_64': '/usr/share/OVMF/OVMF_CODE.fd'}, "
             "'Legacy': {'x86_64': None}}\n")
publish_forever(conn, cfg["state_file"])
sys.argv = ["sushy-emulator", "--config", conf]
from sushy_tools.emulator.main import main  # noqa: E402

sys.exit(main())
