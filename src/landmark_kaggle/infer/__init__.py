"""Inference: a model folder → embeddings → nearest neighbours → one answer per test image.

- ``embedder``: a model folder made ready for inference (``load_for_inference``); ``ensemble``: several
  folders and flip TTA as one embedding function.
- ``embed_index``: ``landmark-kaggle embed-index``; ``search``: exact top-k cosine search on the device;
  ``retrieval``: index folders assembled for ``predict``.
- ``scoring``: the rules that choose an answer (classifier, retrieval, the GLR2020 winners' rules).
- ``competition``: the scoring run's own train set; ``predict``: ``landmark-kaggle predict`` → ``submission.csv``.

Inference never imports training code.
"""
