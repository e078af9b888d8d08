"""The competition's files and metric: ``submission.csv``, the solution CSV and GAP.

- ``metrics``: Global Average Precision (micro-AP) and which predictions are right.
- ``submission``: read, check, write and score ``submission.csv`` against a solution.
- ``score``: the ``landmark-kaggle score`` command.

Pure pandas and numpy: no TensorFlow, no model.
"""
