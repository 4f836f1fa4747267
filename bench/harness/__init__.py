"""The parts every benchmark scenario shares.

* :mod:`.machine` describes the machine, the software versions and the load it was under;
* :mod:`.databases` makes a fresh database per run (SQLite file or PostgreSQL schema);
* :mod:`.sampler` samples CPU time and memory of the processes under test;
* :mod:`.workload` starts workflows on a :class:`~bench.cluster.LocalCluster` and waits for them;
* :mod:`.timings` reads what happened back from the database and computes the statistics;
* :mod:`.report` writes a run's JSON, Markdown and plots into its results directory.
"""
