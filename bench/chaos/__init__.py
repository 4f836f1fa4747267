"""Fault injection: a real multi-process deployment, hurt on purpose, then checked for its promises.

Conveyor promises that every started workflow finishes (completed, failed or
cancelled), none is stranded, no step result is recorded twice, completed results
are right, and a fault costs at most a re-run of the LLM calls it interrupted.
This package breaks a :class:`~bench.cluster.LocalCluster` in the ways real
deployments break and checks exactly those promises afterwards:

* :mod:`.cluster`: the deployment, with executors that have names and the fault
  injectors (SIGKILL/SIGSTOP/SIGTERM of executors, coordinator restarts, database
  restarts and killed connections, simulator faults), each logged with the number
  of tasks in flight when it hit;
* :mod:`.workload`: many research workflows with unique topics, started and followed
  to the end through coordinator restarts;
* :mod:`.invariants`: the system-wide checks, read from the database itself;
* :mod:`.postgres`: restarting the local PostgreSQL and killing its connections;
* :mod:`.poison`: task handlers that always fail or kill their executor;
* :mod:`.soak`: ``make chaos``, the long run with every fault, printing the report.

The scenarios of ``tests/chaos/`` (run by ``make test``) are short runs of the same parts.
"""
