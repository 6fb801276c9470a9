"""prov.provisioner.prov: the hosts of a prov controller as an Ansible inventory plugin.

It runs inside Ansible's Python, which may not have prov installed, so it never imports
``provisioner``: it reads the REST API with Ansible's own ``open_url`` and the prov login
profile file with PyYAML (an ansible-core dependency). The group and variable names follow
provisioner/conductor/inventory.py (what ``prov inventory ansible`` and every configure run
use), plus the state, profile and OS groups the script does not have.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, NoReturn
from urllib.error import HTTPError, URLError
from urllib.parse import urlencode, urlsplit, urlunsplit

from ansible.errors import AnsibleParserError
from ansible.module_utils.urls import ConnectionError as UrlsConnectionError
from ansible.module_utils.urls import open_url
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable

DOCUMENTATION = r"""
name: prov
short_description: Hosts of a prov controller, grouped by rack, role, state, profile and OS
version_added: "0.1.0"
author:
  - prov authors
description:
  - Reads every host of a prov controller through its REST API (C(GET /api/v1/hosts), page by page,
    and C(GET /api/v1/profiles) for each profile's OS family and Ansible variables).
  - "Each host is put in the groups C(rack_<rack>), C(role_<role>) (one per role), C(state_<state>),
    C(profile_<profile>) and C(os_<os family>). Names are lowercased and every character other than
    a letter, a digit or C(_) becomes C(_): state C(install-wait) is the group C(state_install_wait)."
  - "Host variables: C(ansible_host) (the host's IP address, else its boot NIC's, else any NIC's, else
    its name), C(prov_host_id), C(prov_state), C(prov_rack), C(prov_u_position), C(prov_roles),
    C(prov_profile), C(prov_os) and C(prov_os_family) (the profile's OS family), C(prov_container_engine),
    C(prov_power_state), C(prov_netboot), C(prov_macs), C(prov_boot_mac), C(prov_installed_at); and the
    profile's C(params.ansible_vars) (see O(profile_vars))."
  - The inventory source is a YAML file whose name ends in C(.prov.yml) or C(.prov.yaml), or is
    C(prov.yml) or C(prov.yaml).
  - Values read from the controller are not trusted as templates.
notes:
  - The token is best given by C(PROV_TOKEN) or a C(prov login) profile, not written in the file.
  - "Ansible only warns when an inventory source fails to parse and goes on without its hosts; to make
    a failure (an unreachable controller, a refused token) fail the run, set
    C(ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED=true) (C([inventory] any_unparsed_is_failed) in C(ansible.cfg))."
  - Redirects are not followed, so the token is only ever sent to O(url).
extends_documentation_fragment:
  - constructed
  - inventory_cache
options:
  plugin:
    description: Marks this file as a prov inventory source.
    required: true
    type: str
    choices: [prov.provisioner.prov]
  url:
    description:
      - The controller's base URL, for example C(https://prov.example.net:8700).
      - Unset, the URL of the C(prov login) profile (O(profile)), else C(http://127.0.0.1:8700).
    type: str
    env:
      - name: PROV_URL
  token:
    description:
      - An API token (C(prov token create)); sent as C(Authorization Bearer).
      - Unset, the token of the C(prov login) profile (O(profile)), used only when that profile's URL
        is O(url).
    type: str
    env:
      - name: PROV_TOKEN
  profile:
    description:
      - The login profile of the prov client file to take O(url) and O(token) from; unset, the file's
        current profile, else C(default).
    type: str
    env:
      - name: PROV_PROFILE
  client_config:
    description: The prov client file that C(prov login) writes.
    type: path
    default: ~/.config/prov/client.yaml
    env:
      - name: PROV_CLIENT_CONFIG
  validate_certs:
    description: Verify the controller's TLS certificate.
    type: bool
    default: true
  ca_path:
    description: A PEM file of the CA that signed the controller's certificate.
    type: path
  timeout:
    description: Seconds to wait for each response of the controller.
    type: int
    default: 30
  states:
    description:
      - Only hosts in these lifecycle states (for example V(active)); empty, every host.
      - An unknown state is refused by the controller (the error names it).
    type: list
    elements: str
    default: []
    aliases: [state]
  page_size:
    description: Hosts per API request (the controller serves at most 1000).
    type: int
    default: 500
  profile_vars:
    description:
      - Add the variables of the host profile's C(params.ansible_vars), as C(prov inventory ansible)
        does. Names starting with C(ansible_) or C(prov_) are left out.
    type: bool
    default: true
"""

EXAMPLES = r"""
# inventory.prov.yml: every host of the controller PROV_URL names, with PROV_TOKEN
plugin: prov.provisioner.prov

---
# only active hosts, a group per power state and a shorter host variable
plugin: prov.provisioner.prov
url: https://prov.example.net:8700
states: [active]
keyed_groups:
  - key: prov_power_state
    prefix: power
compose:
  rack_position: prov_u_position
groups:
  docker_hosts: "'docker' in prov_roles"

# ansible-inventory -i inventory.prov.yml --graph
"""

DEFAULT_URL = "http://127.0.0.1:8700"  # what prov serve listens on, as provisioner/client.py's DEFAULT_URL
MAX_PAGE = 1000  # provisioner/api/pagination.py MAX_LIMIT
_GROUP_SAFE = re.compile(r"[^a-z0-9_]")  # as provisioner/conductor/inventory.py group_name
_SOURCE_NAMES = ("prov.yml", "prov.yaml")
_SOURCE_SUFFIXES = (".prov.yml", ".prov.yaml")
_ERROR_TEXT = 200  # characters of a controller's error message shown (one readable line)


def group_name(prefix: str, value: str) -> str:
    """``rack-1`` in the rack groups is ``rack_rack_1``: Ansible group names must be identifiers."""
    return f"{prefix}_{_GROUP_SAFE.sub('_', value.lower())}"


def _one_line(text: str, limit: int = _ERROR_TEXT) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shown_url(url: str) -> str:
    """The URL as messages show it: never a user:password@ part."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):
    NAME = "prov.provisioner.prov"

    def __init__(self) -> None:
        super().__init__()
        self._url = DEFAULT_URL
        self._token: str | None = None

    def verify_file(self, path: str) -> bool:
        name = os.path.basename(path)
        return bool(super().verify_file(path)) and (name in _SOURCE_NAMES or name.endswith(_SOURCE_SUFFIXES))

    def parse(self, inventory: Any, loader: Any, path: str, cache: bool = True) -> None:
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        self._url, self._token = self._credentials()
        # The URL and the state filter are in the key: the same file pointed at another controller
        # (PROV_URL) or filtering other states never reads what the cache holds for the first.
        cache_key = self.get_cache_key(f"{path}\n{self._url}\n{sorted(self.get_option('states') or [])}")
        use_cache = bool(self.get_option("cache")) and cache
        update_cache = bool(self.get_option("cache")) and not cache
        data = None
        if use_cache:
            try:
                data = self._cache[cache_key]
            except KeyError:
                update_cache = True
        if data is None:
            data = self._fetch()
        if update_cache:
            self._cache[cache_key] = data
        self._populate(data)

    # ------------------------------------------------------------------ where and who
    def _credentials(self) -> tuple[str, str | None]:
        url = self.get_option("url")
        token = self.get_option("token")
        login = {} if url and token else self._login_profile()
        login_url = (login.get("url") or "").rstrip("/")
        url = (url or login_url or DEFAULT_URL).rstrip("/")
        if not token and login.get("token") and login_url == url:
            # A profile's token goes only to that profile's controller, never to another url.
            token = login["token"]
        if urlsplit(url).scheme not in ("http", "https"):
            self._fail(f"url must be an http:// or https:// URL, not {_one_line(_shown_url(url), 80)!r}")
        return url, token or None

    def _login_profile(self) -> dict[str, str]:
        """The selected profile of the prov client file (the format of provisioner/client.py)."""
        path = os.path.expanduser(str(self.get_option("client_config")))
        named = self.get_option("profile")
        if not os.path.isfile(path):
            if named:
                self._fail(f"no login profile {named!r}: {path} does not exist (prov login --profile {named})")
            return {}
        import yaml  # ansible-core depends on PyYAML

        try:
            with open(path, encoding="utf-8") as fh:
                data = yaml.safe_load(fh)
        except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
            self._fail(f"{path} is not a prov client file ({exc.__class__.__name__})")
        if not isinstance(data, dict):
            return {}
        if "profiles" not in data and ("url" in data or "token" in data):  # the single-controller format
            profiles: dict[str, Any] = {"default": data}
            current = "default"
        else:
            raw = data.get("profiles")
            profiles = raw if isinstance(raw, dict) else {}
            current = data.get("current") or "default"
        name = str(named or current)
        entry = profiles.get(name)
        if named and not isinstance(entry, dict):
            known = ", ".join(sorted(str(k) for k in profiles)) or "none"
            self._fail(f"no login profile {name!r} in {path} (known: {known}; prov login --profile {name})")
        if not isinstance(entry, dict):
            return {}
        return {k: str(entry[k]) for k in ("url", "token") if entry.get(k) is not None}

    # ------------------------------------------------------------------ the API
    def _fetch(self) -> dict[str, Any]:
        """What the inventory is built from (and what the cache holds): hosts and profiles."""
        profiles = {}
        for row in self._pages("/api/v1/profiles", {}):
            params = row.get("params")
            extra = params.get("ansible_vars") if isinstance(params, dict) else None
            profiles[str(row.get("name"))] = {
                "os_family": row.get("os_family"),
                "container_engine": row.get("container_engine"),
                "ansible_vars": extra if isinstance(extra, dict) else {},
            }
        hosts: dict[str, dict[str, Any]] = {}
        for state in self.get_option("states") or [None]:
            for row in self._pages("/api/v1/hosts", {"state": state} if state else {}):
                hosts[str(row.get("name"))] = _host_record(row)
        return {"hosts": [hosts[name] for name in sorted(hosts)], "profiles": profiles}

    def _pages(self, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        size = min(max(int(self.get_option("page_size")), 1), MAX_PAGE)
        rows: list[dict[str, Any]] = []
        while True:
            body = self._get(path, {**params, "limit": size, "offset": len(rows)})
            page = body.get("data") if isinstance(body, dict) else None
            if not isinstance(page, list) or not all(isinstance(r, dict) and r.get("name") for r in page):
                self._fail(f"GET {path} on {_shown_url(self._url)} did not answer a page of rows "
                           "(is url a prov controller?)")
            rows.extend(page)
            # count is the total matching the filters; an empty page ends the walk even if rows
            # were deleted while paging (count then shrinks, or stays stale on an older page).
            if not page or len(rows) >= int(body.get("count") or 0):
                return rows

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        url = f"{self._url}{path}?{urlencode(params)}"
        headers = {"Accept": "application/json", "X-Prov-Context": "ansible inventory"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        where = _shown_url(self._url)
        try:
            # follow_redirects none: the Authorization header never goes to a host the operator did not
            # name. use_netrc off: a ~/.netrc entry would replace our Bearer header with Basic auth.
            resp = open_url(url, method="GET", headers=headers, timeout=int(self.get_option("timeout")),
                            validate_certs=bool(self.get_option("validate_certs")),
                            ca_path=self.get_option("ca_path"), follow_redirects="none", use_netrc=False,
                            http_agent="prov-ansible-inventory")
            raw = resp.read()
        except HTTPError as exc:
            self._fail(self._http_error(path, exc))
        except (URLError, UrlsConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            self._fail(f"cannot reach the prov controller at {where}: {_one_line(str(reason), 120)}")
        try:
            return json.loads(raw)
        except ValueError:
            self._fail(f"GET {path} on {where} did not answer JSON (is url a prov controller?)")

    def _http_error(self, path: str, exc: HTTPError) -> str:
        where = _shown_url(self._url)
        message = ""
        try:
            body = json.loads(exc.read() or b"{}")
            if isinstance(body, dict):
                message = str(body.get("message") or body.get("detail") or "")
        except (ValueError, OSError):
            pass
        status = f"HTTP {exc.code}" + (f": {_one_line(message)}" if message else "")
        if exc.code == 401:
            if not self._token:
                return (f"{where} asks for a token ({status}): set token, PROV_TOKEN or a prov login profile "
                        "for this url")
            return f"{where} refused the token ({status}): check token, PROV_TOKEN or the prov login profile"
        if exc.code == 403:
            return f"the token may not read {path} on {where} ({status})"
        if 300 <= exc.code < 400:
            location = _one_line(_shown_url(exc.headers.get("Location") or "?"), 120)
            return f"{where} redirects to {location} ({status}): set url to the controller's own address"
        return f"GET {path} on {where} failed ({status})"

    def _fail(self, message: str) -> NoReturn:
        """One readable line, the token never in it (even if a controller echoed it back)."""
        if self._token:
            message = message.replace(self._token, "***")
        raise AnsibleParserError(f"prov inventory: {message}")

    # ------------------------------------------------------------------ the inventory
    def _populate(self, data: dict[str, Any]) -> None:
        profiles = data.get("profiles") or {}
        strict = bool(self.get_option("strict"))
        for host in data.get("hosts") or []:
            name = host["name"]
            profile = profiles.get(host.get("profile") or "") or {}
            self.inventory.add_host(name)
            hostvars = self._host_vars(host, profile)
            for key, value in hostvars.items():
                self.inventory.set_variable(name, key, value)
            for group in _groups(host, profile):
                self.inventory.add_child(self.inventory.add_group(group), name)
            hostvars = self.inventory.get_host(name).get_vars()
            self._set_composite_vars(self.get_option("compose"), hostvars, name, strict=strict)
            self._add_host_to_composed_groups(self.get_option("groups"), hostvars, name, strict=strict)
            self._add_host_to_keyed_groups(self.get_option("keyed_groups"), hostvars, name, strict=strict)

    def _host_vars(self, host: dict[str, Any], profile: dict[str, Any]) -> dict[str, Any]:
        hostvars: dict[str, Any] = {}
        if self.get_option("profile_vars"):
            # Operators put role switches (hardening_auditd: false) in the profile; what prov itself
            # says about the host (prov_*) and how Ansible connects (ansible_*) are not theirs to override.
            hostvars.update({str(k): v for k, v in (profile.get("ansible_vars") or {}).items()
                             if not str(k).startswith(("ansible_", "prov_"))})
        hostvars.update({
            "ansible_host": host["address"],
            "prov_host_id": host.get("id"),
            "prov_state": host.get("state"),
            "prov_rack": host.get("rack"),
            "prov_u_position": host.get("u_position"),
            "prov_roles": list(host.get("roles") or []),
            "prov_profile": host.get("profile"),
            "prov_os": profile.get("os_family"),
            "prov_os_family": profile.get("os_family"),
            "prov_container_engine": profile.get("container_engine"),
            "prov_power_state": host.get("power_state"),
            "prov_netboot": host.get("netboot"),
            "prov_macs": list(host.get("macs") or []),
            "prov_boot_mac": host.get("boot_mac"),
            "prov_installed_at": host.get("installed_at"),
        })
        return hostvars


def _host_record(row: dict[str, Any]) -> dict[str, Any]:
    """The fields of an API host the inventory uses (all the cache keeps: no BMC details)."""
    nics = [n for n in row.get("nics") or [] if isinstance(n, dict)]
    boot = next((n for n in nics if n.get("boot")), None)
    # Where SSH reaches the host, as provisioner/conductor/inventory.py host_address (boot NIC first).
    address = row.get("ip_address") or next(
        (n["ip"] for n in ([boot] if boot else []) + nics if n.get("ip")), None) or row["name"]
    keep = ("id", "name", "state", "rack", "u_position", "roles", "profile", "power_state", "netboot",
            "installed_at")
    record = {k: row.get(k) for k in keep}
    record.update(address=address, macs=[n.get("mac") for n in nics], boot_mac=boot.get("mac") if boot else None)
    return record


def _groups(host: dict[str, Any], profile: dict[str, Any]) -> list[str]:
    groups = []
    if host.get("rack"):
        groups.append(group_name("rack", host["rack"]))
    groups.extend(group_name("role", role) for role in host.get("roles") or [])
    if host.get("state"):
        groups.append(group_name("state", host["state"]))
    if host.get("profile"):
        groups.append(group_name("profile", host["profile"]))
    if profile.get("os_family"):
        groups.append(group_name("os", profile["os_family"]))
    return groups
