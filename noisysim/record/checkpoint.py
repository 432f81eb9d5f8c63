"""Checkpoints inside a trajectory file: nested dicts of arrays and scalars <-> HDF5 slots.

/checkpoint holds two slots, /checkpoint/a and /checkpoint/b, each a whole checkpoint
tree, and /checkpoint/current (S1: b"a", b"b", or b"" before the first checkpoint). A
checkpoint is written into the slot that is not current, flushed, and only then is
`current` flipped (one byte, flushed): a crash at any moment leaves the current slot whole.
While the file is in SWMR mode only raw data of existing datasets may change, so every
slot dataset has fixed-size, allocated, contiguous storage that is overwritten in place;
a slot is (re)built, out of SWMR mode, only when a checkpoint's layout (keys, dtypes,
shapes, string lengths) differs from the slot's.

Each slot carries a manifest (JSON: kinds, key order, CRC-32 of the leaf bytes) so that a
checkpoint reads back as the same Python types and a half-written slot is recognised.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np

from noisysim.errors import NoisysimError, one_line
from noisysim.record.file import CHECKPOINT, FORMAT_VERSION, LEGACY_CHECKPOINT_NEW

SLOTS = ("a", "b")  # /checkpoint/a, /checkpoint/b: the last checkpoint and the one before
CURRENT = "current"  # /checkpoint/current: which slot holds the last complete checkpoint
MANIFEST = "__noisysim_manifest__"  # per slot: JSON of types, key order and a checksum
# The last commit that reads (and on resume converts) the first checkpoint layout.
LEGACY_READER = "noisysim 0.1.0 at commit e34d63a"


class Plan:
    """A checkpoint turned into what the file stores: groups, leaf arrays and a manifest."""

    def __init__(self, state: Mapping[str, Any]) -> None:
        self.groups: list[str] = []  # slot-relative paths, parents first
        self.leaves: list[tuple[str, np.ndarray]] = []  # slot-relative path, stored array
        root = self._node(state, "", "")
        crc = 0
        for _, array in self.leaves:
            crc = zlib.crc32(_raw_bytes(array), crc)
        manifest = {"format_version": FORMAT_VERSION, "crc32": crc, "root": root}
        self.manifest = json.dumps(manifest, separators=(",", ":")).encode("utf-8")

    def layout(self) -> dict[str, Any]:
        """What a slot must hold to take this checkpoint in place (see _slot_layout)."""
        out: dict[str, Any] = {path: None for path in self.groups}
        out.update({path: (array.shape, array.dtype) for path, array in self.leaves})
        return out

    def _leaf(self, path: str, array: np.ndarray, kind: str, **extra: Any) -> dict:
        self.leaves.append((path, array))
        return {"kind": kind, **extra}

    def _node(self, value: Any, path: str, where: str) -> dict:
        child = (path + "/") if path else ""
        if isinstance(value, Mapping):
            if path:
                self.groups.append(path)
            items = {}
            for key, item in value.items():
                if not isinstance(key, str) or not key or "/" in key or key == ".":
                    raise NoisysimError(
                        f"checkpoint key {where}/{key!r} must be a non-empty str without '/'"
                    )
                if key == MANIFEST:
                    raise NoisysimError(f"checkpoint key {where}/{key} is reserved")
                items[key] = self._node(item, child + key, f"{where}/{key}")
            return {"kind": "dict", "items": items}
        if isinstance(value, (list, tuple)):
            self.groups.append(path)
            items = [
                self._node(item, f"{child}{i}", f"{where}/{i}") for i, item in enumerate(value)
            ]
            return {"kind": "tuple" if isinstance(value, tuple) else "list", "items": items}
        if value is None:
            return {"kind": "none"}
        # numpy first: np.float64 is also a float, and must come back as np.float64
        if isinstance(value, np.ndarray) or (
            isinstance(value, np.generic) and not isinstance(value, (str, bytes))
        ):
            array = np.asarray(value)
            if array.dtype.hasobject or array.dtype.kind in "UMm":
                raise NoisysimError(
                    f"checkpoint entry {where} has dtype {array.dtype}, which HDF5 cannot "
                    "store; store numbers, bytes or a list of str instead"
                )
            try:
                h5py.h5t.py_create(array.dtype, logical=True)
            except (TypeError, ValueError) as err:
                raise NoisysimError(
                    f"checkpoint entry {where} (dtype {array.dtype}) cannot be stored: "
                    f"{one_line(err)}"
                ) from None
            kind = "npscalar" if isinstance(value, np.generic) else "ndarray"
            return self._leaf(path, array, kind)
        if isinstance(value, bool):
            return self._leaf(path, np.array(value, dtype=np.bool_), "bool")
        if isinstance(value, int):
            if -(2**63) <= value < 2**63:
                return self._leaf(path, np.array(value, dtype=np.int64), "int")
            if 0 <= value < 2**64:
                return self._leaf(path, np.array(value, dtype=np.uint64), "int")
            return self._leaf(path, _fixed_text(str(value)), "int")
        if isinstance(value, float):
            return self._leaf(path, np.array(value, dtype=np.float64), "float")
        if isinstance(value, str):
            try:
                text = _fixed_text(value)
            except UnicodeEncodeError as err:
                raise NoisysimError(
                    f"checkpoint entry {where} is a str that UTF-8 cannot encode: "
                    f"{one_line(err)}"
                ) from None
            return self._leaf(path, text, "str", n=len(value.encode("utf-8")))
        if isinstance(value, (bytes, bytearray)):
            return self._leaf(path, np.frombuffer(bytes(value), dtype=np.uint8).copy(), "bytes")
        raise NoisysimError(
            f"checkpoint entry {where} is a {type(value).__name__}; checkpoints hold dicts, "
            "lists, numpy arrays, numbers, str, bytes and None"
        )


def _fixed_text(text: str) -> np.ndarray:
    """A str as a 0-d fixed-length UTF-8 string of exactly its bytes (HDF5 needs >= 1)."""
    data = text.encode("utf-8")
    return np.array(data, dtype=h5py.string_dtype("utf-8", max(1, len(data))))


def _raw_bytes(array: np.ndarray) -> np.ndarray:
    """The bytes of an array in its own dtype and byte order, for the checksum."""
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


def _early_dcpl() -> h5py.h5p.PropDCID:
    """Contiguous storage allocated at creation, so that writes never change metadata."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return dcpl


