"""The IDX format of MNIST and Fashion-MNIST (LeCun's): a magic number, the dimensions, then the raw values.

A file starts with two zero bytes, a type byte (0x08: unsigned bytes, the only type these data sets use) and
the number of dimensions, then one big-endian uint32 per dimension, then the values in C order. Files may be
gzipped (``.gz``, as distributed) or not. Every check fails with one DataError that names the file.
"""

from __future__ import annotations

import gzip
import pathlib
import zlib

import numpy as np

from ..errors import DataError

IDX_UBYTE = 0x08


def read_idx(path: pathlib.Path, ndim: int) -> np.ndarray:
    """The uint8 array of the IDX file ``path`` (gzipped when its name ends in ``.gz``), of ``ndim`` dimensions."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                raw = handle.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:  # gzip raises BadGzipFile (an OSError) or EOFError
        raise DataError(f"cannot read {path} ({type(error).__name__}: {error}); replace the file") from error
    header = 4 + 4 * ndim
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path} is not an IDX file (wrong magic number); replace the file")
    if raw[2] != IDX_UBYTE or raw[3] != ndim:
        raise DataError(
            f"{path} holds IDX type 0x{raw[2]:02x} with {raw[3]} dimensions, not unsigned bytes with {ndim}; "
            "is it the right file?"
        )
    if len(raw) < header:
        raise DataError(f"{path} is truncated (its header is incomplete); replace the file")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(raw) != expected:
        state = "truncated" if len(raw) < expected else "longer than its header says"
        raise DataError(
            f"{path} is {state}: {len(raw) - header} bytes of values for shape {'×'.join(map(str, shape))}; "
            "replace the file"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()  # writable, owns its memory
