"""Using a trained model: ``vigsp eval`` and ``vigsp predict``, and the files a model travels in.

- weights.py: weights that load without running code (safetensors; torch files with weights_only);
- exported.py: the exported model directory a finished run writes (weights, config, classes);
- source.py: a run directory, checkpoint or exported model resolved to config, classes, weights;
- evaluation.py: per-image predictions over a split, on any number of ranks, and their summary;
- report.py: the per-class table, confusion matrix CSV/PNG and predictions CSV;
- eval_tracking.py: an evaluation logged to MLflow, with its dataset as an MLflow input;
- eval_cli.py: ``vigsp eval``.
"""
