"""The wire format between the trusted grader and a learner's code: plain data, no pickle.

A *message* is a JSON header plus one block of raw bytes holding every array::

    message = u32 header length | header (UTF-8 JSON) | array bytes

and on a pipe each message is framed by its length (``u64``). A value in the header is a
small tree of nodes:

=====================================  ==============================================
node                                   value
=====================================  ==============================================
``{"k": "nd", "dt", "sh", "o", "n"}``  a NumPy array (``dt`` one of :data:`DTYPES`,
                                       shape ``sh``, ``n`` bytes at offset ``o``);
                                       ``"sc": true`` for a NumPy scalar
``{"k": "float", "v": hex}``           a Python float, as ``float.hex()`` (exact, NaN-safe)
``{"k": "int", "v": digits}``          a Python int
``{"k": "bool" | "str", "v"}``         a bool, a (short) string
``{"k": "none"}``                      None
``{"k": "tuple" | "list", "items"}``   a tuple or list of nodes
``{"k": "dict", "items": [[k, n]]}``   a dict with string keys
``{"k": "other", "type": name}``       anything else: only its type's name travels
``{"k": "ref", "step", "index"}``      (requests only) a value kept on the learner's side
=====================================  ==============================================

:func:`decode` rebuilds values from these nodes only: every dtype comes from a fixed list,
every shape is checked against its byte count, sizes, depth and node counts are bounded. No
object of the sender's is ever reconstructed, so a learner's code can hand back numbers and
nothing else.

This file is imported on both sides of the sandbox: by the worker inside it (which sees
only the standard library and NumPy) and by the trusted grader. It must not import bnref.
"""
import json
import struct

import numpy as np

__all__ = ["DTYPES", "Other", "Ref", "WireError", "encode", "decode", "pack", "unpack"]

# The dtypes a value may have on the wire (little-endian; "|b1" is bool).
DTYPES = frozenset(["|b1", "|i1", "|u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8",
                    "<f2", "<f4", "<f8", "<c8", "<c16"])
MAX_DEPTH = 12          # nesting of tuples/lists/dicts
MAX_NODES = 20_000      # nodes in one message
MAX_STR = 4_000         # characters of one string
MAX_INT_DIGITS = 100


class WireError(ValueError):
    """A message that does not follow this format (raised by :func:`decode`)."""


class Other:
    """A returned value that is not plain data; only its type's name came through."""

    def __init__(self, type_name):
        self.type_name = type_name

    def __repr__(self):
        return f"<a {self.type_name}>"


class Ref:
    """In a request: "the value that step ``step`` returned" (or its element ``index``)."""

    def __init__(self, step, index=None):
        self.step, self.index = step, index


# ---------------------------------------------------------------- encoding (either side)
def _type_name(obj):
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__}" if t.__module__ not in ("builtins", None) else t.__qualname__


class _Encoder:
    def __init__(self):
        self.blobs, self.size, self.nodes = [], 0, 0

    def array(self, a, scalar=False):
        # exact type checks: an ndarray subclass may override anything, so view it as a base array
        a = np.asarray(a).view(np.ndarray) if type(a) is not np.ndarray else a
        dt = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
        if dt.str not in DTYPES:
            return {"k": "other", "type": f"numpy array of dtype {a.dtype}"}
        data = np.ascontiguousarray(a, dtype=dt).tobytes()
        node = {"k": "nd", "dt": dt.str, "sh": list(a.shape), "o": self.size, "n": len(data)}
        if scalar:
            node["sc"] = True
        if type(a) is not np.ndarray:
            node["cls"] = _type_name(a)
        self.blobs.append(data)
        self.size += len(data)
        return node

    def node(self, obj, depth=0):
        self.nodes += 1
        if self.nodes > MAX_NODES or depth > MAX_DEPTH:
            return {"k": "other", "type": "value too large or too deeply nested"}
        t = type(obj)
        if obj is None:
            return {"k": "none"}
        if t is bool:
            return {"k": "bool", "v": obj}
        if t is int:
            s = str(obj) if abs(obj) < 10 ** MAX_INT_DIGITS else None
            return {"k": "int", "v": s} if s else {"k": "other", "type": "int too large"}
        if t is float:
            return {"k": "float", "v": obj.hex()}
        if t is str:
            return {"k": "str", "v": obj[:MAX_STR]}
        if t is Ref:
            return {"k": "ref", "step": obj.step, "index": obj.index}
        if isinstance(obj, np.ndarray):
            node = self.array(obj)
            if t is not np.ndarray:
                node["cls"] = _type_name(obj)
            return node
        if isinstance(obj, np.generic):
            return self.array(np.asarray(obj), scalar=True)
        if t in (tuple, list):
            return {"k": t.__name__, "items": [self.node(v, depth + 1) for v in obj]}
        if t is dict and all(type(k) is str for k in obj):
            return {"k": "dict", "items": [[k, self.node(v, depth + 1)] for k, v in obj.items()]}
        return {"k": "other", "type": _type_name(obj)}


