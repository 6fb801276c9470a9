#!/usr/bin/env python3
"""Build a reproducible rootfs tarball holding a static busybox and its applet links.

Usage: build_rootfs.py BUSYBOX OUT.tar. Every member has mtime 0 and uid/gid 0,
so the same busybox always gives the same bytes (the copy to targets stays
unchanged on a second run).
"""

import io
import os
import sys
import tarfile

APPLETS = ("sh", "echo", "cat", "ls", "true", "sleep")


def main() -> None:
    busybox, out = sys.argv[1], sys.argv[2]
    tmp = out + ".part"
    with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tar:
        for d in ("bin", "tmp", "etc"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        with open(busybox, "rb") as f:
            data = f.read()
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
        for name in APPLETS:
            info = tarfile.TarInfo(f"bin/{name}")
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, "busybox", 0o777
            tar.addfile(info)
    os.replace(tmp, out)


if __name__ == "__main__":
    main()
