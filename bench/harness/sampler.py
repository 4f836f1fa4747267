"""CPU time and memory of the processes under test, sampled in the background.

The sampler reads each process's cumulative CPU time (user + system) and resident
memory every ``interval`` seconds. CPU time is cumulative, so the CPU a process spent
between any two moments of the run is the difference of two samples, with no
averaging error; RSS is a gauge, so its peak is only as fine as the interval.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import psutil


@dataclass
class Series:
    """One process's samples: monotonic time, cumulative CPU seconds, RSS bytes."""

    times: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    rss_bytes: list[int] = field(default_factory=list)

    def cpu_between(self, start: float, end: float) -> float:
        """CPU seconds spent between two monotonic times, interpolated between the samples
        around each end: a window shorter than the sampling interval (a smoke-sized run)
        still gets its share, not zero."""
        return self._cpu_at(end) - self._cpu_at(start)

    def _cpu_at(self, moment: float) -> float:
        if not self.times:
            return 0.0
        after = bisect.bisect_left(self.times, moment)
        if after == 0:
            return self.cpu_seconds[0]
        if after == len(self.times):
            return self.cpu_seconds[-1]
        t0, t1 = self.times[after - 1], self.times[after]
        c0, c1 = self.cpu_seconds[after - 1], self.cpu_seconds[after]
        return c0 + (c1 - c0) * (moment - t0) / (t1 - t0) if t1 > t0 else c1

    def peak_rss(self) -> int:
        return max(self.rss_bytes, default=0)


#: The series holding the whole machine's busy CPU seconds (all processes, ours and others).
MACHINE = "machine"


class ProcessSampler:
    """``with ProcessSampler({"coordinator": pid, ...}) as sampler:`` samples until exit.

    Besides the named processes it samples the whole machine's busy CPU time (series
    :data:`MACHINE`), so a report can say how much CPU other processes took meanwhile.
    """

    def __init__(self, pids: Mapping[str, int], interval: float = 0.5) -> None:
        self.interval = interval
        self.series: dict[str, Series] = {name: Series() for name in [*pids, MACHINE]}
        self._processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="process-sampler", daemon=True)

    def __enter__(self) -> ProcessSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        now = time.monotonic()
        machine = psutil.cpu_times()
        busy = machine.user + machine.nice + machine.system + machine.irq + machine.softirq + machine.steal
        self.series[MACHINE].times.append(now)
        self.series[MACHINE].cpu_seconds.append(busy)
        self.series[MACHINE].rss_bytes.append(0)
        for name, process in self._processes.items():
            try:
                with process.oneshot():
                    cpu = process.cpu_times()
                    rss = process.memory_info().rss
            except psutil.Error:
                continue  # the process has exited; its last sample stands
            series = self.series[name]
            series.times.append(now)
            series.cpu_seconds.append(cpu.user + cpu.system)
            series.rss_bytes.append(rss)

    def cpu_between(self, names: list[str], start: float, end: float) -> float:
        return sum(self.series[name].cpu_between(start, end) for name in names)

    def other_cpu_between(self, start: float, end: float) -> float:
        """CPU seconds that processes other than the sampled ones used between two times."""
        ours = self.cpu_between([name for name in self.series if name != MACHINE], start, end)
        return max(0.0, self.series[MACHINE].cpu_between(start, end) - ours)

    def peak_rss(self, names: list[str]) -> int:
        """The largest RSS any one of ``names`` reached."""
        return max((self.series[name].peak_rss() for name in names), default=0)
