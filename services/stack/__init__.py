"""The local stack of real components behind `clearance stack up|down|status`.

PostgreSQL and RabbitMQ are used where they run and started where they do not;
SeaweedFS (`weed mini`) and clamd are started by the stack, detached, with
data, logs and PID files under `settings.state_dir`. App services are declared
in `services.stack.apps.app_services`.
"""

from services.stack.apps import app_process, app_services
from services.stack.commands import stack_down, stack_states, stack_status, stack_up
from services.stack.layout import StackError, StackLayout
from services.stack.probes import ClamdProbe, HttpProbe, TcpProbe
from services.stack.processes import ManagedProcess

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
