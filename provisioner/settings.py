"""The one settings object.

Values come from ``PROV_*`` environment variables, then an optional TOML/YAML
config file named by ``PROV_CONFIG`` (or ``$PROV_DATA_DIR/prov.yaml``), then the
defaults below. The defaults give a working controller on loopback with no
configuration at all: SQLite in the data directory, API on 127.0.0.1:8700,
TFTP on 127.0.0.1 (port 69 needs root; ``--tftp-port`` moves it).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

# The repository root when running from a checkout; templates/ and playbooks/ live there.
# Templates and playbooks ship inside the package (package data), so a wheel install finds them too.
_PACKAGE_DIR = Path(__file__).resolve().parent


def _default_data_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/prov")
    return Path.home() / ".local" / "share" / "prov"


class _ConfigFileSource(PydanticBaseSettingsSource):
    """Reads the optional YAML config file (lower priority than the environment)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path_s = os.environ.get("PROV_CONFIG")
        if path_s:
            path = Path(path_s)
        else:
            data_dir = Path(os.environ.get("PROV_DATA_DIR") or _default_data_dir())
            path = data_dir / "prov.yaml"
        if not path.is_file():
            return {}
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: config file must be a mapping")
        return loaded


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PROV_", extra="ignore")

    data_dir: Path = Field(default_factory=_default_data_dir)
    database_url: str | None = None  # default: sqlite:///{data_dir}/prov.db
    secret_key: str | None = None  # Fernet key; default: {data_dir}/secret.key created 0600

    # API
    host: str = "127.0.0.1"
    port: int = 8700
    # Base URL that installers and iPXE use to reach us (defaults to http://host:port).
    public_url: str | None = None
    max_body_bytes: int = 1_048_576

    # Network boot
    tftp_host: str = "127.0.0.1"
    tftp_port: int = 69
    tftp_enabled: bool = True
    boot_root: Path | None = None  # default: {data_dir}/boot
    dhcp_enabled: bool = False  # dnsmasq is started only when a provisioning network is configured
    dhcp_interface: str | None = None
    dhcp_range: str | None = None  # "10.10.0.100,10.10.0.200,255.255.255.0" or proxy mode "10.10.0.0,proxy"
    unknown_mac_action: str = "ignore"  # ignore | discover
    # TFTP limits (drivers/boot/tftp.py): transfers at once from one client address, and the
    # largest retransmission timeout a client may negotiate (RFC 2349 allows 1-255 s).
    tftp_max_per_client: int = 8
    tftp_max_timeout: int = 5

    # Where templates and playbooks are read from; operators' own templates
    # live in {data_dir}/templates and override the shipped ones.
    templates_dir: Path = _PACKAGE_DIR / "templates"
    # An uploaded template's check runs in a child process killed after this many seconds.
    template_check_timeout: float = 3.0
    playbooks_dir: Path = _PACKAGE_DIR / "playbooks"

    # Power
    power_concurrency: int = 64
    power_call_timeout: float = 10.0
    power_retries: int = 3
    power_sync_interval: float = 300.0
    power_sync_enabled: bool = True

    # Lifecycle deadlines (seconds): how long a host may stay in each wait state before the
    # conductor's timeout check fires TIMEOUT (lifecycle.deadline_seconds reads them).
    verify_timeout: float = 120.0  # verifying: the BMC check
    installing_timeout: float = 600.0  # installing: the controller's power, boot-device and netboot steps
    install_wait_timeout: float = 3600.0  # install-wait: the installer's (or deploy ramdisk's) done/error
    ssh_wait_timeout: float = 900.0  # booting: SSH on the installed system
    configure_timeout: float = 3600.0  # configuring (also the Ansible run's own timeout)
    decommission_timeout: float = 1200.0  # decommissioning
    # Read by nothing yet: an image deploy waits in install-wait, under install_wait_timeout.
    deploy_wait_timeout: float = 1800.0
    # How often the conductor looks for hosts past their state deadline (tests shorten it).
    timeout_check_interval: float = 30.0
    # How often the controller compares reality with the last applied inventory (GitOps
    # drift, see conductor/drift_check.py); 0 turns the periodic check off. Tests shorten it.
    drift_check_interval: float = 300.0

    # Configuration (Ansible): the account and key prov connects with, and how
    # many hosts one run works on at once.
    ansible_user: str = "prov"
    ansible_ssh_key: Path | None = None  # default: {data_dir}/ssh/id_ed25519, created on first use
    ansible_forks: int = 16

    # Install tokens
    install_token_ttl: float = 7200.0

    # Rate limits per source address on the unauthenticated surfaces (provisioner/ratelimit.py):
    # a bucket of `burst` requests refilled at `rate` per second; beyond it, 429 + Retry-After
    # (TFTP per-MAC configs: "file not found"). Generous on purpose: one PXE boot fetches a
    # handful of scripts and files, and a lab's guests all arrive from its forwarder's address.
    # rate 0 turns a limit off; `rate_limit_exempt` lists networks never limited (none: loopback
    # is limited like any other address); at most `rate_limit_addresses` are tracked (LRU).
    # /boot/boot.ipxe, /boot/ipxe/{mac}, TFTP per-MAC configs: 2/s also bounds the history lines
    # a flood of an installing host's script can write (one per fetch, conductor/netboot.py)
    rate_limit_boot_rate: float = 2.0
    rate_limit_boot_burst: int = 120
    rate_limit_files_rate: float = 10.0  # /boot/files/... (one large request per kernel or image)
    rate_limit_files_burst: int = 120
    rate_limit_install_rate: float = 20.0  # /install/v1/... (config, files, reports)
    rate_limit_install_burst: int = 300
    rate_limit_addresses: int = 10_000
    rate_limit_exempt: list[str] = []

    # KVM guests (drivers/virt): the controller's own libvirt ("--host local"), where guests'
    # serial logs go (default /var/log/libvirt/qemu), and the NAT network/pool made on demand.
    virt_uri: str = "qemu:///system"
    virt_console_dir: str | None = None
    virt_network: str = "prov-nat"
    virt_network_subnet: str = "192.168.212.0/24"
    virt_pool: str = "prov"
    virt_pool_dir: str = "/var/lib/libvirt/images/prov"

    # Workflow engine (DBOS Transact, conductor/engine.py)
    executor_id: str | None = None  # default hostname:pid:random; a fixed one resumes its own work on restart
    engine_poll_s: float = 0.1  # queue polling: a queued task starts within this; 0.1 s ~ 10 small reads/s
    install_concurrency: int = 256  # installs in flight across every conductor (install queue's cap)
    task_concurrency: int = 32  # other tasks in flight per conductor (the old runner's 32 threads)
    # Take over every other executor's pending workflows at start: None = on SQLite (one process by
    # construction), not on PostgreSQL, where a membership check must first prove an executor dead.
    engine_takeover_on_start: bool | None = None

    log_level: str = "INFO"
    log_json: bool = True

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _ConfigFileSource(settings_cls))

    # --- derived paths ---------------------------------------------------------
    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'prov.db'}"

    @property
    def boot_dir(self) -> Path:
        return self.boot_root or self.data_dir / "boot"

    @property
    def user_templates_dir(self) -> Path:
        return self.data_dir / "templates"

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    def ensure_dirs(self) -> None:
        for d in (self.data_dir, self.boot_dir, self.user_templates_dir, self.runs_dir):
            d.mkdir(parents=True, exist_ok=True)

    # --- scale-out: roles and cluster membership (issue 14; provisioner/cluster.py) -------------
    # The roles this process runs (``prov serve --role api,conductor``): api, conductor, boot.
    # Empty: all three in one process, the embedded default. A comma-separated list in PROV_ROLES.
    roles: Annotated[list[str], NoDecode] = []
    # Uvicorn worker processes of the api role (``--workers``); more than one needs PostgreSQL.
    api_workers: int = Field(default=1, ge=1, le=64)
    # The provisioning networks (CIDRs) a boot agent serves (``--network``; PROV_BOOT_NETWORKS is
    # comma-separated); empty: every rack's, as the embedded single process does.
    boot_networks: Annotated[list[str], NoDecode] = []
    # Every member writes its heartbeat this often; one silent for cluster_takeover_grace is stale,
    # and a conductor claims it dead and takes its workflows over (issue 14: within 60 s). The
    # grace spans several beats so one slow beat (a busy database) is not a death.
    cluster_heartbeat_interval: float = Field(default=2.0, gt=0, le=60)
    cluster_takeover_grace: float = Field(default=15.0, gt=0, le=600)

    @field_validator("roles", "boot_networks", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("roles")
    @classmethod
    def _known_roles(cls, value: list[str]) -> list[str]:
        unknown = [r for r in value if r not in ALL_ROLES]
        if unknown:
            raise ValueError(f"unknown role {unknown[0]!r} (roles: {', '.join(ALL_ROLES)})")
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _grace_spans_beats(self) -> Settings:
        if self.cluster_takeover_grace < 3 * self.cluster_heartbeat_interval:
            raise ValueError(f"cluster_takeover_grace ({self.cluster_takeover_grace:g} s) must be at least three "
                             f"heartbeats (cluster_heartbeat_interval {self.cluster_heartbeat_interval:g} s)")
        return self

    @property
    def role_set(self) -> frozenset[str]:
        """The roles this process runs: every role when none was named."""
        return frozenset(self.roles or ALL_ROLES)

    @property
    def embedded(self) -> bool:
        """SQLite: the single-process mode (one process runs every role)."""
        return self.db_url.startswith("sqlite")

    # Event stream (issue 16; provisioner/events_stream.py, README "Event stream"): events are kept this
    # long and at most this many (the newest); a resume from before that is told what it lost.
    events_retention_hours: float = Field(default=72.0, gt=0, le=24 * 366)
    events_retention_rows: int = Field(default=1_000_000, ge=1000)
    # open streams per API process, in total and per token (over it: 503 / 429 with Retry-After)
    events_max_streams: int = Field(default=200, ge=1, le=10_000)
    events_max_streams_per_token: int = Field(default=20, ge=1, le=10_000)


# The roles of ``prov serve --role`` (issue 14's Interface; keep the names).
ALL_ROLES = ("api", "conductor", "boot")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reset_settings() -> None:
    """For tests: forget the cached settings so new PROV_* variables take effect."""
    get_settings.cache_clear()
