"""Evaluation of exported backbones with limited labels: kNN, linear probe, fine-tune, detection, one report.

Read in the order the data flows: :mod:`evaluation.settings` (every default, once) -> :mod:`evaluation.loading`
(exports as timm or ONNX models, cached features, label fractions, image pools) -> :mod:`evaluation.probes` (pure
functions) -> :mod:`evaluation.stages` (each writes ``OUT/<stage>.json``; :mod:`evaluation.results` reads and
aggregates them) -> :mod:`evaluation.report` (the only place that renders). :mod:`evaluation.pipeline` runs stages
then the report; :mod:`evaluation.cli` is ``selfsup-eval``. From Python: :func:`evaluation.pipeline.run_report`, or
:func:`evaluation.stages.classification.prepare_data` + ``run_knn`` / ``run_linear`` / ``run_finetune``.
"""
