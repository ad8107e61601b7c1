"""Evaluation: task-quality metrics, perplexity, similarity, LLM-as-judge, quality gates and deployment validation.

Library entry points: :func:`slmops.evaluate.run.evaluate` (answer and score a dataset on a
:class:`~slmops.evaluate.targets.Target`), :func:`slmops.evaluate.gates.check_gates`, and
:func:`slmops.evaluate.validate.validate`; the ``eval`` and ``validate`` stages wrap them. Importing
this package imports nothing heavy.
"""
