"""What the simulated LLM answers in a test: responders for :class:`ConveyorTestEnv`.

A responder gets each Messages API request (:class:`~conveyor.testing.simulator.MessagesRequest`:
``prompt`` is the last user message, ``system_text``, ``messages`` and the raw ``body`` are
there too) and returns the reply's text, or ``None`` for the simulator's configured reply
(by default an echo of the prompt). Any function of that shape works; these cover the
usual cases. A responder that raises makes that call answer HTTP 500 (which the executor
retries like any API error) and logs the traceback.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from conveyor.errors import ConveyorError

from .simulator import MessagesRequest, Responder

__all__ = ["ScriptExhausted", "by_prompt", "fixed", "scripted"]


class ScriptExhausted(ConveyorError):
    """A :func:`scripted` responder was asked for more replies than it was given."""


def fixed(text: str) -> Responder:
    """Every call answers ``text``."""
    return lambda _request: text


def scripted(*texts: str) -> Responder:
    """Answer the calls with ``texts`` in the order the calls arrive; one call too many is an error.

    Calls a workflow starts together (``asyncio.gather``) arrive in no fixed order: script
    those with :func:`by_prompt` instead.
    """
    remaining = list(texts)
    lock = threading.Lock()

    def answer(request: MessagesRequest) -> str:
        with lock:
            if not remaining:
                raise ScriptExhausted(
                    f"the script of {len(texts)} replies ran out at a call for {request.prompt[:80]!r}: "
                    "script one more reply, or answer that prompt with by_prompt()"
                )
            return remaining.pop(0)

    return answer


def by_prompt(
    replies: Mapping[str, str | Callable[[MessagesRequest], str]], *, default: str | None = None
) -> Responder:
    """Answer by what the prompt contains: the first key (in order) found in the last user
    message picks the reply, a string or a function of the request. No match answers
    ``default``, or the simulator's configured reply (an echo) when ``default`` is None."""

    def answer(request: MessagesRequest) -> str | None:
        for fragment, reply in replies.items():
            if fragment in request.prompt:
                return reply if isinstance(reply, str) else reply(request)
        return default

    return answer
