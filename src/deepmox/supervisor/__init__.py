"""The supervisor: the pull cycle, budgeted actors, restarts by classification."""

from .supervisor import Supervisor, SupervisorStatistics

__all__ = ["Supervisor", "SupervisorStatistics"]
