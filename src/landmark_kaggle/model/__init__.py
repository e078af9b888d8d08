"""The recognition network: its layers, backbones and the model folder.

- ``layers``: GeM pooling, the cosine classifier (sub-centres) and the ArcFace loss.
- ``network``: backbone → pooling → dropout → cosine classifier (``build_model``), and the model
  folder (``save_model_dir``, ``load_model_dir``) that any Keras 3 version rebuilds from ``config.json``.
- ``keras_saving``: Keras's weight files without the throwaway layers its cache-key typo costs; mended
  here, once, for every module below that saves or loads weights (checkpoints, model folders, ImageNet).

The model builds no optimizer: training adds that (``landmark_kaggle.train``).
"""

from landmark_kaggle.model.keras_saving import mend_attr_skipset_cache

mend_attr_skipset_cache()
