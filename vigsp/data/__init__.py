"""Datasets and DALI input pipelines.

* ``vigsp.data.config``: ``DataConfig``, the ``data:`` section of a training config.
* ``vigsp.data.loader``: ``TrainLoader`` / ``EvalLoader`` / ``make_loaders``, batches as torch tensors.
* ``vigsp.data.folders``: which images (class folders, file lists, class lists) and their labels.
* ``vigsp.data.fashion_mnist``, ``vigsp.data.check``: ``vigsp data prepare`` and ``vigsp data check``.

Nothing heavy is imported here: DALI and torch load with ``vigsp.data.loader`` only.
"""
