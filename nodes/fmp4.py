"""A fragmented MP4 (ISO BMFF) writer for one H.264 video track, in plain Python.

Why not PyAV's mp4 muxer: it closes a fragment only when the next packet arrives (PyAV cannot ask it to
flush), so the newest chunk would wait for the one after it. Here a fragment is cut exactly when the
caller says (after every chunk the sampler commits), so it can be played at once.

Layout: an init segment (`ftyp` + `moov` with an empty sample table and `mvex`), then one media
segment per fragment (`moof` with `tfdt` + `trun`, and `mdat`); at the end of a file an `mfra` index
of the fragments, so players seek in the finished file. The same bytes serve Media Source Extensions
(init segment, then fragments in any order of whole fragments) and make a playable .mp4 when written
one after another. H.264 comes from the encoder as Annex B (start codes); MP4 wants 4-byte lengths and
an `avcC` record of the SPS / PPS, built here.
"""
from __future__ import annotations

import struct

KEY_FLAGS = 0x02000000          # sample_depends_on = 2: a sync sample
DELTA_FLAGS = 0x01010000        # depends on others, is_non_sync_sample
UNITY_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


def box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I", 8 + len(body)) + kind + body


def full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return box(kind, struct.pack(">I", (version << 24) | flags), *payload)


def nal_units(data: bytes) -> list[bytes]:
    """NAL units of an Annex B byte stream (00 00 01 or 00 00 00 01 start codes)."""
    units, i, n = [], 0, len(data)
    starts = []
    while True:
        j = data.find(b"\x00\x00\x01", i)
        if j < 0:
            break
        starts.append(j + 3)
        i = j + 3
    for k, s in enumerate(starts):
        end = starts[k + 1] - 3 if k + 1 < len(starts) else n
        unit = data[s:end]
        if k + 1 < len(starts) and unit.endswith(b"\x00"):      # the 4-byte start code's leading zero
            unit = unit.rstrip(b"\x00")
        if unit:
            units.append(unit)
    return units


def is_annex_b(data: bytes) -> bool:
    return data.startswith(b"\x00\x00\x01") or data.startswith(b"\x00\x00\x00\x01")


def to_length_prefixed(packet: bytes) -> bytes:
    """One access unit as MP4 sample data (4-byte big-endian NAL lengths)."""
    if not is_annex_b(packet):
        return packet                   # already length-prefixed
    return b"".join(struct.pack(">I", len(u)) + u for u in nal_units(packet))


def parameter_sets(extradata: bytes) -> tuple[list[bytes], list[bytes]]:
    """(SPS list, PPS list) of the encoder's global header (Annex B)."""
    units = nal_units(extradata)
    return [u for u in units if u[0] & 0x1F == 7], [u for u in units if u[0] & 0x1F == 8]


def avcc(sps: list[bytes], pps: list[bytes]) -> bytes:
    """AVCDecoderConfigurationRecord; 4:2:0 8-bit fields for the High profiles."""
    if not sps or not pps:
        raise ValueError("the H.264 header has no SPS or PPS")
    profile, compat, level = sps[0][1], sps[0][2], sps[0][3]
    out = bytes([1, profile, compat, level, 0xFF, 0xE0 | len(sps)])
    out += b"".join(struct.pack(">H", len(s)) + s for s in sps)
    out += bytes([len(pps)]) + b"".join(struct.pack(">H", len(p)) + p for p in pps)
    if profile in (100, 110, 122, 144):
        out += bytes([0xFC | 1, 0xF8, 0xF8, 0])      # chroma 4:2:0, 8-bit luma and chroma, no SPS ext
    return out


def codec_string(sps: bytes) -> str:
    """The RFC 6381 codecs parameter, e.g. avc1.64001e (profile, constraint flags, level)."""
    return f"avc1.{sps[1]:02x}{sps[2]:02x}{sps[3]:02x}"


