"""Read and write safetensors files by byte ranges, so a checkpoint of any size is handled in bounded memory.

A safetensors file is an 8-byte little-endian header length N, a JSON header of N bytes
`{name: {"dtype": "BF16", "shape": [rows, cols], "data_offsets": [begin, end]}, "__metadata__": {...}}` and then the
raw tensor bytes, each tensor at `8 + N + begin`. Nothing here loads a whole file: headers are parsed alone, a tensor
is read in row chunks of a few MiB, and a new file is written by copying byte ranges from other files (in the
kernel, with `os.copy_file_range`, where it is available).

    >>> header = read_header(Path("model-00001-of-00004.safetensors"))
    >>> header.tensors["model.embed_tokens.weight"].shape, header.tensors["model.embed_tokens.weight"].dtype
    ((128256, 4096), 'BF16')
    >>> block = read_columns(header, "model.embed_tokens.weight", 0, 512)   # float32 [128256, 512], ~4 MiB reads
    >>> copied = TensorSpec("x", "BF16", (2, 3), ByteRange(Path("old.safetensors"), 128, 12))   # bytes of a file
    >>> computed = TensorSpec("y", "F32", (2,), lambda: torch.ones(2))       # made when the writer reaches it
    >>> write_safetensors(Path("out.safetensors"), [copied, computed], {"format": "pt"}).tensors["y"].begin
    12
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tokenadapt.errors import InputError

MAX_HEADER_BYTES = 100_000_000  # the safetensors library refuses larger headers
CHUNK_BYTES = 64 << 20  # bytes read or copied per step
ITEM_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}  # fmt: skip
FLOAT_DTYPES: dict[str, torch.dtype] = {
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
}
DTYPE_NAMES = {dtype: name for name, dtype in FLOAT_DTYPES.items()}


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors file: `begin`/`end` are offsets into the data area (after the header)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def numel(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count


@dataclass(frozen=True)
class SafetensorsHeader:
    """A parsed, validated header; `tensors` is in file order (ascending offsets)."""

    path: Path
    data_start: int
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str] | None
    file_size: int

    def offset(self, name: str) -> int:
        """Absolute file offset of a tensor's first byte."""
        return self.data_start + self.tensors[name].begin


@dataclass(frozen=True)
class ByteRange:
    """`length` bytes of the file `path` from `offset`."""

    path: Path
    offset: int
    length: int


@dataclass(frozen=True)
class TensorSpec:
    """A tensor to write: its header entry and where its bytes come from, a byte range of a file or a function
    called when the writer reaches the tensor (so a file of several computed tensors holds one at a time)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    source: ByteRange | Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        if isinstance(self.source, ByteRange):
            return self.source.length
        count = 1
        for size in self.shape:
            count *= size
        return count * ITEM_BYTES[self.dtype]


def _broken(path: Path, problem: str) -> InputError:
    return InputError(
        f"{path} is not a complete safetensors file: {problem}.",
        "The file is truncated or corrupted (an interrupted download or copy): re-download or re-save the model.",
    )


def read_header(path: Path) -> SafetensorsHeader:
    """Parse and validate the header of `path` without reading tensor data; InputError if it is broken.

    Checks what the safetensors library checks on load: a sane header length, a JSON object, known entry fields,
    each tensor's byte count matching dtype x shape, and tensors that tile the data area exactly (no gap, no
    overlap, nothing missing at the end: a truncated file fails here).
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise _broken(path, f"it has {size} bytes, fewer than the 8-byte header length")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES or 8 + length > size:
                raise _broken(path, f"its header claims {length} bytes but the file has {size}")
            raw = handle.read(length)
    except OSError as error:
        raise InputError(f"Cannot read {path}: {error}.", "Check the path and its permissions.") from error
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise _broken(path, f"its header is not JSON ({error})") from error
    if not isinstance(header, dict):
        raise _broken(path, "its header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise _broken(path, "its __metadata__ is not a string -> string map")
    entries = [_entry(path, name, spec) for name, spec in header.items()]
    entries.sort(key=lambda e: (e.begin, e.end))
    data_start, position = 8 + length, 0
    for entry in entries:
        if entry.begin != position:
            raise _broken(path, f"tensor {entry.name!r} starts at byte {entry.begin}, expected {position}")
        position = entry.end
    if data_start + position != size:
        raise _broken(path, f"its tensors need {data_start + position} bytes but the file has {size}")
    return SafetensorsHeader(path, data_start, {e.name: e for e in entries}, metadata, size)


def _entry(path: Path, name: str, spec: Any) -> TensorEntry:
    try:
        dtype, shape, (begin, end) = spec["dtype"], spec["shape"], spec["data_offsets"]
        ok = (
            isinstance(dtype, str)
            and isinstance(shape, list)
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
            and all(isinstance(o, int) and not isinstance(o, bool) for o in (begin, end))
            and 0 <= begin <= end
        )
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise _broken(path, f"the header entry of {name!r} is malformed ({str(spec)[:80]})")
    entry = TensorEntry(name, dtype, tuple(shape), begin, end)
    item = ITEM_BYTES.get(dtype)
    if item is not None and entry.numel * item != entry.nbytes:
        raise _broken(path, f"tensor {name!r} ({dtype} {list(shape)}) should take {entry.numel * item} bytes, "
                      f"its offsets give {entry.nbytes}")  # fmt: skip
    return entry


def encode_header(tensors: Sequence[tuple[str, str, tuple[int, ...], int]], metadata: dict[str, str] | None) -> bytes:
    """The 8-byte length and JSON header for tensors `(name, dtype, shape, nbytes)` laid out in the given order.

    The JSON is padded with spaces to a multiple of 8 bytes (as the safetensors library does), so the data area
    stays aligned.

        >>> encode_header([("x", "F32", (1,), 4)], None)
        b'(\\x00\\x00\\x00\\x00\\x00\\x00\\x00{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}   '
    """
    header: dict[str, Any] = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    position = 0
    for name, dtype, shape, nbytes in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [position, position + nbytes]}
        position += nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def _read_exactly(handle: Any, offset: int, view: memoryview) -> None:
    handle.seek(offset)
    done = 0
    while done < len(view):
        got = handle.readinto(view[done:])
        if not got:
            raise _broken(Path(handle.name), f"it ends before byte {offset + len(view)}")
        done += got