def encode(value):
    """``value`` as one message (bytes). Never raises for odd objects: they become ``other``."""
    enc = _Encoder()
    try:
        header = enc.node(value)
    except Exception as e:   # noqa: BLE001 - a hostile __array__ or dtype; report, do not crash
        enc = _Encoder()
        header = {"k": "other", "type": f"unreadable value ({type(e).__name__})"}
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return struct.pack("<I", len(head)) + head + b"".join(enc.blobs)


# ---------------------------------------------------------------- decoding (the trusted side)
class _Decoder:
    def __init__(self, blob, refs):
        self.blob, self.refs, self.nodes = blob, refs, 0

    def value(self, node, depth=0):
        self.nodes += 1
        if self.nodes > MAX_NODES or depth > MAX_DEPTH + 1:
            raise WireError("too many or too deeply nested values")
        if type(node) is not dict or type(node.get("k")) is not str:
            raise WireError("malformed value")
        k = node["k"]
        if k == "none":
            return None
        if k == "bool":
            return _typed(node.get("v"), bool)
        if k == "int":
            v = _typed(node.get("v"), str)
            if len(v) > MAX_INT_DIGITS + 1 or not v.lstrip("-").isdigit():
                raise WireError("malformed int")
            return int(v)
        if k == "float":
            try:
                return float.fromhex(_typed(node.get("v"), str))
            except (ValueError, OverflowError):
                raise WireError("malformed float") from None
        if k == "str":
            return _typed(node.get("v"), str)[:MAX_STR]
        if k in ("tuple", "list"):
            items = [self.value(n, depth + 1) for n in _typed(node.get("items"), list)]
            return tuple(items) if k == "tuple" else items
        if k == "dict":
            out = {}
            for pair in _typed(node.get("items"), list):
                if type(pair) is not list or len(pair) != 2:
                    raise WireError("malformed dict")
                out[_typed(pair[0], str)] = self.value(pair[1], depth + 1)
            return out
        if k == "other":
            return Other(_typed(node.get("type"), str)[:200])
        if k == "nd":
            return self.array(node)
        if k == "ref" and self.refs is not None:
            return self.refs(_typed(node.get("step"), int), node.get("index"))
        raise WireError(f"unknown value kind {k[:20]!r}")

    def array(self, node):
        dt, shape = _typed(node.get("dt"), str), _typed(node.get("sh"), list)
        off, n = _typed(node.get("o"), int), _typed(node.get("n"), int)
        if dt not in DTYPES:
            raise WireError(f"dtype {dt[:20]!r} is not allowed")
        if len(shape) > 32 or not all(type(s) is int and s >= 0 for s in shape):
            raise WireError("malformed shape")
        dtype = np.dtype(dt)
        count = 1
        for s in shape:
            count *= s
        if count * dtype.itemsize != n or off < 0 or off + n > len(self.blob):
            raise WireError("array bytes do not match its shape")
        a = np.frombuffer(self.blob, dtype=dtype, count=count, offset=off).reshape(shape).copy()
        if node.get("sc") is True and a.shape == ():
            return a[()]
        return a


def _typed(v, t):
    if type(v) is not t:
        raise WireError("malformed value")
    return v


def decode(message, refs=None, max_bytes=1 << 30):
    """The value in ``message`` (bytes from :func:`encode`); raises :class:`WireError`.

    ``refs(step, index)`` resolves ``ref`` nodes (the worker's side); without it they are
    an error. Arrays come back as fresh, writable NumPy arrays.
    """
    if type(message) is not bytes or len(message) < 4 or len(message) > max_bytes:
        raise WireError("malformed message")
    (hlen,) = struct.unpack_from("<I", message)
    if 4 + hlen > len(message):
        raise WireError("malformed message")
    try:
        header = json.loads(message[4:4 + hlen].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise WireError("malformed header") from None
    return _Decoder(message[4 + hlen:], refs).value(header)


# ---------------------------------------------------------------- framing on a pipe
def pack(message):
    """``message`` framed for a pipe: its length (u64, little-endian), then its bytes."""
    return struct.pack("<Q", len(message)) + message


def unpack(read_exact, max_bytes):
    """Read one framed message with ``read_exact(n) -> bytes``; None at a clean end of stream."""
    head = read_exact(8)
    if not head:
        return None
    if len(head) != 8:
        raise WireError("truncated frame")
    (n,) = struct.unpack("<Q", head)
    if n > max_bytes:
        raise WireError(f"message of {n} bytes is over the limit of {max_bytes}")
    body = read_exact(n)
    if len(body) != n:
        raise WireError("truncated frame")
    return body
