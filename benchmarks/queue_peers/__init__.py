"""The parts of `benchmarks/queue_peers.py` that other processes import: surgeflow's no-op
workflow (``noop``), and one driver per peer library (``arq_job``, ``celery_job``,
``taskiq_job``), which run in the peers' own environment, with ``_drive`` shared by them all."""
