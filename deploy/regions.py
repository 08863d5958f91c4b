"""The regions of a deployment, from a TOML file (``deploy/regions.toml``).

Each region is an edge site: a NATS leaf node of the cloud hub (``nats = "leaf"``, the default), or
a region served from the cloud (``nats = "hub"``: its gateway and workers connect to the hub). The
optional ``link`` table is the emulated network between a phone and the region (``mvs phone --link-*``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mobile_sim.link_shim import LinkProfile
from streaming.protocol import stylize_subject

DEFAULT_REGIONS_FILE = Path(__file__).with_name("regions.toml")
NATS_KINDS = ("leaf", "hub")
REGION_KEYS = frozenset({"name", "nats", "gateway_port", "workers", "gpu", "link"})
LINK_KEYS = frozenset({"delay_ms", "kbps", "loss"})
HUB_KEYS = frozenset({"servers"})
CLUSTER_HUB_SERVERS = 3
"""Hub servers of a deployment unless its regions file says otherwise: a JetStream cluster that survives one down."""
MAX_HUB_SERVERS = 9


class RegionsError(ValueError):
    """A regions file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Region:
    """One region of a deployment."""

    name: str
    nats: str = "leaf"
    """``leaf``: the region's own NATS leaf node; ``hub``: its services connect to the cloud hub."""
    gateway_port: int = 0
    """HTTP port of the region's gateway (0: any free port)."""
    workers: int = 1
    """Stylizer workers started by ``mvs local``."""
    gpu: bool = False
    """The region's workers run on GPU nodes (in a cluster: the GPU image, ``--device cuda``, one GPU each)."""
    link: LinkProfile | None = None
    """The emulated phone link to this region; None: none."""

    def __post_init__(self) -> None:
        stylize_subject(self.name)  # ValueError on a name that cannot be part of a subject
        for key in ("gateway_port", "workers"):
            if type(getattr(self, key)) is not int:
                raise ValueError(f"region {self.name!r}: {key} must be an integer, got {getattr(self, key)!r}")
        if type(self.gpu) is not bool:
            raise ValueError(f"region {self.name!r}: gpu must be true or false, got {self.gpu!r}")
        if self.nats not in NATS_KINDS:
            raise ValueError(f"region {self.name!r}: nats must be one of {list(NATS_KINDS)}, got {self.nats!r}")
        if not 0 <= self.gateway_port <= 65535:
            raise ValueError(f"region {self.name!r}: gateway_port {self.gateway_port} is not a port")
        if self.workers < 1:
            raise ValueError(f"region {self.name!r}: needs at least one worker, got {self.workers}")

    def phone_link_flags(self) -> list[str]:
        """``mvs phone`` flags that emulate this region's link."""
        if self.link is None:
            return []
        flags = {"--link-delay-ms": self.link.delay_ms, "--link-kbps": self.link.kbps, "--link-loss": self.link.loss}
        return [part for flag, value in flags.items() if value for part in (flag, f"{value:g}")]


@dataclass(frozen=True)
class Hub:
    """The cloud hub: ``servers`` nats-server processes in one JetStream cluster (1: a lone server, ``mvs demo``)."""

    servers: int = CLUSTER_HUB_SERVERS

    def __post_init__(self) -> None:
        if type(self.servers) is not int or not 1 <= self.servers <= MAX_HUB_SERVERS:
            raise ValueError(f"hub: servers must be an integer from 1 to {MAX_HUB_SERVERS}, got {self.servers!r}")

    @property
    def replicas(self) -> int:
        """Replicas of every stream, bucket and KV: min(3, servers) (JetStream's limit is 5; 3 survives one loss)."""
        return min(3, self.servers)


def _unknown(table: Mapping[str, Any], known: frozenset[str], where: str) -> None:
    extra = sorted(set(table) - known)
    if extra:
        raise ValueError(f"{where}: unknown key(s) {extra}; known: {sorted(known)}")


def _region(table: Mapping[str, Any]) -> Region:
    where = f"region {table.get('name', '?')!r}"
    _unknown(table, REGION_KEYS, where)
    link = table.get("link")
    if link is not None:
        _unknown(link, LINK_KEYS, f"{where} link")
        link = LinkProfile(**link)
    return Region(**{**table, "link": link})


def parse_regions(text: str, source: str = "<regions>") -> list[Region]:
    """Regions from TOML text: an array of tables ``[[regions]]``; names must be distinct."""
    import tomllib  # Python 3.11+: only --regions needs it, the rest runs on 3.10

    try:
        data = tomllib.loads(text)
        _unknown(data, frozenset({"regions", "hub"}), "top level")
        regions = [_region(table) for table in data.get("regions", [])]
    except (tomllib.TOMLDecodeError, TypeError, ValueError) as exc:
        raise RegionsError(f"{source}: {exc}") from exc
    names = [r.name for r in regions]
    if not regions or len(set(names)) != len(names):
        raise RegionsError(f"{source}: regions must be distinct and at least one, got {names}")
    return regions


def parse_hub(text: str, source: str = "<regions>") -> Hub:
    """The optional ``[hub]`` table of a regions file (``servers``; default :data:`CLUSTER_HUB_SERVERS`)."""
    import tomllib

    try:
        table = tomllib.loads(text).get("hub", {})
        if not isinstance(table, dict):
            raise ValueError("hub must be a table")
        _unknown(table, HUB_KEYS, "hub")
        return Hub(**table)
    except (tomllib.TOMLDecodeError, TypeError, ValueError) as exc:
        raise RegionsError(f"{source}: {exc}") from exc


def load_regions(path: Path = DEFAULT_REGIONS_FILE) -> list[Region]:
    """Regions from a TOML file."""
    return parse_regions(path.read_text(), str(path))


def load_hub(path: Path = DEFAULT_REGIONS_FILE) -> Hub:
    """The hub of a regions file."""
    return parse_hub(path.read_text(), str(path))
