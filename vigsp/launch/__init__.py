"""Launching training on Slurm: ``vigsp submit`` (submit, sweep), its job (job) and the
pre-queue checks against sinfo (slurm_env)."""