def _slot_layout(slot: h5py.Group) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            if name != MANIFEST:
                out[name] = (obj.shape, obj.dtype)
        else:
            out[name] = None

    slot.visititems(visit)
    return out


def slot_spec(f: h5py.File, slot: str) -> tuple[dict[str, Any], int] | None:
    """(layout, manifest capacity) of a slot, or None if there is no such slot."""
    cp = f.get(CHECKPOINT)
    group = cp.get(slot) if isinstance(cp, h5py.Group) else None
    if not isinstance(group, h5py.Group):
        return None
    manifest = group.get(MANIFEST)
    if not isinstance(manifest, h5py.Dataset) or manifest.ndim != 1:
        return None
    return _slot_layout(group), manifest.shape[0]


def slot_fits(spec: tuple[dict[str, Any], int] | None, plan: Plan) -> bool:
    """Whether ``plan`` can be written in place into a slot of ``spec`` (see slot_spec)."""
    if spec is None or spec[1] < len(plan.manifest):
        return False
    have, want = spec[0], plan.layout()
    if have.keys() != want.keys():
        return False
    for path, spec in want.items():
        got = have[path]
        if spec is None or got is None:
            if spec is not got:
                return False
        elif got[0] != spec[0] or got[1] != spec[1]:
            return False
    return True


