"""Distillation: a teacher answers prompts (stage 1), a student learns from the answers (stage 2).

* ``distill.generate`` — a teacher (any OpenAI-compatible endpoint, or a local model) answers a
  prompts dataset; answers are validated and become a chat dataset, with top-k logprobs kept
  alongside when the teacher returns them (:mod:`.generate`, :mod:`.teachers`, :mod:`.validate`).
* ``distill.train`` — sequence-level KD (SFT on the teacher's answers) and logit-level KD (forward
  KL, reverse KL, JSD from a local teacher's logits or from stored top-k logprobs) through the
  fine-tuning engine (:mod:`.train`, :mod:`.losses`).
* ``distill.report`` — teacher vs student: size, memory, latency, accuracy, and the retention
  ratios (:mod:`.report`).

Importing this package imports nothing heavy; stages live in :mod:`.stages`.
"""
