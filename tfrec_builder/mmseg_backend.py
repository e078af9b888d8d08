"""The ``mmseg:<config>`` embedding backend: a semantic-segmentation network from mmsegmentation (``seg`` extra).

The poster compared segmentation networks as feature extractors (its Table 1):
``knet-s3_swin-l_upernet_8xb2-adamw-80k_ade20k-512x512``,
``deeplabv3plus_r101-d8_4xb4-160k_ade20k-512x512`` and
``knet-s3_r50-d8_deeplabv3_8xb2-adamw-80k_ade20k-512x512``. Any config that
ships inside the mmsegmentation wheel (``mmseg/.mim/configs``) is accepted by
its file stem, or a path to a config file. The checkpoint comes from a local
path (``--weights``); ``--weights none`` builds the network with random weights.

Which tensor is the embedding, and why: the input of the decode head's final
1x1 classifier (``conv_seg``), global-average-pooled over the image. That map
is the decode head's fused feature (ASPP + low-level skip for DeepLabV3+,
UPerNet's pyramid fusion inside K-Net's kernel generator), the last layer
that still describes the scene rather than scores of the 150 ADE20K
classes, and it has 512 channels in all three poster models, so their
embeddings can be averaged (``avg:``). For K-Net only the kernel-generating
head is run: the iterative kernel updates refine masks, not this feature.

Images go in as 3 x 512 x 512 (the size ``inference_segmentor`` gave the
poster), resized without keeping the aspect ratio and normalised by the
config's own data preprocessor.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import numpy as np

from landmark_kaggle.fileio import file_sha256
from tfrec_builder.backends import Backend, BackendError, resize_square, weights_file

DEFAULT_SEG_SIZE = 512


def _import_mmseg():
    try:
        import torch
        from mmseg.apis import init_model
    except ImportError as exc:
        raise BackendError(f"mmseg backends need the seg extra (torch, mmsegmentation, mmcv with ops): {exc}; "
                           "see README command (b)") from None
    return torch, init_model


def configs_dir() -> Path:
    import mmseg

    return Path(mmseg.__file__).parent / ".mim" / "configs"


def find_config(name: str) -> Path:
    """A config file path from a path or a config stem shipped with mmsegmentation."""
    path = Path(name).expanduser()
    if path.suffix == ".py":
        if not path.is_file():
            raise BackendError(f"mmseg:{name}: config file not found")
        return path
    root = configs_dir()
    found = sorted(root.glob(f"*/{name}.py"))
    if not found:
        stems = [p.stem for p in root.glob("*/*.py") if not p.parent.name.startswith("_")]
        close = difflib.get_close_matches(name, stems, n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise BackendError(f"mmseg:{name}: no such config in {root}{hint}")
    return found[0]


def feature_head(decode_head):
    """The head whose ``conv_seg`` input is the embedding (K-Net: its kernel-generating head)."""
    head = getattr(decode_head, "kernel_generate_head", decode_head)
    if not hasattr(head, "conv_seg"):
        raise BackendError(f"{type(decode_head).__name__} has no conv_seg classifier to take features from")
    return head


class MMSegBackend(Backend):
    def __init__(self, config: str, weights: str | None, image_size: int | None, seed: int = 0):
        torch, init_model = _import_mmseg()
        cfg_path = find_config(config)
        self.name = f"mmseg:{config}"
        self.image_size = int(image_size or DEFAULT_SEG_SIZE)
        if weights is None:
            raise BackendError(f"{self.name}: pass --weights /path/to/checkpoint.pth (the mmsegmentation model-zoo "
                               f"checkpoint listed for {cfg_path.stem} in {cfg_path.parent / 'metafile.yaml'}), "
                               "or --weights none for random weights")
        if str(weights).lower() == "none":
            torch.manual_seed(seed)
            checkpoint, self.weights, self.weights_sha256 = None, "none", f"random:seed{seed}"
        else:
            path = weights_file(weights, self.name)
            checkpoint, self.weights, self.weights_sha256 = str(path), str(path), file_sha256(path)
        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = init_model(str(cfg_path), checkpoint, device=self.device).eval()
        self.head = feature_head(self.model.decode_head)
        self._captured = []
        self.head.conv_seg.register_forward_hook(lambda _m, inputs, _o: self._captured.append(inputs[0]))
        self.dim = int(self.head.conv_seg.in_channels)

    def embed(self, images: list[np.ndarray]) -> np.ndarray:
        torch = self.torch
        # The data preprocessor expects BGR (mmseg reads with OpenCV) and converts with bgr_to_rgb.
        tensors = [torch.from_numpy(np.ascontiguousarray(resize_square(im, self.image_size)[..., ::-1]))
                   .permute(2, 0, 1).contiguous() for im in images]
        with torch.no_grad():
            data = self.model.data_preprocessor({"inputs": tensors, "data_samples": None}, False)
            feats = self.model.extract_feat(data["inputs"])
            self._captured.clear()
            self.head(feats)
            pooled = self._captured[-1].float().mean(dim=(2, 3))
        return pooled.cpu().numpy().astype(np.float32)
