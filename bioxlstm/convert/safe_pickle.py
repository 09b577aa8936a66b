"""Read the weights of a PyTorch Lightning checkpoint without running any pickled code.

A Lightning `.ckpt` is a `torch.save` zip archive whose pickle also holds objects of other
libraries (an omegaconf `DictConfig` in `hyper_parameters`, callback and loop states), so
`torch.load(weights_only=True)` refuses it, and `weights_only=False` would run whatever the file
asks for. The unpickler here resolves only the few globals that rebuild tensors and plain
containers; every other global becomes an inert placeholder: its module is never imported and
nothing of it is ever called. Only `state_dict` is returned.
"""

import collections
import io
import pickle
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from .errors import ConversionError

# What `torch.save` before 1.6 wrote first (its pickled magic number); that format is not a zip.
_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"

_Storage = collections.namedtuple("_Storage", "untyped dtype")
# Stands for `torch.FloatStorage` etc.: in a pickle those only name the dtype of a storage.
_StorageType = collections.namedtuple("_StorageType", "dtype")


def _tensor(storage, offset, size, stride, dtype=None, metadata=None) -> torch.Tensor:
    # requires_grad and backward hooks are dropped: a state dict needs only the values.
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError(f"a tensor without a storage record ({storage!r:.80})")
    dtype = storage.dtype if dtype is None else dtype
    if not isinstance(dtype, torch.dtype):
        raise pickle.UnpicklingError(f"a tensor of dtype {dtype!r:.80}")
    tensor = torch.empty(0, dtype=dtype).set_(storage.untyped, offset, size, stride)
    if metadata:  # the conj / neg bits of complex views
        if not (isinstance(metadata, dict) and all(isinstance(v, bool) for v in metadata.values())):
            raise pickle.UnpicklingError(f"tensor metadata {metadata!r:.80}")
        torch._C._set_tensor_metadata(tensor, metadata)
    return tensor


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks, metadata=None):
    return _tensor(storage, offset, size, stride, None, metadata)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype, metadata=None):
    return _tensor(storage, offset, size, stride, dtype, metadata)


def _rebuild_parameter(data, *_ignored) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError(f"a parameter without tensor data ({data!r:.80})")
    return data


class _Inert:
    """An object of a class the checkpoint names but that is never imported. It accepts each
    thing a pickle can do to an object (construct, call, set state, add items) and only records it."""

    _global = "?"

    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls)
        self.__dict__.update(_args=args, _kwargs=kwargs, _state=None, _items={}, _list=[])
        return self

    def __call__(self, *args, **kwargs):  # pickle applies objects too, e.g. a pickled functools.partial
        return type(self)(*args, **kwargs)

    def __setstate__(self, state):
        self._state = state

    def __setitem__(self, key, value):
        self._items[key] = value

    def append(self, value):
        self._list.append(value)

    def extend(self, values):
        self._list.extend(values)

    add = append

    def __repr__(self):
        return f"<{self._global} (not loaded)>"


_SAFE_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    **{("torch", name): _StorageType(dtype) for name, dtype in torch.storage._storage_type_to_dtype_map().items()},
    ("torch", "UntypedStorage"): _StorageType(torch.uint8),
    ("torch.storage", "UntypedStorage"): _StorageType(torch.uint8),
    # vars(), not getattr(torch, name): the latter imports submodules on demand.
    **{("torch", name): value for name, value in vars(torch).items() if isinstance(value, torch.dtype)},
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{(module, cls.__name__): cls for module in ("builtins", "__builtin__")
       for cls in (set, frozenset, slice, complex, bytearray)},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, read_record, byteorder: str):
        super().__init__(file)
        self.read_record, self.byteorder = read_record, byteorder
        self.storages: dict[str, _Storage] = {}
        self.inert: dict[tuple[str, str], type] = {}

    def find_class(self, module, name):
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[module, name]
        # A fresh class per global, because the NEWOBJ opcode insists on getting a class.
        if (module, name) not in self.inert:
            self.inert[module, name] = type(f"Inert_{name}", (_Inert,), {"_global": f"{module}.{name}"})
        return self.inert[module, name]

    def persistent_load(self, saved_id):
        if not (isinstance(saved_id, tuple) and len(saved_id) == 5 and saved_id[0] in ("storage", b"storage")):
            raise pickle.UnpicklingError(f"unknown persistent id {saved_id!r:.80}")
        storage_type, key, _location, numel = saved_id[1:]
        if not isinstance(storage_type, _StorageType) or not isinstance(numel, int):
            raise pickle.UnpicklingError(f"malformed storage reference {saved_id!r:.80}")
        key = key.decode() if isinstance(key, bytes) else str(key)
        if key not in self.storages:
            self.storages[key] = self._load_storage(key, storage_type.dtype, numel)
        return self.storages[key]

    def _load_storage(self, key: str, dtype: torch.dtype, numel: int) -> _Storage:
        raw = self.read_record(f"data/{key}")
        if len(raw) != numel * torch._utils._element_size(dtype):
            raise pickle.UnpicklingError(f"storage record data/{key} holds {len(raw)} bytes for {numel} x {dtype}")
        # A bytearray copy, so the tensors own writable memory that outlives the archive.
        untyped = torch.frombuffer(bytearray(raw), dtype=torch.uint8).untyped_storage() if raw else torch.UntypedStorage(0)
        if self.byteorder != sys.byteorder:
            untyped.byteswap(dtype)
        return _Storage(untyped, dtype)


