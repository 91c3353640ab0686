"""The training engine: DeepSpeed data parallel on the DALI pipelines, resumable to the step.

``run_training(config, overrides)`` (``api``) is what every launcher calls in every rank.
Importing this package imports nothing heavy.
"""
