"""Other workflow engines running the same workload, for side-by-side numbers.

Each peer runs as its own process (``python -m bench.peers.<peer>``) against the same
simulator, so its CPU and memory are measured the same way as Conveyor's.
"""
