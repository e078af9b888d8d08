"""Kaggle training kernel (TPU VM, internet on): install landmark-kaggle from the attached wheel, then train.

`train --kaggle` finds everything among the inputs by what it holds: the shard
dataset(s), a backbone weights file if one is attached (else ImageNet weights
are downloaded), and this kernel's previous version's output (attached by
`landmark-kaggle kernels push train --continue`), whose checkpoint it copies in
and resumes, so each version continues where the last one stopped. It trains on
the TPU through JAX (runtime.strategy=tpu never falls back to the CPU) and stops
cleanly before Kaggle's session limit; the model folder it writes to
/kaggle/working/model is what `landmark-kaggle kernels bundle --model` packs.
"""

import sys

from prelude import run  # `landmark-kaggle kernels push` replaces this line with kernels/prelude.py

sys.exit(run("landmark_kaggle.cli", "train", "--kaggle", "--set", "runtime.strategy=tpu",
             "--set", "model.weights=imagenet", "--set", "session.time_budget=8h30m"))
