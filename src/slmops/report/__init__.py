"""Comparison reports: one table of size, memory, speed and quality per model, retention vs a reference, and plots.

:func:`slmops.report.compare.compare` runs (or reuses) ``eval`` and ``bench`` for each model and
the ``compare`` stage renders the result as JSON, Markdown and a self-contained HTML page.
"""
