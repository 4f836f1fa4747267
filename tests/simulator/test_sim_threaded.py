"""run_in_thread: a simulator for synchronous code, on its own loop and thread."""

from __future__ import annotations

import socket
import threading

import anthropic
import pytest

from conveyor.testing.simulator import SimulatorConfig, run_in_thread


def test_serves_synchronous_sdk_clients_and_cleans_up() -> None:
    threads_before = set(threading.enumerate())
    with run_in_thread(SimulatorConfig(reply="fixed:sync ok")) as simulator:
        client = anthropic.Anthropic(base_url=simulator.base_url, api_key="test", max_retries=0)
        with client:
            message = client.messages.create(
                model="m", max_tokens=10, messages=[{"role": "user", "content": "hello"}]
            )
        assert message.content[0].type == "text"
        assert message.content[0].text == "sync ok"
        assert simulator.stats()["successes"] == 1
        port = simulator.port
    assert set(threading.enumerate()) == threads_before
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


def test_control_methods_work_from_another_thread() -> None:
    with run_in_thread() as simulator:
        config = simulator.update_config(rpm=1)
        assert config.rpm == 1
        assert simulator.config.rpm == 1
        with anthropic.Anthropic(base_url=simulator.base_url, api_key="test", max_retries=0) as client:
            client.messages.create(model="m", max_tokens=10, messages=[{"role": "user", "content": "one"}])
            with pytest.raises(anthropic.RateLimitError):
                client.messages.create(
                    model="m", max_tokens=10, messages=[{"role": "user", "content": "two"}]
                )
        assert simulator.stats()["rate_limited"] == 1
        simulator.reset_stats()
        assert simulator.stats()["requests"] == 0
        with pytest.raises(ValueError, match="rpm must be"):
            simulator.update_config(rpm=-1)


def test_start_failure_does_not_leak_the_thread() -> None:
    threads_before = set(threading.enumerate())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError), run_in_thread(port=taken.getsockname()[1]):
            pass
    assert set(threading.enumerate()) == threads_before