def iter_row_chunks(
    header: SafetensorsHeader, name: str, chunk_bytes: int = CHUNK_BYTES
) -> Iterator[tuple[int, torch.Tensor]]:
    """(first row, rows [n, cols] in the stored dtype) over a float tensor, reading about `chunk_bytes` at a time.

    Each chunk is a view of one reused buffer: copy what you keep before the next step.
    """
    entry = header.tensors[name]
    dtype = FLOAT_DTYPES[entry.dtype]
    rows, cols = (entry.shape[0], 1) if len(entry.shape) == 1 else (entry.shape[0], entry.shape[1])
    row_bytes = cols * ITEM_BYTES[entry.dtype]
    if rows == 0 or row_bytes == 0:
        return
    step = max(1, chunk_bytes // row_bytes)
    buffer = bytearray(min(step, rows) * row_bytes)
    with open(header.path, "rb") as handle:
        for first in range(0, rows, step):
            count = min(step, rows - first)
            view = memoryview(buffer)[: count * row_bytes]
            _read_exactly(handle, header.offset(name) + first * row_bytes, view)
            yield first, torch.frombuffer(view, dtype=dtype).view(count, cols)


def read_columns(
    header: SafetensorsHeader, name: str, start: int, stop: int, chunk_bytes: int = CHUNK_BYTES
) -> torch.Tensor:
    """Columns `start:stop` of a 2-D float tensor (a 1-D one reads as [n, 1]) as a float32 [rows, stop - start].

    Memory: the result plus one chunk, whatever the tensor's size.
    """
    entry = header.tensors[name]
    out = torch.empty((entry.shape[0], stop - start), dtype=torch.float32)
    for first, chunk in iter_row_chunks(header, name, chunk_bytes):
        out[first : first + chunk.shape[0]] = chunk[:, start:stop]
    return out


def all_finite(header: SafetensorsHeader, name: str) -> bool:
    """Whether a float tensor holds no NaN or infinity, read chunk by chunk.

    A chunk's sum is finite exactly when every element is (NaN and infinities propagate), unless finite
    values overflow it; only then are the elements checked one by one.
    """
    for _, chunk in iter_row_chunks(header, name):
        if not bool(torch.isfinite(chunk.sum())) and not bool(torch.isfinite(chunk).all()):
            return False
    return True


def read_tensor(header: SafetensorsHeader, name: str, chunk_bytes: int = CHUNK_BYTES) -> torch.Tensor:
    """A whole float tensor in its stored dtype, read straight into its own memory in bounded steps."""
    entry = header.tensors[name]
    out = torch.empty(entry.shape, dtype=FLOAT_DTYPES[entry.dtype])
    target = out.view(-1).view(torch.uint8).numpy().data if out.numel() else memoryview(bytearray())
    with open(header.path, "rb") as handle:
        for first in range(0, entry.nbytes, chunk_bytes):
            _read_exactly(handle, header.offset(name) + first, target[first : first + chunk_bytes])
    return out


def write_tensor(target: Any, tensor: torch.Tensor, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Append a tensor's bytes (C order, its own dtype) to the open binary file `target` in bounded chunks."""
    flat = tensor.detach().contiguous().view(-1)
    step = max(1, chunk_bytes // max(1, flat.element_size()))
    for first in range(0, flat.numel(), step):
        target.write(flat[first : first + step].view(torch.uint8).numpy().data)
    return flat.numel() * flat.element_size()


def copy_range(source: ByteRange, target: Any, chunk_bytes: int = CHUNK_BYTES) -> None:
    """Append `source`'s bytes to the open binary file `target`, in bounded steps (kernel copy where possible)."""
    target.flush()
    with open(source.path, "rb") as handle:
        remaining, position = source.length, source.offset
        use_kernel = hasattr(os, "copy_file_range")
        buffer: bytearray | None = None
        while remaining:
            step = min(chunk_bytes, remaining)
            if use_kernel:
                try:
                    copied = os.copy_file_range(handle.fileno(), target.fileno(), step, position)
                except OSError as error:
                    if error.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EPERM):
                        raise
                    use_kernel, copied = False, 0
                else:
                    if copied == 0:
                        raise _broken(source.path, f"it ends before byte {source.offset + source.length}")
                    target.seek(0, os.SEEK_END)  # copy_file_range moved the descriptor, not Python's buffer
                if copied:
                    remaining, position = remaining - copied, position + copied
                    continue
            if buffer is None:
                buffer = bytearray(min(chunk_bytes, source.length))
            view = memoryview(buffer)[:step]
            _read_exactly(handle, position, view)
            target.write(view)
            remaining, position = remaining - step, position + step


def write_safetensors(path: Path, tensors: Sequence[TensorSpec], metadata: dict[str, str] | None) -> SafetensorsHeader:
    """Write a safetensors file of `tensors` in the given order: byte ranges are copied, computed tensors are
    made one at a time as the writer reaches them. Returns the written file's (re-read, validated) header.

    Memory: one chunk for copied tensors, the one computed tensor being written.
    """
    for spec in tensors:
        if isinstance(spec.source, ByteRange):
            item = ITEM_BYTES.get(spec.dtype)
            if item is not None and spec.nbytes != item * int(torch.Size(spec.shape).numel()):
                raise ValueError(f"{spec.name}: {spec.nbytes} bytes for {spec.dtype} {list(spec.shape)}")
        elif spec.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{spec.name}: cannot write a computed {spec.dtype} tensor")
    prefix = encode_header([(s.name, s.dtype, s.shape, s.nbytes) for s in tensors], metadata)
    with open(path, "wb") as handle:
        handle.write(prefix)
        for spec in tensors:
            if isinstance(spec.source, ByteRange):
                copy_range(spec.source, handle)
                continue
            tensor = spec.source()
            if tensor.dtype != FLOAT_DTYPES.get(spec.dtype) or tuple(tensor.shape) != spec.shape:
                raise ValueError(
                    f"{spec.name}: got {tensor.dtype} {list(tensor.shape)}, declared {spec.dtype} {spec.shape}"
                )
            write_tensor(handle, tensor)
            del tensor
        handle.flush()
        os.fsync(handle.fileno())
    return read_header(path)


def link_or_copy(source: Path, target: Path, link: bool = True) -> str:
    """Put `source` at `target` as a hard link (same filesystem, `link=True`) or a copy; returns "linked"/"copied"."""
    if link:
        try:
            os.link(source, target)
            return "linked"
        except OSError as error:
            if error.errno == errno.ENOSPC:
                raise
    shutil.copyfile(source, target)
    return "copied"


def ranges_equal(first: ByteRange, second: ByteRange, chunk_bytes: int = CHUNK_BYTES) -> bool:
    """True when two byte ranges hold the same bytes (compared chunk by chunk)."""
    if first.length != second.length:
        return False
    with open(first.path, "rb") as a, open(second.path, "rb") as b:
        a.seek(first.offset)
        b.seek(second.offset)
        remaining = first.length
        while remaining:
            step = min(chunk_bytes, remaining)
            left, right = a.read(step), b.read(step)
            if left != right or len(left) != step:
                return False
            remaining -= step
    return True