def _build_slot(cp: h5py.Group, slot: str, plan: Plan) -> None:
    """(Re)create an empty slot laid out for ``plan``. Not allowed in SWMR mode."""
    if slot in cp:
        del cp[slot]
    group = cp.create_group(slot)
    for path in plan.groups:
        group.create_group(path)
    for path, array in plan.leaves:
        if array.ndim == 0:  # h5py ignores the dcpl of scalars: writing allocates them
            group.create_dataset(path, data=array, dtype=array.dtype)
        else:
            group.create_dataset(path, shape=array.shape, dtype=array.dtype, dcpl=_early_dcpl())
    capacity = len(plan.manifest) + max(1024, len(plan.manifest) // 2)
    # spaces: an unwritten slot has an empty (invalid) manifest
    group.create_dataset(MANIFEST, data=np.full(capacity, ord(" "), np.uint8))


def build_slots(f: h5py.File, slots: Sequence[str], plan: Plan) -> None:
    """Lay out ``slots`` for ``plan`` (creating /checkpoint if needed). Not in SWMR mode."""
    cp = f.require_group(CHECKPOINT)
    if CURRENT not in cp:
        cp.create_dataset(CURRENT, data=np.bytes_(b""), dtype="S1")
    for slot in slots:
        _build_slot(cp, slot, plan)


def fill_slot(slot: h5py.Group, plan: Plan) -> None:
    """Overwrite a slot laid out for ``plan`` in place; manifest last, padded with spaces."""
    for path, array in plan.leaves:
        if array.size:  # low-level write: same dtype and shape, all of it
            dataset = h5py.h5d.open(slot.id, path.encode("utf-8"))
            dataset.write(h5py.h5s.ALL, h5py.h5s.ALL, np.ascontiguousarray(array))
    manifest = slot[MANIFEST]
    padded = np.full(manifest.shape[0], ord(" "), np.uint8)
    padded[: len(plan.manifest)] = np.frombuffer(plan.manifest, np.uint8)
    manifest[...] = padded


def current_slot(f: h5py.File) -> str:
    """The slot holding the last complete checkpoint: "a", "b", or "" if none."""
    cp = f.get(CHECKPOINT)
    if not isinstance(cp, h5py.Group) or not isinstance(cp.get(CURRENT), h5py.Dataset):
        return ""
    value = cp[CURRENT][()]
    value = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    return value if value in SLOTS else ""


def set_current(f: h5py.File, slot: str) -> None:
    f[CHECKPOINT][CURRENT][()] = np.bytes_(slot.encode("ascii"))


def check_layout(path: Path, f: h5py.File) -> None:
    """Refuse a checkpoint of the first layout, which the first cut of noisysim 0.1.0 wrote:
    one tree written to /_checkpoint_new, its manifest last, then renamed to /checkpoint.
    (A /checkpoint with neither `current` nor a manifest belongs to the slots: a writer
    killed while laying them out left it, and it holds no checkpoint yet.)"""
    cp = f.get(CHECKPOINT)
    if LEGACY_CHECKPOINT_NEW in f or (isinstance(cp, h5py.Group) and CURRENT not in cp
                                      and MANIFEST in cp):
        raise NoisysimError(
            f"{path} holds a checkpoint in the first (pre-release) layout, which this noisysim "
            f"no longer reads; resume it once with {LEGACY_READER}, which converts it, then "
            "continue with this version (its rows read as they are)"
        )


class _Damaged(ValueError):
    pass


def _read_slot(slot: h5py.Group) -> dict:
    text = slot[MANIFEST][...].tobytes().decode("utf-8")
    if not text.strip():
        raise _Damaged("it was never written")
    manifest = json.loads(text)
    crc = [0]

    def leaf(group: h5py.Group, name: str) -> np.ndarray:
        array = group[name][...]
        crc[0] = zlib.crc32(_raw_bytes(array), crc[0])
        return array

    def read(group: h5py.Group, name: str, node: dict) -> Any:
        kind = node["kind"]
        if kind == "dict":
            sub = group[name] if name else group
            return {key: read(sub, key, item) for key, item in node["items"].items()}
        if kind in ("list", "tuple"):
            sub = group[name]
            items = [read(sub, str(i), item) for i, item in enumerate(node["items"])]
            return tuple(items) if kind == "tuple" else items
        if kind == "none":
            return None
        array = leaf(group, name)
        if kind == "bool":
            return bool(array[()])
        if kind == "int":
            raw = array[()]
            return int(raw.decode() if isinstance(raw, bytes) else raw)
        if kind == "float":
            return float(array[()])
        if kind == "str":
            return array.tobytes()[: node["n"]].decode("utf-8")
        if kind == "bytes":
            return array.tobytes()
        if kind == "npscalar":
            return array[()]
        if kind == "ndarray":
            return array
        raise _Damaged(f"entry {group.name}/{name} has unknown kind {kind!r}")

    state = read(slot, "", manifest["root"])
    if crc[0] != manifest["crc32"]:
        raise _Damaged("checksum mismatch (half written)")
    return state


def read_checkpoint(path: Path, f: h5py.File) -> dict | None:
    """The last complete checkpoint, or None if none was ever completed."""
    check_layout(path, f)
    current = current_slot(f)
    if not current:
        return None
    cp = f[CHECKPOINT]
    problem = None
    # the other slot holds the previous checkpoint, unless a writer is overwriting it
    for slot in (current, SLOTS[1 - SLOTS.index(current)]):
        try:
            return _read_slot(cp[slot])
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as err:
            problem = problem or f"{CHECKPOINT}/{slot}: {one_line(err)}"
    raise NoisysimError(f"{path}: no complete checkpoint ({problem})")
