"""Active health checks: the service that runs them, the rise/fall state, the check kinds.

Importing the package registers every built-in kind (tcp, http, tls, dns, sip, smtp, mysql) in
proxyd.health.checks; a new kind is a module beside them, imported here.
"""

from proxyd.health import dns, grpc, http, mysql, sip, smtp, tcp, tls, websocket
from proxyd.health.checks import CheckFailed, checker_for, register, run_check
from proxyd.health.service import HealthService, ServerHealth
from proxyd.health.state import HealthState, Transition

__all__ = [
    "CheckFailed",
    "HealthService",
    "HealthState",
    "ServerHealth",
    "Transition",
    "checker_for",
    "dns",
    "grpc",
    "http",
    "mysql",
    "register",
    "run_check",
    "sip",
    "smtp",
    "tcp",
    "tls",
    "websocket",
]
