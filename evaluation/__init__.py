"""Evaluation of exported backbones with limited labels: kNN, linear probe, fine-tune, one report.

Command line: ``selfsup-eval report|knn|linear|finetune|detect`` (:mod:`evaluation.cli`). From Python:
:func:`evaluation.report.run_report`, or :func:`evaluation.stages.prepare_data` + ``run_knn`` / ``run_linear`` /
``run_finetune``; the pure pieces are :func:`evaluation.knn.knn_classify`, :func:`evaluation.linear_probe.linear_probe`,
:func:`evaluation.fractions.stratified_subset` and :func:`evaluation.finetune.finetune`.
"""
