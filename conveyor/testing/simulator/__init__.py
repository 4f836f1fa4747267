"""An Anthropic Messages API simulator for tests, demos and benchmarks.

It speaks enough of ``POST /v1/messages`` for the official ``anthropic`` SDK
to work against it via ``base_url``, with deterministic replies, simulated
latency, Anthropic-style rate limits and injectable faults. See README.md in
this directory for the HTTP control endpoints and the stats it keeps.
"""

from .config import SimulatorConfig
from .latency import LatencyDistribution, parse_latency
from .messages import MessagesRequest, Responder
from .server import Simulator
from .threaded import run_in_thread

__all__ = [
    "LatencyDistribution",
    "MessagesRequest",
    "Responder",
    "Simulator",
    "SimulatorConfig",
    "parse_latency",
    "run_in_thread",
]
