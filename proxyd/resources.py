"""What a process's relays use beyond one config generation: made once by the service
(proxyd.app.ProxydService), passed to every generation it builds (proxyd.generation) and from
there to each HTTP listener's relay (proxyd.relay.http.listener.HttpRelayFactory)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from proxyd.auth.threads import HashThreads
from proxyd.cache.registry import CacheRegistry
from proxyd.filters.ratelimit import RedisCalls, TableSource
from proxyd.filters.stick import StickTables
from proxyd.ocsp_stapling import OcspStapling
from proxyd.otlp import OtlpExport
from proxyd.relay.http.h2_upstream_metrics import H2Metrics

if TYPE_CHECKING:
    from proxyd.acme.service import AcmeService


@attrs.frozen
class ProcessResources:
    hash_threads: HashThreads | None = None
    """The password-check threads of basic auth (proxyd.auth.threads); None: checks run
    on the reactor's thread pool."""
    limit_tables: TableSource | None = None
    """What makes the rate limits' tables: None, this process's alone; in a worker of
    `workers = N`, tables kept for the whole machine (proxyd.ratelimit.synced)."""
    redis: RedisCalls | None = None
    """The StoreCall of a Redis store (proxyd.ratelimit.redis_client), for limits with one;
    None: such limits cannot be built (tests of other things)."""
    otlp: OtlpExport | None = None
    """The span export to OpenTelemetry collectors (proxyd.otlp); None: listeners with
    otlp_endpoint export nothing (tests of other things)."""
    caches: CacheRegistry | None = None
    """The [cache] sections' storage (proxyd.cache.registry); None: routes with a cache
    cannot be built (tests of other things)."""
    ocsp: OcspStapling | None = None
    """The OCSP responses the TLS listeners staple (proxyd.ocsp_stapling); None: they staple
    none (tests of other things)."""
    acme: AcmeService | None = None
    """The [acme] sections' certificates and challenge answers (proxyd.acme.service); None:
    listeners with `acme` serve none (tests of other things)."""
    sticks: StickTables | None = None
    """The pools' stick tables (proxyd.filters.stick); None: pools with `stick_on` stick
    nowhere (tests of other things)."""
    h2_upstreams: H2Metrics | None = None
    """Where the pools with `protocol = h2` or `h2c` count their connections and streams
    (proxyd.relay.http.h2_upstream_metrics); None: each such pool counts on its own (tests
    of other things)."""
