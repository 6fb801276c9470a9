"""What prov runs and reads at run time, and which Debian package of deploy/install.sh provides it.

Shared by tests/unit/deploy/test_runtime_packages.py (``dpkg -S`` on this
machine: each need belongs to a package of RUNTIME_PKGS, or to an Essential
or required one every Debian system has) and by the fresh-machine tier
(tests/fresh/: each need is there in a pristine Debian root after the
README's first command).

``COMMANDS`` is declared by hand, with the reason, because some programs are
run by others (libvirtd starts QEMU, the lab's recipes are shell) or named
through a setting (dnsmasq). ``scan_commands()`` reads provisioner/ for the
programs it starts itself (the first word of a literal argv, ``shutil.which``)
so that a new one cannot be added without declaring it here.
"""

from __future__ import annotations

import ast
import functools
import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
INSTALL_SH = ROOT / "deploy" / "install.sh"
PACKAGE = ROOT / "provisioner"

# program -> why prov needs it. "pip:" marks programs that come with the venv, not apt.
COMMANDS: dict[str, str] = {
    "dnsmasq": "DHCP / proxy-DHCP (drivers/boot/dhcp.py; the binary is a setting, dnsmasq by default)",
    "qemu-system-x86_64": "libvirtd starts it for every guest (drivers/virt, the lab)",
    "qemu-img": "qcow2 images converted to raw for the deploy agent (lab/images.py)",
    "virsh": "the lab checks its libvirtd (lab/lab.py, lab/libvirtd.py)",
    "libvirtd": "the lab's own libvirtd when none answers (lab/libvirtd.py)",
    "virtlogd": "started beside the lab's libvirtd",
    "ssh": "Ansible's transport; remote pre-flight and console tails (drivers/virt)",
    "ssh-keygen": "the controller's Ansible key (drivers/config/ansible.py)",
    "ssh-keyscan": "a host's SSH key after its install (conductor/install.py)",
    "genisoimage": "NoCloud seed ISOs for guests (drivers/virt/libvirt_storage.py)",
    "git": "prov apply --git (gitops/git.py)",
    "ip": "the lab's namespaces and bridges (lab/lab.py, lab/libvirtd.py)",
    "mount": "the lab's libvirtd in its own mount namespace (lab/libvirtd.py)",
    "ipmi_sim": "the lab's BMCs (lab/bmc.py)",
    "ipmitool": "the lab checks its BMCs answer (lab/bmc.py)",
    "apt-cacher-ng": "the lab hosts' package proxy (lab/lab.py)",
    "zstd": "the ramdisk's kernel extractor and initrd (lab/ramdisk.py, recipes/build-ramdisk.sh)",
    "python3": "the vmlinux extractor under the recipe; Ansible's interpreter",
    # recipes/build-ramdisk.sh
    "apt-get": "downloads the kernel and busybox .debs",
    "apt-cache": "resolves their versions (the cache key)",
    "dpkg": "dpkg -x unpacks them",
    "depmod": "modules.dep of the unpacked kernel",
    "modprobe": "the modules' load order (modprobe --show-depends)",
    "cpio": "the initrd archive",
    # recipes/build-image.sh
    "debootstrap": "the lab image's root tree",
    "chroot": "apt and update-initramfs inside it",
    "mke2fs": "the image's ext4 file system (mke2fs -d)",
    "sfdisk": "its partition table",
    "grub-mkimage": "GRUB's core.img for BIOS",
    "ansible-playbook": "pip: the configure step (ansible-core in the venv)",
    "xorriso": "optional: used instead of genisoimage when only it is installed",
}
OPTIONAL = {name for name, why in COMMANDS.items() if why.startswith("optional:")}

# Files prov serves or hands to QEMU, from Debian packages.
FILES: dict[str, str] = {
    "/usr/lib/ipxe/undionly.kpxe": "first-stage boot for BIOS PXE (drivers/boot/bootfiles.py)",
    "/usr/lib/ipxe/ipxe.efi": "first-stage boot for UEFI",
    "/usr/lib/PXELINUX/pxelinux.0": "pxelinux boot loader",
    "/usr/lib/syslinux/modules/bios/ldlinux.c32": "pxelinux's second stage",
    "/usr/share/OVMF/OVMF_CODE_4M.fd": "UEFI guests (drivers/virt/spec.py)",
    "/usr/share/OVMF/OVMF_VARS_4M.fd": "their NVRAM template",
    "/usr/lib/grub/i386-pc/boot.img": "the lab image's MBR (recipes/build-image.sh)",
}

_RUNNERS = {"run", "Popen", "check_output", "check_call", "call", "_run", "run_checked", "create_subprocess_exec"}


