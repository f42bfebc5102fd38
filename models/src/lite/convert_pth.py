"""Convert a legacy (pre-zip) PyTorch state_dict file to safetensors, without torch.

Usage: python3 convert_pth.py IN.pth OUT.safetensors

Only the standard library is used: the pickle stream is read with a restricted
unpickler that knows the handful of torch globals a state_dict needs, and the
raw storages that follow the pickles are sliced into tensors. Squire embeds
this script and runs it from `squire models fetch lite`.
"""
import collections
import json
import pickle
import struct
import sys

MAGIC = 0x1950A86A20F9469CFC6C
DTYPES = {  # storage class -> (safetensors dtype, element size)
    "FloatStorage": ("F32", 4),
    "DoubleStorage": ("F64", 8),
    "HalfStorage": ("F16", 2),
    "LongStorage": ("I64", 8),
    "IntStorage": ("I32", 4),
}


class StorageType:
    def __init__(self, name):
        self.name = name


class StorageRef:
    def __init__(self, kind, key, numel):
        self.kind, self.key, self.numel = kind, key, numel


class TensorRef:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)


def rebuild_tensor_v2(storage, offset, size, stride, *_rest):
    return TensorRef(storage, offset, size, stride)


class Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return rebuild_tensor_v2
        if module == "torch" and name in DTYPES:
            return StorageType(name)
        raise pickle.UnpicklingError(f"refusing global {module}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, kind, key, _location, numel, _view = pid
        return StorageRef(kind.name, key, numel)


def gather(raw, esize, t):
    """Row-major bytes of a strided view over a storage."""
    import itertools

    out = bytearray()
    ranges = [range(d) for d in t.size]
    for idx in itertools.product(*ranges):
        e = t.offset + sum(i * s for i, s in zip(idx, t.stride))
        out += raw[e * esize:(e + 1) * esize]
    return bytes(out)


def main(src, dst):
    with open(src, "rb") as f:
        if pickle.load(f) != MAGIC:
            raise SystemExit(f"{src}: not a legacy PyTorch file (bad magic number)")
        pickle.load(f)  # protocol version
        pickle.load(f)  # system info
        state = Unpickler(f).load()
        keys = pickle.load(f)
        storages = {}
        for key in keys:
            (numel,) = struct.unpack("<q", f.read(8))
            storages[key] = (numel, f.tell())
            # Element size is known only through the tensors that use the storage.
            kinds = {t.storage.kind for t in state.values() if isinstance(t, TensorRef) and t.storage.key == key}
            size = DTYPES[kinds.pop()][1] if kinds else 4
            f.seek(numel * size, 1)
        header, blobs, offset = {}, [], 0
        for name, t in state.items():
            if not isinstance(t, TensorRef):
                continue
            dtype, esize = DTYPES[t.storage.kind]
            numel = 1
            for d in t.size:
                numel *= d
            expected, acc = [], 1
            for d in reversed(t.size):
                expected.insert(0, acc)
                acc *= d
            storage_numel, start = storages[t.storage.key]
            if numel > 1 and list(t.stride) != expected:
                # A strided view (e.g. channels-last): gather its elements in row-major order.
                f.seek(start)
                raw = f.read(storage_numel * esize)
                if len(raw) != storage_numel * esize:
                    raise SystemExit(f"{src}: truncated storage for tensor {name}")
                data = gather(raw, esize, t)
            else:
                f.seek(start + t.offset * esize)
                data = f.read(numel * esize)
            if len(data) != numel * esize:
                raise SystemExit(f"{src}: truncated data for tensor {name}")
            header[name] = {"dtype": dtype, "shape": list(t.size), "data_offsets": [offset, offset + len(data)]}
            blobs.append(data)
            offset += len(data)
    header["__metadata__"] = {"format": "pt", "converted_from": src.rsplit("/", 1)[-1]}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(dst, "wb") as out:
        out.write(struct.pack("<Q", len(h)))
        out.write(h)
        for b in blobs:
            out.write(b)
    print(f"converted {len(blobs)} tensors")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: convert_pth.py IN.pth OUT.safetensors")
    main(sys.argv[1], sys.argv[2])
