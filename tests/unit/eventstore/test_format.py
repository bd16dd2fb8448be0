"""The byte format of FORMAT.md, decoded from its own hexdump."""

from __future__ import annotations

import re
from pathlib import Path

from eventstore.reader import decode_frame
from eventstore.segment import encode_frame_header, encode_segment_header, scan_frames

FORMAT_MD = Path(__file__).resolve().parents[3] / "eventstore" / "FORMAT.md"


def hexdump_bytes() -> bytes:
    text = FORMAT_MD.read_text()
    block = text.split("## Example", 1)[1].split("```", 2)[1]
    out = bytearray()
    for line in block.strip().splitlines():
        parts = line.split()
        out += bytes(int(h, 16) for h in parts[1:17])
    return bytes(out)


def test_format_md_hexdump_decodes_to_one_cancel():
    data = hexdump_bytes()
    frames = list(scan_frames(data, "FORMAT.md", is_last=True))
    assert len(frames) == 1 and frames[0].first_seq == 1 and frames[0].count == 1
    assert decode_frame(frames[0], "FORMAT.md") == ((3, 5, "X", 7, None, None),)


def test_encoder_reproduces_format_md_bytes():
    import msgpack
    payload = msgpack.packb([(3, 5, "X", 7, None, None)])
    assert encode_segment_header(1) + encode_frame_header(payload, 1, 1) + payload == hexdump_bytes()


def test_segment_header_carries_magic_and_version():
    head = encode_segment_header(42)
    assert head[:8] == b"EVWAL\x00\r\n"
    assert int.from_bytes(head[8:10], "little") == 3
    assert int.from_bytes(head[16:24], "little") == 42
