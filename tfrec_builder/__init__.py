"""tfrec_builder: the data-preparation job that turns a GLDv2 folder into cleaned TFRecord shards.

Stages: ``embed`` (image embeddings), ``clean`` (per-class DBSCAN outlier
removal), ``write`` (sharded TFRecords + manifest), ``verify`` and ``merge``.
It builds on ``landmark_kaggle`` (data index, record schema, model folders),
never the other way round.
"""
