"""Code a set of images with a learned model into one self-checking byte string, and back.

Units are coded one after another on one message (bits-back models chain: each unit's pops draw
on the bits the previous units pushed, so only the first unit needs initial clean bits). A stack
[N, C, H, W] is cut into batches of `batch` images; a list of images is coded image by image, and
models with `coding_tiles` (HiLLoC) cut each image into tiles. The decoder pops the units in
reverse, runs the same networks on the same shapes, and finally checks that the message is back
at its initial state and that the CRC32 of the decoded pixels matches the encoder's.

Numerics. The decoder must rebuild the encoder's CDFs bit for bit. By default the networks run under
`shardzip.numerics.exact_numerics` (`exact-3`): the same bits on any thread count, CPU kernel set,
CPU vendor, CPU or CUDA, so the container decodes anywhere; containers of older exact versions decode
under their own again (`exact-2` anywhere; `exact-1`, whose sqrt was torch's, where torch's sqrt rounds
as the encoder's did).
`numerics="float"` runs plain torch floats (faster, not portable): the container records the
encoder's torch thread count and the decoder repeats it; it still needs the same device kind,
kernels and library. Containers of version 1 (written before numerics were recorded) are plain
floats of unknown thread count: the decoder tries this process's count, then 1 ... the machine's
cores, and says which one worked (`decode_notes`).

Layout (little endian), version 2::

    b"SZMC" | version u8 | flags u8 (1: bits-back) | family length u8 | family | numerics u8 (0 float,
    1 exact-1, 2 exact-2, 3 exact-3) | torch threads at encoding u16 (float; 0 for exact) | lanes u32
    | clean words per lane u32
    | items u32 | per item: C, H, W, B u32 | crc32 of pixels u32 | crc32 of everything before u32
    | message (shardzip.coding.Message.to_bytes)

Version 1 is the same without the numerics and threads fields.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from shardzip.coding import Message
from shardzip.errors import CodingError, DecodeMismatchError, MessageFormatError, MessageUnderflowError, NumericsError
from shardzip.models.base import LosslessModel
from shardzip.numerics import EXACT, FLOAT, NUMERICS, is_exact, numerics_context

MAGIC = b"SZMC"
VERSION = 2
LEGACY_VERSION = 1
_HEAD = struct.Struct("<4sBBB")
_NUMERICS = struct.Struct("<BH")
_GEOM = struct.Struct("<III")
_DIMS = struct.Struct("<IIII")
_U32 = struct.Struct("<I")
MAX_RETRIES = 6


def _items(images: torch.Tensor | Sequence[torch.Tensor], batch: int) -> list[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        return [images[i:i + batch] for i in range(0, images.shape[0], batch)]
    return [img[None] if img.dim() == 3 else img for img in images]


def tile_boxes(model: LosslessModel, height: int, width: int) -> list[tuple[int, int, int, int]]:
    """(row, col, height, width) of the units an image is coded in, row-major (one unless the model tiles)."""
    t = int(getattr(model, "tile", 0) or 0) or max(height, width)
    return [(r, q, min(t, height - r), min(t, width - q)) for r in range(0, height, t) for q in range(0, width, t)]


def _units(model: LosslessModel, item: torch.Tensor) -> list[torch.Tensor]:
    return [item[..., r:r + h, q:q + w] for r, q, h, w in tile_boxes(model, item.shape[2], item.shape[3])]


def _pixels_crc(items: Sequence[torch.Tensor]) -> int:
    crc = 0
    for x in items:
        crc = zlib.crc32(np.ascontiguousarray(x.cpu().numpy().astype(np.uint16)).tobytes(), crc)
    return crc


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    before = torch.get_num_threads()
    if threads and threads != before:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def compress(model: LosslessModel, images: torch.Tensor | Sequence[torch.Tensor], batch: int = 16,
             lanes: int | None = None, numerics: str = EXACT) -> bytes:
    """Code `images` (a stack [N, C, H, W] or a list of [C, H, W]) into bytes, under `numerics`
    (`exact-3`: decodes on any machine; `float`: plain torch, decodes only under the same threads and kernels)."""
    return compress_scored(model, images, batch, lanes, numerics)[0]


def compress_scored(model: LosslessModel, images: torch.Tensor | Sequence[torch.Tensor], batch: int = 16,
                    lanes: int | None = None, numerics: str = EXACT) -> tuple[bytes, list[float] | None]:
    """`compress`, and -log2 p of every image from the same network pass (the models' `encode`), or None for a
    family whose `encode` does not return it (the caller then scores with `nll_bits`, a second pass)."""
    if numerics not in NUMERICS:
        raise NumericsError(f"unknown numerics {numerics!r}; shardzip codes with {', '.join(NUMERICS)}")
    items = [x.long() for x in _items(images, batch)]
    units = [u for item in items for u in _units(model, item)]
    if not units:
        raise MessageFormatError("nothing to compress: no images given")
    lanes = lanes or model.coding_lanes(tuple(units[0].shape))
    device = next(model.parameters()).device
    words = model.initial_words(tuple(units[0].shape), lanes) if model.bits_back else 0
    for _ in range(MAX_RETRIES):
        msg = Message.with_clean_bits(lanes, words, device=device) if model.bits_back else Message(lanes, device)
        try:
            with _FLOAT_LOCK if numerics == FLOAT else contextlib.nullcontext(), numerics_context(numerics):
                scores = [model.encode(msg, unit.to(device)) for unit in units]
                threads = torch.get_num_threads() if numerics == FLOAT else 0
            break
        except MessageUnderflowError:
            if not model.bits_back:
                raise
            words *= 2  # the first pops needed more initial bits than estimated
    else:
        raise MessageUnderflowError(f"bits-back coding still ran out of initial bits with {words} words per lane")
    family = model.family.encode()
    head = _HEAD.pack(MAGIC, VERSION, int(model.bits_back), len(family)) + family
    head += _NUMERICS.pack(NUMERICS.index(numerics), threads)
    head += _GEOM.pack(lanes, words, len(items))
    head += b"".join(_DIMS.pack(x.shape[1], x.shape[2], x.shape[3], x.shape[0]) for x in items)
    head += _U32.pack(_pixels_crc(items))
    return head + _U32.pack(zlib.crc32(head)) + msg.to_bytes(), _per_image(scores, items, model)


def _per_image(scores: list, items: list[torch.Tensor], model: LosslessModel) -> list[float] | None:
    """Bits per image from the units' scores (a tiled image's units summed); None unless every unit has one."""
    if any(s is None for s in scores):
        return None
    out, k = [], 0
    for item in items:
        n = len(tile_boxes(model, item.shape[2], item.shape[3]))
        out.extend(float(v) for v in torch.stack([s.double().cpu() for s in scores[k:k + n]]).sum(0))
        k += n
    return out


def read_header(data: bytes) -> dict:
    """The container's fields (without decoding the message)."""
    view = memoryview(data)
    try:
        magic, version, flags, n = _HEAD.unpack_from(view, 0)
        if magic != MAGIC:
            raise MessageFormatError(f"not a shardzip model container (magic {bytes(magic)!r})")
        if version not in (LEGACY_VERSION, VERSION):
            raise MessageFormatError(f"model container version {version} is not supported (this shardzip reads "
                                     f"{LEGACY_VERSION} and {VERSION}); upgrade shardzip")
        pos = _HEAD.size
        family = bytes(view[pos:pos + n]).decode()
        pos += n
        code, threads = 0, 0  # version 1: plain floats, thread count not recorded
        if version >= 2:
            code, threads = _NUMERICS.unpack_from(view, pos)
            pos += _NUMERICS.size
        lanes, words, count = _GEOM.unpack_from(view, pos)
        pos += _GEOM.size
        if count > (len(view) - pos) // _DIMS.size:
            raise MessageFormatError(f"model container header is truncated or damaged: {count} items declared")
        shapes = []
        for _ in range(count):
            c, h, w, b = _DIMS.unpack_from(view, pos)
            shapes.append((b, c, h, w))
            pos += _DIMS.size
        (crc,) = _U32.unpack_from(view, pos)
        pos += _U32.size
        (head_crc,) = _U32.unpack_from(view, pos)
    except (struct.error, UnicodeDecodeError) as exc:
        raise MessageFormatError(f"model container header is truncated or damaged: {exc}") from exc
    if zlib.crc32(view[:pos]) != head_crc:
        raise MessageFormatError("model container header CRC32 does not match: the bytes are damaged")
    if code >= len(NUMERICS):
        raise MessageFormatError(f"model container names numerics {code}, unknown to this shardzip (it knows "
                                 f"{', '.join(NUMERICS)}): it was written by a newer shardzip; upgrade")
    return {"family": family, "bits_back": bool(flags & 1), "lanes": lanes, "words": words, "shapes": shapes,
            "crc": crc, "message_offset": pos + _U32.size, "version": version, "numerics": NUMERICS[code],
            "threads": threads}


