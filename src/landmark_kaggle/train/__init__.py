"""Training: backends and devices, precision, the optimizer and schedule, the loop, Kaggle sessions.

- ``backend``: TensorFlow or JAX, decided before Keras loads; ``distribute``: devices, replicas, precision.
- ``optim``, ``schedule``: AdamW with ArcFace loss and metrics, the learning-rate schedule.
- ``loop``: shards → model folder with checkpoints and exact resume (``train``); ``command``: ``landmark-kaggle train``.
- ``kaggle_session``: ``train --kaggle``, inputs found by content and sessions that chain.
- ``embeddings``, ``partial_fc``: the embedding-only model (``train-embeddings``) and Partial FC.
- ``memory``: ``train --estimate``; ``plots``: the training curves.
"""
