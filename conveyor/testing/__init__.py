"""Testing kit: what users need to test their own workflows and handlers.

Installed with the ``testing`` extra (``pip install 'conveyor[testing]'``)::

    from conveyor.testing import ConveyorTestEnv, by_prompt

    async def test_research() -> None:
        async with ConveyorTestEnv.start(workflows=[research], replies=by_prompt({"tides": "moon"})) as env:
            finished = await env.run("research", {"topic": "tides"})
        assert finished.result == "moon"

:class:`ConveyorTestEnv` runs a coordinator, executors and the Anthropic Messages API
simulator (:mod:`conveyor.testing.simulator`) in the test's event loop;
:mod:`conveyor.testing.replies` scripts what the LLM answers; the pytest plugin
:mod:`conveyor.testing.pytest_plugin` (opt in with ``pytest_plugins``) offers the
``conveyor_env`` fixture. See docs/testing.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.coordinator.replay_check import Replayer

    from .env import ConveyorTestEnv
    from .replies import ScriptExhausted, by_prompt, fixed, scripted
    from .simulator import MessagesRequest, Responder, SimulatorConfig
    from .sync import SyncConveyorTestEnv

#: Where each name lives. Imported on first use, so that ``conveyor simulator`` (which lives
#: in this package) does not load the coordinator and the executor it never runs.
_EXPORTS = {
    "ConveyorTestEnv": ".env",
    "SyncConveyorTestEnv": ".sync",
    "ScriptExhausted": ".replies",
    "by_prompt": ".replies",
    "fixed": ".replies",
    "scripted": ".replies",
    "MessagesRequest": ".simulator",
    "Responder": ".simulator",
    "SimulatorConfig": ".simulator",
    "Replayer": "conveyor.coordinator.replay_check",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)


__all__ = [
    "ConveyorTestEnv",
    "MessagesRequest",
    "Replayer",
    "Responder",
    "ScriptExhausted",
    "SimulatorConfig",
    "SyncConveyorTestEnv",
    "by_prompt",
    "fixed",
    "scripted",
]
