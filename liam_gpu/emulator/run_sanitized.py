"""Child process that runs a sanitizer-instrumented emulator module.

A module built with ``-fsanitize=address`` or ``-fsanitize=thread`` needs its
sanitizer runtime loaded first in the process, which cannot be arranged for a
running Python (and a sanitizer abort would take the test process with it).
So :class:`liam_gpu.emulator.EmulatorKernel` starts this script as
``python -S -E run_sanitized.py MODE REQUEST.json`` with ``LD_PRELOAD`` set to
the runtime.  It uses only the standard library (no numpy, no package import),
so the child starts fast and the sanitizer watches little besides the kernel.

Modes
-----
describe
    Write the signature string of each entry point (``{"count": n}``).
launch
    Copy each memory region from the data file into a fresh ``malloc``
    buffer (the address sanitizer knows its bounds), run the launch entry,
    write the regions back into the data file, and write the result JSON:
    ``{"status": "ok" | "fault" | "error", "message": ..., "out": [6 ints]}``.

A sanitizer report aborts the process before the result is written; the parent
reads the report from stderr.
"""
from __future__ import annotations

import ctypes
import json
import sys


def _write(path: str, obj: dict) -> None:
    with open(path, "w") as f:
        json.dump(obj, f)


def _describe(lib: ctypes.CDLL, req: dict) -> dict:
    sigs = []
    for i in range(int(req["count"])):
        fn = getattr(lib, f"liam_emu_signature_{i}")
        fn.restype = ctypes.c_char_p
        fn.argtypes = []
        sigs.append(fn().decode())
    return {"status": "ok", "signatures": sigs}


def _launch(lib: ctypes.CDLL, req: dict) -> dict:
    with open(req["data"], "rb") as f:
        data = bytearray(f.read())
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    blocks, ptrs = [], []
    for r in req["regions"]:
        # Keep the array's address modulo 16, so vector loads stay aligned or not as before.
        raw = libc.malloc(max(r["size"] + r["pad"], 1))
        if not raw:
            return {"status": "error", "message": f"malloc({r['size']}) failed"}
        blocks.append(raw)
        ptr = raw + r["pad"]
        ctypes.memmove(ptr, (ctypes.c_char * r["size"]).from_buffer(data, r["offset"]), r["size"])
        ptrs.append(ptr)

    blobs = []
    for a in req["args"]:
        if a[0] == "ptr":
            blobs.append((ptrs[a[1]] + a[2]).to_bytes(8, sys.byteorder))
        else:
            blobs.append(bytes.fromhex(a[1]))
    sizes = [(len(b) + 15) // 16 * 16 for b in blobs]
    buf = ctypes.create_string_buffer(sum(sizes) + 16)
    off = (-ctypes.addressof(buf)) % 16
    argv = (ctypes.c_void_p * max(len(blobs), 1))()
    for i, (blob, size) in enumerate(zip(blobs, sizes)):
        ctypes.memmove(ctypes.addressof(buf) + off, blob, len(blob))
        argv[i] = ctypes.addressof(buf) + off
        off += size

    fn = getattr(lib, f"liam_emu_launch_{int(req['index'])}")
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.POINTER(ctypes.c_longlong), ctypes.POINTER(ctypes.c_void_p),
                   ctypes.POINTER(ctypes.c_longlong), ctypes.c_char_p, ctypes.c_ulong]
    cfg = (ctypes.c_longlong * 8)(*req["cfg"])
    out = (ctypes.c_longlong * 6)()
    err = ctypes.create_string_buffer(8192)
    rc = fn(cfg, argv, out, err, len(err))

    for r, ptr in zip(req["regions"], ptrs):
        data[r["offset"]: r["offset"] + r["size"]] = ctypes.string_at(ptr, r["size"])
    for raw in blocks:
        libc.free(raw)
    with open(req["data"], "r+b") as f:
        f.write(data)
    message = err.value.decode(errors="replace")
    status = {0: "ok", 1: "fault"}.get(rc, "error")
    return {"status": status, "message": message, "out": list(out)}


def main(argv: list[str]) -> int:
    mode, req_path = argv[1], argv[2]
    with open(req_path) as f:
        req = json.load(f)
    try:
        lib = ctypes.CDLL(req["library"], mode=ctypes.RTLD_LOCAL)
    except OSError as exc:
        _write(req["result"], {"status": "error", "message": f"could not load {req['library']}: {exc}"})
        return 0
    result = _describe(lib, req) if mode == "describe" else _launch(lib, req)
    sys.stdout.flush()
    _write(req["result"], result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
