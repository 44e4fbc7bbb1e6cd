"""What the benchmark scripts share: the real-data check, and how much CPU other processes took meanwhile
(argument types are in core.cliargs)."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def real_data_missing(path: str) -> bool:
    """True (after saying so on stderr) when the real tiles are not where the benchmark reads them."""
    if Path(path).is_dir():
        return False
    print(f"error: real data not found at {path} (expected ../shared/data/hirise-v3_2-subset next to "
          "the project); nothing measured", file=sys.stderr)
    return True


def cpu_ticks() -> tuple[int, int]:
    """(busy clock ticks of the whole machine, ticks of this process and its descendants) from /proc."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]  # user nice system irq softirq steal
    procs: dict[int, tuple[int, int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                procs[int(d)] = (int(fields[1]), int(fields[11]) + int(fields[12]))  # ppid, utime + stime
            except (OSError, IndexError, ValueError):
                continue
    mine, grew = {os.getpid()}, True
    while grew:
        more = {pid for pid, (ppid, _) in procs.items() if ppid in mine} - mine
        mine |= more
        grew = bool(more)
    return busy, sum(procs[p][1] for p in mine if p in procs)


class OtherLoad:
    """Share of the machine's CPU that other processes used between start() and stop() (0..1)."""

    def start(self) -> None:
        self.t, (self.busy, self.own) = time.perf_counter(), cpu_ticks()

    def stop(self) -> float:
        busy, own = cpu_ticks()
        capacity = (time.perf_counter() - self.t) * (os.cpu_count() or 1) * os.sysconf("SC_CLK_TCK")
        return max(0.0, (busy - self.busy) - (own - self.own)) / max(capacity, 1e-9)