_notes = threading.local()
# torch's thread count is per process: float coding holds it steady (and recorded) while it runs
_FLOAT_LOCK = threading.RLock()


@contextlib.contextmanager
def decode_notes() -> Iterator[list[dict]]:
    """Collect, per container decoded in this thread, how it was decoded: numerics, threads, attempts."""
    outer = getattr(_notes, "sink", None)
    sink: list[dict] = []
    _notes.sink = sink
    try:
        yield sink
    finally:
        _notes.sink = outer
        if outer is not None:
            outer.extend(sink)


def _note(**what) -> None:
    sink = getattr(_notes, "sink", None)
    if sink is not None:
        sink.append(what)


def legacy_thread_counts() -> list[int]:
    """Thread counts a version-1 container may have been coded with: this process's first, then 1 ... cores."""
    here = torch.get_num_threads()
    return [here] + [t for t in range(1, max(here, os.cpu_count() or 1) + 1) if t != here]


def decompress(model: LosslessModel, data: bytes) -> list[torch.Tensor]:
    """Decode the items (batches [B, C, H, W]) of a `compress` output, under the numerics it records."""
    head = read_header(data)
    if head["family"] != model.family:
        raise DecodeMismatchError(f"these bytes were coded with a {head['family']!r} model, not {model.family!r}")
    if is_exact(head["numerics"]):  # the container's own exact version (exact-1 with torch's sqrt)
        with numerics_context(head["numerics"]):
            items = _decode_items(model, data, head)
        _note(numerics=head["numerics"], threads=None, attempts=1)
        return items
    if head["version"] >= 2:  # float numerics: repeat the encoder's thread count
        with _FLOAT_LOCK, _torch_threads(head["threads"]), torch.no_grad():
            items = _decode_items(model, data, head)
        _note(numerics=FLOAT, threads=head["threads"], attempts=1)
        return items
    Message.from_bytes(memoryview(data)[head["message_offset"]:])  # damaged framing fails alike for every count
    tried, first_error = [], None
    for threads in legacy_thread_counts():
        tried.append(threads)
        try:
            with _FLOAT_LOCK, _torch_threads(threads), torch.no_grad():
                items = _decode_items(model, data, head)
        except CodingError as exc:  # other CDFs than the encoder's: CRC, underflow or an impossible state
            first_error = first_error or exc
            continue
        _note(numerics=FLOAT, threads=threads, attempts=len(tried), legacy=True)
        return items
    raise DecodeMismatchError(
        f"this container was coded before shardzip recorded numerics (float networks, thread count unknown) and "
        f"does not decode with {', '.join(map(str, tried))} torch threads on this machine ({first_error}); decode it "
        "on the kind of machine, device and torch version that wrote it")


def _decode_items(model: LosslessModel, data: bytes, head: dict) -> list[torch.Tensor]:
    device = next(model.parameters()).device
    msg, _ = Message.from_bytes(memoryview(data)[head["message_offset"]:], device)
    items = [torch.zeros(shape, dtype=torch.int64) for shape in head["shapes"]]
    plan = [(i, box) for i, (b, c, h, w) in enumerate(head["shapes"]) for box in tile_boxes(model, h, w)]
    for i, (r, q, h, w) in reversed(plan):  # LIFO: the last unit coded comes off first
        b, c = head["shapes"][i][:2]
        items[i][..., r:r + h, q:q + w] = model.decode(msg, (b, c, h, w)).cpu()
    if head["bits_back"]:
        msg.check_clean_bits(head["words"])
    else:
        msg.check_empty()
    if _pixels_crc(items) != head["crc"]:
        raise DecodeMismatchError("decoded pixels fail their CRC32: the decoder did not retrace the encoder "
                                  "(other weights, device, dtype or library version than at encoding)")
    return items