def load_lightning_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The `state_dict` of a Lightning checkpoint (or of any `torch.save` archive of a dict that has
    one), as a dict of CPU tensors; no code from the file runs and no module it names is imported."""
    path = Path(path)
    checkpoint = load_archive(path)
    if not isinstance(checkpoint, Mapping) or "state_dict" not in checkpoint:
        found = f"keys {sorted(map(str, checkpoint))[:8]}" if isinstance(checkpoint, Mapping) else repr(checkpoint)[:80]
        raise ConversionError(f"{path}: no state_dict in the checkpoint (found {found})")
    state = checkpoint["state_dict"]
    if not isinstance(state, Mapping):
        raise ConversionError(f"{path}: state_dict is {state!r:.80}, not a mapping of names to tensors")
    bad = non_tensor_entries(state)
    if bad:
        raise ConversionError(f"{path}: state_dict holds entries that are not tensors ({', '.join(bad[:5])})")
    return dict(state)


def non_tensor_entries(state: Mapping) -> list[str]:
    """`'key': what` of every entry of `state` that is not a tensor under a string key; an object of
    a class the file names is shown by that name (it was never loaded)."""
    return [f"{key!r}: {value!r:.60}" if isinstance(value, _Inert) else f"{key!r}: {type(value).__name__}"
            for key, value in state.items()
            if not isinstance(key, str) or not isinstance(value, torch.Tensor)]


def load_archive(path: Path):
    """What a `torch.save` zip archive holds, any pickle protocol, with tensors rebuilt and every
    other class replaced by an inert placeholder; ConversionError for a file that is not one."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    with open(path, "rb") as file:
        head = file.read(len(_LEGACY_MAGIC))
    if head.startswith(_LEGACY_MAGIC):
        raise ConversionError(f"{path}: a checkpoint in the legacy (torch < 1.6, non-zip) format, which is not supported")
    if not zipfile.is_zipfile(path):
        what = "a truncated zip archive" if head.startswith(b"PK\x03\x04") else "not a PyTorch checkpoint (not a zip archive)"
        raise ConversionError(f"{path}: {what}")
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [name for name in archive.namelist() if name.endswith("/data.pkl") and name.count("/") == 1]
            if len(pickles) != 1:
                raise ConversionError(f"{path}: a zip archive but not a torch.save checkpoint (no <archive>/data.pkl)")
            prefix = pickles[0][: -len("data.pkl")]

            def read_record(name: str) -> bytes:
                info = archive.NameToInfo.get(prefix + name)
                if info is None:
                    raise ConversionError(f"{path}: no record {name} in the archive (truncated or corrupt checkpoint)")
                with archive.open(info) as record:
                    if info.CRC == 0:  # torch.save under set_crc32_options(False) writes no checksums
                        record._expected_crc = None
                    return record.read()

            byteorder = read_record("byteorder").decode() if prefix + "byteorder" in archive.NameToInfo else "little"
            unpickler = _RestrictedUnpickler(io.BytesIO(read_record("data.pkl")), read_record, byteorder)
            checkpoint = unpickler.load()
    except ConversionError:
        raise
    except Exception as error:  # a damaged or hostile pickle can fail in many ways; all mean the same here
        reason = str(error).splitlines()[0][:200] if str(error) else ""
        raise ConversionError(f"{path}: unreadable checkpoint ({type(error).__name__}: {reason})") from None
    return checkpoint
