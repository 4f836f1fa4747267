"""The scaling simulation obeys the laws it is used to argue from.

Each test checks a property any correct queueing model must have, never a number the
model happens to print: Little's law, conservation of steps across a failover, more
capacity never lowering throughput, and the same seed giving the same run.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from bench.__main__ import main
from bench.scaling_sim import MEASURED, Scenario, simulate

#: Small and quick: a few thousand simulated steps per run.
BASE = Scenario(coordinators=2, offered_steps_per_second=600.0, duration=40.0, warmup=5.0, database_cores=4)


def test_littles_law_holds_in_a_stable_run() -> None:
    result = simulate(BASE)
    assert result.steps_per_second == pytest.approx(BASE.offered_steps_per_second, rel=0.1)  # it kept up
    # L = lambda x W: time-average steps between ready and committed, against the rate they
    # were committed at times their mean time in the system. Only the steps still inside at
    # the end are counted on one side and not the other: a few percent at most.
    lam_w = result.little_arrival_rate * result.little_mean_sojourn
    assert result.little_mean_in_system == pytest.approx(lam_w, rel=0.05)


def test_a_failover_loses_no_step_and_applies_none_twice() -> None:
    scenario = dataclasses.replace(BASE, coordinators=3, failover_at=8.0, takeover_seconds=6.0, duration=30.0)
    result = simulate(scenario)
    assert result.steps_lost == 0
    assert result.workflows_stranded == 0
    assert result.duplicate_applies == 0
    # The outage is visible (one owner of three commits nothing for the takeover bound)...
    during = [rate for t, rate in result.throughput_series if 9.0 <= t < 14.0]
    before = [rate for t, rate in result.throughput_series if 5.0 <= t < 8.0]
    assert max(during) < min(before)
    # ... and the standby catches up: what the failed owner held is committed after the takeover.
    after = [rate for t, rate in result.throughput_series if 14.0 <= t < 18.0]
    assert max(after) > max(before)
    assert result.workflows_completed > 0.8 * result.workflows_started


def test_the_census_catches_a_lost_step() -> None:
    """The conservation check is not vacuous: drop what an owner held and it reports the loss."""
    from bench.scaling_sim import Simulation

    scenario = dataclasses.replace(
        BASE, coordinators=2, failover_at=8.0, takeover_seconds=100.0, duration=20.0
    )
    simulation = Simulation(scenario)
    simulation.run()
    held = simulation.owners[0].held
    assert any(unit.step >= 0 for unit in held)  # the failed owner's executors are holding results
    dropped = sum(1 for unit in held if unit.step >= 0)
    held.clear()
    lost, _ = simulation.census()
    assert lost == dropped


def test_throughput_never_falls_as_capacity_grows() -> None:
    overloaded = dataclasses.replace(BASE, offered_steps_per_second=9000.0, duration=12.0, weight=3)
    by_coordinators = [
        simulate(dataclasses.replace(overloaded, coordinators=n)).steps_per_second for n in (1, 2, 4)
    ]
    assert by_coordinators == sorted(by_coordinators)
    assert by_coordinators[-1] > 1.5 * by_coordinators[0]  # the coordinator was the bottleneck
    # With the database made slow, adding its cores helps and never hurts.
    slow_database = dataclasses.replace(
        overloaded,
        coordinators=4,
        cost=dataclasses.replace(MEASURED, database_cpu_per_step=2e-3),
    )
    by_cores = [
        simulate(dataclasses.replace(slow_database, database_cores=c)).steps_per_second for c in (1, 2, 4)
    ]
    assert by_cores == sorted(by_cores)


def test_the_same_seed_gives_the_same_run() -> None:
    short = dataclasses.replace(BASE, duration=8.0)
    first, second = simulate(short), simulate(short)
    assert first.as_json() == second.as_json()
    assert simulate(dataclasses.replace(short, seed=2)).as_json() != first.as_json()


@pytest.mark.slow
def test_the_command_writes_its_table_json_and_plots(tmp_path: Path) -> None:
    assert (
        main(
            [
                "scaling-sim",
                "--results",
                str(tmp_path),
                "--coordinators",
                "1,2",
                "--coordinator-loads",
                "1",
                "--loads",
                "1,2",
                "--load-coordinators",
                "2",
                "--duration",
                "6",
                "--warmup",
                "1",
                "--takeover",
                "2",
                "--max-simulated-steps",
                "3000",
            ]
        )
        == 0
    )
    [directory] = list(tmp_path.iterdir())
    document = json.loads((directory / "results.json").read_text())
    assert document["results"]["failover"]["steps_lost"] == 0
    assert len(document["results"]["runs"]) == 2 + 2 + 1
    summary = (directory / "summary.md").read_text()
    for plot in directory.glob("*.png"):
        assert f"]({plot.name})" in summary
    assert len(list(directory.glob("*.png"))) == 3
