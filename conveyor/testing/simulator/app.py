"""Request handling: routing, auth, validation, rate limits, faults and latency.

Order of checks mirrors the real API: unknown path (404) and method (405),
then authentication (401), then validation (400), then rate limits (429). These
answers are immediate, like a gateway's. An admitted request then draws its
fault and its latency from the seeded generator and is answered after the
delay, except a hang, which is never answered.
"""

from __future__ import annotations

import hmac
import itertools
import json
import logging
import random
import secrets
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any

from .config import FAULT_FIELDS, SimulatorConfig
from .errors import error_json
from .http11 import Deferred, HttpConnection, Request, Response
from .latency import LatencyDistribution, parse_latency
from .messages import (
    InvalidRequest,
    MessagesRequest,
    Responder,
    estimate_input_tokens,
    make_reply,
    message_body,
    parse_messages_request,
)
from .ratelimit import RateLimiter
from .stats import Stats

__all__ = ["MESSAGES_PATH", "SimulatorApp"]

logger = logging.getLogger(__name__)

MESSAGES_PATH = "/v1/messages"
_CONTROL_PREFIX = "/_sim/"

Route = Callable[[Request], Response | Deferred]


class SimulatorApp:
    """The simulator's behaviour, independent of sockets and event loops.

    All methods run on the event loop thread; :class:`conveyor.testing.simulator.Simulator`
    marshals calls from other threads.
    """

    def __init__(self, config: SimulatorConfig, responder: Responder | None = None) -> None:
        self.config = config
        #: Picks each reply's text in place of ``config.reply`` (see :data:`Responder`).
        self.responder = responder
        self.stats = Stats()
        self.connections: set[HttpConnection] = set()
        self._latency: LatencyDistribution = parse_latency(config.latency)
        self._rng = random.Random(config.seed)
        self._limiter = RateLimiter(config.rpm, config.itpm, config.otpm)
        # A random prefix keeps ids unique across simulator instances and restarts.
        self._id_prefix = secrets.token_hex(4)
        self._ids = itertools.count(1)
        self._routes: dict[str, dict[str, Route]] = {
            MESSAGES_PATH: {"POST": self._create_message},
            "/_sim/stats": {"GET": self._get_stats},
            "/_sim/config": {"GET": self._get_config, "POST": self._post_config},
            "/_sim/reset": {"POST": self._post_reset},
        }

    def update_config(self, changes: Mapping[str, Any]) -> SimulatorConfig:
        """Validate and apply ``changes``; the generator is reseeded only if ``seed`` is given."""
        config = self.config.with_changes(changes)
        self._latency = parse_latency(config.latency)
        self._limiter.reconfigure(config.rpm, config.itpm, config.otpm)
        if "seed" in changes:
            self._rng = random.Random(config.seed)
        self.config = config
        logger.info("simulator config updated: %s", config.describe())
        return config

    # -- http11.Application -------------------------------------------------

    def connection_opened(self, connection: HttpConnection) -> None:
        self.connections.add(connection)
        self.stats.connection_opened()

    def connection_closed(self, connection: HttpConnection) -> None:
        self.connections.discard(connection)
        self.stats.connection_closed()

    def handle(self, request: Request) -> Response | Deferred:
        is_api = not request.path.startswith(_CONTROL_PREFIX)
        if is_api:
            self.stats.requests += 1
        outcome = self._route(request)
        if is_api and isinstance(outcome, Response):
            self.stats.by_status[outcome.status] += 1
        return outcome

    def _route(self, request: Request) -> Response | Deferred:
        methods = self._routes.get(request.path)
        if methods is None:
            return self._error(404, "not_found_error", f"Not found: {request.method} {request.path}")
        route = methods.get(request.method)
        if route is None:
            allowed = ", ".join(methods)
            return self._error(
                405,
                "invalid_request_error",
                f"Method {request.method} is not allowed for {request.path}; use {allowed}",
                [("allow", allowed)],
            )
        return route(request)

    # -- POST /v1/messages --------------------------------------------------

    def _create_message(self, request: Request) -> Response | Deferred:
        if not self._authorized(request.headers):
            return self._error(401, "authentication_error", "invalid x-api-key", self._limiter.headers())
        try:
            parsed = parse_messages_request(request.body)
        except InvalidRequest as exc:
            return self._error(400, "invalid_request_error", str(exc), self._limiter.headers())
        input_tokens = estimate_input_tokens(parsed)
        rejection = self._limiter.try_acquire(input_tokens, parsed.max_tokens)
        if rejection is not None:
            headers = [("retry-after", str(rejection.retry_after)), *self._limiter.headers()]
            return self._error(429, "rate_limit_error", rejection.message, headers)
        fault = self._draw_fault()
        self.stats.request_started()
        complete = partial(self._complete, parsed, input_tokens, fault)
        abandon = partial(self._abandon, parsed.max_tokens, fault)
        if fault == "hang":
            self.stats.hangs += 1
            return Deferred(None, complete, abandon)
        return Deferred(self._latency.sample(self._rng), complete, abandon)

    def _authorized(self, headers: Mapping[str, str]) -> bool:
        """Accept the key as ``x-api-key`` or as ``Authorization: Bearer``.

        The Anthropic SDK 2.x sends API keys as a bearer token, older clients
        and curl examples use ``x-api-key``; both are what the real API takes.
        """
        expected = self.config.api_key
        if expected is None:
            return True
        presented = headers.get("x-api-key")
        if presented is None:
            scheme, _, token = headers.get("authorization", "").partition(" ")
            presented = token.strip() if scheme.lower() == "bearer" else ""
        return hmac.compare_digest(presented.encode(), expected.encode())

    def _draw_fault(self) -> str | None:
        """Map one uniform draw onto the fault shares (in ``FAULT_FIELDS`` order)."""
        config = self.config
        if not config.fault_share:
            return None
        draw = self._rng.random()
        for name in FAULT_FIELDS:
            share: float = getattr(config, name)
            if draw < share:
                return name
            draw -= share
        return None

    def _complete(self, request: MessagesRequest, input_tokens: int, fault: str | None) -> Response:
        """Produce the answer once the simulated latency has elapsed."""
        self.stats.request_finished()
        if fault in ("error_529", "error_500"):
            self._limiter.refund_output(request.max_tokens)
            status, error_type, message = (
                (529, "overloaded_error", "Overloaded")
                if fault == "error_529"
                else (500, "api_error", "Internal server error")
            )
            self.stats.by_status[status] += 1
            return self._error(status, error_type, message, self._limiter.headers())
        try:
            text = self.responder(request) if self.responder is not None else None
        except Exception as error:
            # A scripted test's responder is test code: show its failure as the API's 500,
            # which the caller sees (and retries), and in the log with its traceback.
            logger.exception("the simulator's responder raised for %r", request.prompt[:200])
            self._limiter.refund_output(request.max_tokens)
            self.stats.by_status[500] += 1
            return self._error(500, "api_error", f"the simulator's responder raised: {error!r}")
        reply = make_reply(request, self.config.fixed_reply if text is None else text)
        self._limiter.refund_output(request.max_tokens - reply.output_tokens)
        body = message_body(f"msg_sim_{self._next_id()}", request, reply, input_tokens)
        if fault == "truncate":
            self.stats.truncations += 1
        else:
            self.stats.by_status[200] += 1
            self.stats.record_success(request.body, input_tokens, reply.output_tokens)
        return self._respond(200, body, self._limiter.headers(), truncate=fault == "truncate")

    def _abandon(self, max_tokens: int, fault: str | None) -> None:
        """The client left before an answer: release what the request held."""
        self.stats.request_finished()
        self._limiter.refund_output(max_tokens)
        if fault != "hang":
            self.stats.client_disconnects += 1

    # -- control endpoints --------------------------------------------------

    def _get_stats(self, request: Request) -> Response:
        return self._json(self.stats.snapshot())

    def _get_config(self, request: Request) -> Response:
        return self._json(self.config.public_dict())

    def _post_config(self, request: Request) -> Response:
        try:
            changes = json.loads(request.body or b"{}")
            if not isinstance(changes, dict):
                raise ValueError("the config update must be a JSON object")
            config = self.update_config(changes)
        except ValueError as exc:  # includes json.JSONDecodeError
            return self._error(400, "invalid_request_error", f"Invalid config update: {exc}")
        return self._json(config.public_dict())

    def _post_reset(self, request: Request) -> Response:
        self.stats.reset()
        return self._json(self.stats.snapshot())

    # -- responses ----------------------------------------------------------

    def _next_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids):010d}"

    def _respond(
        self, status: int, body: bytes, headers: Iterable[tuple[str, str]] = (), truncate: bool = False
    ) -> Response:
        return Response(status, body, [("request-id", f"req_sim_{self._next_id()}"), *headers], truncate)

    def _json(self, data: Mapping[str, Any]) -> Response:
        return self._respond(200, json.dumps(data, separators=(",", ":")).encode())

    def _error(
        self, status: int, error_type: str, message: str, headers: Iterable[tuple[str, str]] = ()
    ) -> Response:
        return self._respond(status, error_json(error_type, message), headers)
