"""The Kaggle layer: bundles as datasets, kernels rendered from ``kernels/``, the loop through the ``kaggle`` client.

- ``kernels``: bundles (wheel, model, indexes) and rendered kernels; ``build_kernels``: the build kernels'
  variants and shard parts as datasets; ``command``: ``landmark-kaggle kernels``.

Nothing below this layer imports it. (Where inputs live on Kaggle is ``landmark_kaggle.paths``.)
"""