class Fmp4Writer:
    """Turns encoded H.264 access units into an init segment and media segments (bytes)."""

    def __init__(self, width: int, height: int, fps: int, extradata: bytes, timescale: int | None = None):
        self.width, self.height = width, height
        self.timescale = timescale or fps * 1000
        self.frame_ticks = self.timescale // fps
        sps, pps = parameter_sets(extradata)
        self.avcc = avcc(sps, pps)
        self.codec = codec_string(sps[0])
        self.sequence = 0
        self.decode_time = 0                # ticks of the frames written so far

    @property
    def mime(self) -> str:
        return f'video/mp4; codecs="{self.codec}"'

    def init_segment(self) -> bytes:
        ftyp = box(b"ftyp", b"isom", struct.pack(">I", 0x200), b"isomiso5iso6avc1mp41")
        mvhd = full_box(b"mvhd", 0, 0, struct.pack(">IIII", 0, 0, self.timescale, 0),
                        struct.pack(">IH", 0x10000, 0x100), bytes(10), UNITY_MATRIX, bytes(24),
                        struct.pack(">I", 2))
        tkhd = full_box(b"tkhd", 0, 3, struct.pack(">IIIII", 0, 0, 1, 0, 0), bytes(8),
                        struct.pack(">hhhH", 0, 0, 0, 0), UNITY_MATRIX,
                        struct.pack(">II", self.width << 16, self.height << 16))
        mdhd = full_box(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, self.timescale, 0, 0x55C4, 0))   # 'und'
        hdlr = full_box(b"hdlr", 0, 0, struct.pack(">I", 0), b"vide", bytes(12), b"VideoHandler\x00")
        vmhd = full_box(b"vmhd", 0, 1, bytes(8))
        dinf = box(b"dinf", full_box(b"dref", 0, 0, struct.pack(">I", 1), full_box(b"url ", 0, 1)))
        avc1 = box(b"avc1", bytes(6), struct.pack(">H", 1), bytes(16),
                   struct.pack(">HHIIIH", self.width, self.height, 0x480000, 0x480000, 0, 1),
                   bytes(32), struct.pack(">Hh", 0x18, -1), box(b"avcC", self.avcc))
        stbl = box(b"stbl", full_box(b"stsd", 0, 0, struct.pack(">I", 1), avc1),
                   full_box(b"stts", 0, 0, bytes(4)), full_box(b"stsc", 0, 0, bytes(4)),
                   full_box(b"stsz", 0, 0, bytes(8)), full_box(b"stco", 0, 0, bytes(4)))
        trak = box(b"trak", tkhd, box(b"mdia", mdhd, hdlr, box(b"minf", vmhd, dinf, stbl)))
        mvex = box(b"mvex", full_box(b"trex", 0, 0, struct.pack(">IIIII", 1, 1, 0, 0, 0)))
        return ftyp + box(b"moov", mvhd, trak, mvex)

    def media_segment(self, packets: list[tuple[bytes, bool]]) -> tuple[bytes, int]:
        """A moof + mdat of these access units [(Annex B data, keyframe)], in decode order, each one
        frame long (no B-frames: the live encoder has none). Returns (bytes, decode time of the first
        frame in timescale ticks)."""
        if not packets:
            raise ValueError("a fragment needs at least one frame")
        samples = [to_length_prefixed(data) for data, _ in packets]
        self.sequence += 1
        start = self.decode_time
        entries = b"".join(struct.pack(">III", self.frame_ticks, len(s), KEY_FLAGS if key else DELTA_FLAGS)
                           for s, (_, key) in zip(samples, packets))
        trun_flags = 0x000001 | 0x000100 | 0x000200 | 0x000400     # data offset, duration, size, flags

        def moof(data_offset: int) -> bytes:
            trun = full_box(b"trun", 0, trun_flags, struct.pack(">Ii", len(samples), data_offset), entries)
            traf = box(b"traf", full_box(b"tfhd", 0, 0x020000, struct.pack(">I", 1)),      # default-base-is-moof
                       full_box(b"tfdt", 1, 0, struct.pack(">Q", start)), trun)
            return box(b"moof", full_box(b"mfhd", 0, 0, struct.pack(">I", self.sequence)), traf)

        size = len(moof(0))
        payload = b"".join(samples)
        self.decode_time += self.frame_ticks * len(samples)
        return moof(size + 8) + box(b"mdat", payload), start

    def mfra(self, fragments: list[tuple[int, int]]) -> bytes:
        """Index of a file's fragments [(decode time, byte offset of its moof)], written at its end."""
        entries = b"".join(struct.pack(">QQBBB", t, offset, 1, 1, 1) for t, offset in fragments)
        tfra = full_box(b"tfra", 1, 0, struct.pack(">III", 1, 0, len(fragments)), entries)
        size = 8 + len(tfra) + 16
        return box(b"mfra", tfra, full_box(b"mfro", 0, 0, struct.pack(">I", size)))