def _literal(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def scan_commands(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Programs provisioner/ starts itself: name -> {file:line}."""
    found: dict[str, set[str]] = {}

    def add(name: str | None, path: Path, node: ast.AST) -> None:
        # "module:attribute" is an import string (uvicorn.run("provisioner.server:worker_app")), not a program.
        if name and "/" not in name and " " not in name and ":" not in name:
            found.setdefault(name, set()).add(f"{path.relative_to(package.parent)}:{getattr(node, 'lineno', 0)}")

    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and node.args:
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                first = node.args[0]
                if name == "which" or (name in _RUNNERS and not isinstance(first, ast.List)):
                    add(_literal(first), path, node)
                elif name in _RUNNERS and isinstance(first, ast.List) and first.elts:
                    add(_literal(first.elts[0]), path, node)
            elif isinstance(node, ast.Assign) and isinstance(node.value, ast.List) and node.value.elts:
                # cmd = ["ssh", ...]; subprocess.run(cmd): count argv-looking lists named cmd/argv.
                targets = [getattr(t, "id", "") for t in node.targets]
                if any(t in ("cmd", "argv", "command") for t in targets):
                    add(_literal(node.value.elts[0]), path, node)
            elif (isinstance(node, ast.For) and isinstance(node.iter, ast.Tuple)
                  and "which" in ast.dump(ast.Module(body=node.body, type_ignores=[]))):
                # for tool in ("virsh", "ip"): if shutil.which(tool) is None: ...
                for elt in node.iter.elts:
                    add(_literal(elt), path, node)
    return found


def runtime_packages(install_sh: str | None = None) -> list[str]:
    """RUNTIME_PKGS of deploy/install.sh (or of the given script text)."""
    text = install_sh if install_sh is not None else INSTALL_SH.read_text()
    block = text.split("RUNTIME_PKGS=(\n", 1)[1].split("\n)\n", 1)[0]
    return [word for line in block.splitlines() for word in line.split("#", 1)[0].split()]


def _locate(command: str) -> str | None:
    # Debian's own directories first: a pyenv or venv shim on PATH is no Debian package.
    return shutil.which(command, path="/usr/sbin:/usr/bin:/sbin:/bin") or shutil.which(command)


def _variants(path: str) -> list[str]:
    """The names dpkg may have recorded for ``path`` (merged /usr: /bin/x is /usr/bin/x)."""
    out = []
    for p in (path, os.path.realpath(path)):
        out += [p, p[len("/usr"):] if p.startswith("/usr/") else "/usr" + p]
    return list(dict.fromkeys(out))


@functools.cache
def _dpkg_owners(paths: tuple[str, ...]) -> dict[str, str]:
    """path -> owning package, for every path dpkg knows (one dpkg -S for all: each call reads every list)."""
    out = subprocess.run(["dpkg", "-S", *paths], capture_output=True, text=True, check=False)
    owners = {}
    for line in out.stdout.splitlines():
        if line.startswith("diversion ") or ": " not in line:
            continue
        pkgs, path = line.rsplit(": ", 1)
        owners[path] = pkgs.split(",")[0].strip().split(":")[0]
    return owners


def owning_packages(paths: list[str]) -> dict[str, str]:
    """path -> the Debian package that ships it, for the paths some package owns."""
    variants = {path: _variants(path) for path in paths}
    owners = _dpkg_owners(tuple(sorted({v for vs in variants.values() for v in vs})))
    return {path: next(owners[v] for v in vs if v in owners) for path, vs in variants.items()
            if any(v in owners for v in vs)}


def closure(packages: list[str]) -> set[str]:
    """``packages`` and everything they depend on, recursively (as apt would install them)."""
    out = subprocess.run(["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
                          "--no-breaks", "--no-replaces", "--no-enhances", *packages],
                         capture_output=True, text=True, check=True)
    return {line.strip().split(":")[0] for line in out.stdout.splitlines() if line and not line.startswith(" ")}


def _always_there(package: str) -> bool:
    """Essential or Priority: required packages are on every Debian system (debootstrap minbase too)."""
    out = subprocess.run(["dpkg-query", "-W", "-f=${Essential} ${Priority}", package],
                         capture_output=True, text=True, check=False)
    return out.returncode == 0 and (out.stdout.startswith("yes") or out.stdout.endswith("required"))


def unprovided(packages: list[str], venv_bin: Path) -> list[str]:
    """Needs that neither ``packages`` nor their dependencies provide (by ``dpkg -S`` on this machine).

    [] when the list is honest. A need from an Essential/required package counts as provided.
    """
    problems = []
    located: dict[str, str] = {}
    for need in [c for c in COMMANDS if c not in OPTIONAL] + list(FILES):
        if COMMANDS.get(need, "").startswith("pip:"):
            if not (venv_bin / need).exists():
                problems.append(f"{need}: not in {venv_bin} (it comes with the venv)")
            continue
        path = _locate(need) if need in COMMANDS else need
        if path is None or not Path(path).exists():
            problems.append(f"{need}: not on this machine, so its package cannot be checked")
        else:
            located[need] = path
    owners = owning_packages(list(located.values()))
    wanted = closure(packages)
    for need, path in located.items():
        owner = owners.get(path)
        if owner is None:
            problems.append(f"{need} ({path}): no Debian package owns it")
        elif owner not in wanted and not _always_there(owner):
            why = COMMANDS.get(need) or FILES.get(need)
            problems.append(f"{need} ({path}, {why}) comes from {owner}: neither RUNTIME_PKGS nor their "
                            "dependencies have it")
    return problems
