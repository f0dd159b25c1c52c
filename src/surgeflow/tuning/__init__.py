"""The tuning kit: measure (`bench`), predict (`plan`), choose settings (`tune`).

``bench`` drives load at a surgeflow gateway, or any OpenAI-compatible URL, and records what
happened without coordinated omission. ``plan`` models the system as a network of queues and
predicts latency and throughput for a load and a configuration; its predictions are checked
against ``bench``'s measurements (benchmarks/RESULTS.md). ``tune`` searches settings against an
SLO, guided by the model.
"""
