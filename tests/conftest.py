"""Session-wide test settings shared by every area.

Each area keeps its own fixtures in its own conftest.py; this file only makes
sure no test writes to the real data directory or talks to a real controller.
"""

from __future__ import annotations

import os
import tempfile

import pytest

_SESSION_DATA = tempfile.mkdtemp(prefix="prov-test-data-")
# Before any provisioner module caches settings: never touch /var/lib/prov or ~/.config/prov.
os.environ.setdefault("PROV_DATA_DIR", _SESSION_DATA)
os.environ.setdefault("PROV_CLIENT_CONFIG", os.path.join(_SESSION_DATA, "client.yaml"))
os.environ.pop("PROV_URL", None)
os.environ.pop("PROV_TOKEN", None)
os.environ.pop("PROV_DATABASE_URL", None)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", help="rewrite golden files from current output")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--update-golden"):
        os.environ["PROV_UPDATE_GOLDEN"] = "1"
