"""Built-in task suite: realistic small tasks with verifiable answers, generated in code (no downloads).

Each task yields chat records (``messages`` + ``label``) from paraphrase templates; the test split
uses templates never seen in training, so memorised phrasings don't count.
"""

from slmops.data.synth.tasks import TASKS, generate_task

__all__ = ["TASKS", "generate_task"]
