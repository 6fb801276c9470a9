"""prov as a real wheel: ``python -m build``, installed into a fresh venv outside the checkout, serves.

deploy/Dockerfile and any ``pip install`` user get prov from a wheel, not from
the checkout, so a data file that only exists in the source tree would be
missing there: the Alembic revisions ``prov serve`` applies on start, the
templates it render-checks at start-up, the playbooks, the lab's boot payload
recipes. The build runs on a clean copy of the tree (the files git knows), so
nothing is written into the checkout and nothing local leaks into the wheel.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.fresh.machine import clean_tree
from tests.support.helpers import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
VERSION = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), flags=re.M).group(1)  # type: ignore[union-attr]
TOKEN_RE = re.compile(r"It is shown only now:\s+(\S+)")


@dataclass
class Installed:
    wheel: Path
    venv: Path
    outside: Path  # a directory with no checkout in sight: the cwd of every command

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.venv / "bin" / args[0]), *args[1:]], cwd=self.outside, env=_env(self),
                              capture_output=True, text=True, timeout=timeout)


def _env(inst: Installed) -> dict[str, str]:
    # Nothing of the checkout or of the test session: no PYTHONPATH, no PROV_* settings.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROV_", "PYTHON", "VIRTUAL_ENV"))}
    env["HOME"] = str(inst.outside)
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    clean_tree(ROOT, src)
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "build", "--outdir", str(base / "dist"), str(src)],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    t_build = time.monotonic() - t0
    (wheel,) = (base / "dist").glob(f"provisioner-{VERSION}-*.whl")
    assert list((base / "dist").glob(f"provisioner-{VERSION}.tar.gz")), "no sdist"
    venv = base / "venv"
    outside = base / "elsewhere"
    outside.mkdir()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    inst = Installed(wheel, venv, outside)
    t0 = time.monotonic()
    pip = inst.run("pip", "install", "-q", str(wheel), timeout=1200)
    assert pip.returncode == 0, pip.stderr[-4000:]
    print(f"python -m build: {t_build:.0f} s; pip install of the wheel and its dependencies: "
          f"{time.monotonic() - t0:.0f} s")
    yield inst


def test_the_wheel_carries_the_package_data(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    src = ROOT / "provisioner"
    subs = ("migrations", "templates", "playbooks", "lab/recipes", "api/static",  # static: /docs, /redoc
            "api/ui/templates", "api/ui/assets",  # the web console (/ui)
            "ansible_collections")  # the collection prov.provisioner (its inventory plugin)
    needed = [p.relative_to(ROOT).as_posix() for sub in subs
              for p in (src / sub).rglob("*")
              if p.is_file() and "__pycache__" not in p.parts and p.name != "README"]  # Alembic's, for humans
    needed.append("provisioner/py.typed")
    assert len(needed) > 40
    missing = [n for n in needed if n not in names]
    assert not missing, f"not in the wheel: {missing}"
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "prov = provisioner.cli.main:main" in zipfile.ZipFile(installed.wheel).read(entry_points).decode()


def test_prov_version_is_the_distributions(installed: Installed) -> None:
    out = installed.run("prov", "--version")
    assert out.returncode == 0 and out.stdout.strip() == f"prov {VERSION}", out


def test_the_package_is_imported_from_the_venv(installed: Installed) -> None:
    code = ("import provisioner, provisioner.settings as s, provisioner.lab.ramdisk as r; "
            "print(provisioner.__file__); print(s.Settings().templates_dir); print(r.BUILD_SCRIPT)")
    out = installed.run("python", "-c", code)
    assert out.returncode == 0, out.stderr
    site = str(installed.venv / "lib")
    for line in out.stdout.split():
        assert line.startswith(site), (line, "is outside the venv")
        assert Path(line).exists(), line


def test_the_recipes_run_from_the_wheel(installed: Installed) -> None:
    # The image recipe's key hashes the script and its static files: the same key means the same recipe.
    code = "from provisioner.lab import images; print(images.image_key())"
    from_wheel = installed.run("python", "-c", code)
    assert from_wheel.returncode == 0, from_wheel.stderr
    here = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert from_wheel.stdout == here.stdout and from_wheel.stdout.strip()
    rd = installed.run("python", "-c", "from provisioner.lab import ramdisk as r; "
                       "print(all(p.is_file() for p in r._KEY_INPUTS), r.resolve_versions())")
    assert rd.returncode == 0 and rd.stdout.startswith("True {'linux-image-"), rd


def test_the_inventory_plugin_loads_from_the_wheel(installed: Installed) -> None:
    path = installed.run("prov", "ansible", "collections-path")
    assert path.returncode == 0 and path.stdout.strip().startswith(str(installed.venv / "lib")), path
    env = dict(_env(installed), ANSIBLE_COLLECTIONS_PATH=path.stdout.strip())
    doc = subprocess.run([str(installed.venv / "bin" / "ansible-doc"), "-t", "inventory", "prov.provisioner.prov"],
                         cwd=installed.outside, env=env, capture_output=True, text=True, timeout=120)
    assert doc.returncode == 0 and "rack_<rack>" in doc.stdout and "WARNING" not in doc.stderr, doc


def test_prov_serve_from_the_wheel(installed: Installed, tmp_path: Path) -> None:
    port, tftp = free_port(), free_port()
    env = dict(_env(installed), PROV_DATA_DIR=str(tmp_path / "data"), PROV_TFTP_PORT=str(tftp),
               PROV_DHCP_ENABLED="false", PROV_POWER_SYNC_ENABLED="false")
    log = tmp_path / "serve.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen([str(installed.venv / "bin" / "prov"), "serve", "--port", str(port)],
                                cwd=installed.outside, env=env, stdout=fh, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-4000:]
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        else:
            pytest.fail(f"no /healthz within 90 s: {log.read_text()[-4000:]}")
        text = log.read_text()
        (token,) = TOKEN_RE.findall(text)
        # Migrations applied, every template found and render-checked, TFTP serving the boot root.
        assert "database schema at head" in text
        assert re.search(r"all \d+ templates passed their check", text), text[-3000:]
        assert f"on 127.0.0.1:{tftp}" in text
        templates = httpx.get(f"{url}/api/v1/templates", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert templates.status_code == 200 and "preseed" in templates.text
    finally:
        proc.terminate()
        proc.wait(30)
