"""The local stack of real components behind `clearance stack up|down|status`.

PostgreSQL and RabbitMQ are used where they run and started where they do not;
SeaweedFS (`weed mini`) and clamd are started by the stack, detached, with
data, logs and PID files under `settings.state_dir`. App services are declared
in `devstack.apps.app_services`.
"""

from devstack.apps import app_process, app_services
from devstack.commands import stack_down, stack_states, stack_status, stack_up
from devstack.layout import StackError, StackLayout
from devstack.probes import ClamdProbe, HttpProbe, TcpProbe
from devstack.processes import ManagedProcess

__all__ = [
    "ClamdProbe",
    "HttpProbe",
    "ManagedProcess",
    "StackError",
    "StackLayout",
    "TcpProbe",
    "app_process",
    "app_services",
    "stack_down",
    "stack_states",
    "stack_status",
    "stack_up",
]
