"""The recognition network: its layers, backbones and the model folder.

- ``layers``: GeM pooling, the cosine classifier (sub-centres) and the ArcFace loss.
- ``network``: backbone → pooling → dropout → cosine classifier (``build_model``), and the model
  folder (``save_model_dir``, ``load_model_dir``) that any Keras 3 version rebuilds from ``config.json``.

The model builds no optimizer: training adds that (``landmark_kaggle.train``).
"""
