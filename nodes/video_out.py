"""A video file of output/, named by a node's filename_prefix.

The file is created (empty) before any sampling or decoding, so a folder that cannot be written, a
name that is too long or a prefix through an existing file is an error at once, naming
filename_prefix and the path, not a bare "[Errno 30]" after minutes of work. A fragmented mp4 that
hits a full disk is cut back to its last whole fragment (`keep_whole_fragments`): what stays on disk
always plays.
"""
from __future__ import annotations

import errno
import os
import struct
import weakref
from dataclasses import dataclass

import folder_paths

from .common import check_filename_prefix
from .live_player import CODEC, CRF
from .spec import FPS, InputError



def output_video(prefix: str, ext: str, width: int, height: int) -> tuple[str, str, str]:
    """(path, file name, subfolder) of the next `<prefix>_NNNNN_.<ext>` in output/ (folders made)."""
    check_filename_prefix(prefix)
    root = folder_paths.get_output_directory()
    try:
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, root, width, height)
    except OSError as e:        # the folder cannot be listed or made: name the first file it would have held
        raise write_error(prefix, os.path.join(root, f"{os.path.normpath(prefix)}_00001_.{ext}"), e) from None
    file = f"{name}_{counter:05}_.{ext}"
    path, longest = os.path.join(folder, file), len(os.fsencode(temporary_name(file)))
    if longest > (limit := _name_max(folder)):
        raise InputError("filename_prefix", f"cannot write '{path}': the name is too long ({len(file)} characters, "
                                            f"{longest} bytes with the temporary name it is written under; file "
                                            f"systems allow {limit}): use a shorter prefix")
    return path, file, subfolder


def temporary_name(file: str) -> str:
    """What a file is called while it is written (Save Video renames it when whole)."""
    return f".{file}.partial"


def _name_max(folder: str) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def create(prefix: str, path: str, for_path: str | None = None) -> None:
    """Create (or empty) `path`, the temporary of `for_path` if given; errors name filename_prefix
    and the file the user asked for."""
    try:
        with open(path, "wb"):
            pass
    except OSError as e:
        raise write_error(prefix, for_path or path, e) from None


def write_error(prefix: str, path: str, err: OSError, then: str = "") -> InputError:
    """One line naming filename_prefix, the path and what to do (`then`: what became of the file)."""
    code = err.errno
    if code == errno.ENOSPC:
        why = "the disk is full: free some space"
    elif code == errno.ENAMETOOLONG:
        longest = max(os.path.basename(path), *path.split(os.sep), key=len)
        why = f"a name in it is too long ({len(longest)} characters; file systems allow 255): use a shorter prefix"
    elif code in (errno.ENOTDIR, errno.EEXIST):
        why = f"'{_file_on_the_way(path)}' is a file, not a folder: use another prefix"
    elif code in (errno.EROFS, errno.EACCES, errno.EPERM):
        why = f"{err.strerror}: pick a folder of output/ that can be written, or make this one writable"
    else:
        why = err.strerror or str(err)
    return InputError("filename_prefix", f"cannot write '{path}': {why}" + (f". {then}" if then else ""))


def _file_on_the_way(path: str) -> str:
    """The deepest part of `path` that exists: where a folder was expected, a file."""
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


# ----------------------------------------------------------------------------- fragmented mp4

def _boxes(f, start: int, end: int):
    """(offset, size, type) of the boxes in [start, end); a box that runs past `end` is cut off."""
    off = start
    while off + 8 <= end:
        f.seek(off)
        size, kind = struct.unpack(">I4s", f.read(8))
        head = 8
        if size == 1:
            if off + 16 > end:
                return
            size, head = struct.unpack(">Q", f.read(8))[0], 16
        elif size == 0:
            size = end - off
        if size < head:
            return
        yield off, size, kind
        off += size


def _samples(f, off: int, size: int) -> int:
    """Frames of one moof: the sample counts of its track runs (moof > traf > trun)."""
    n = 0
    for t_off, t_size, kind in _boxes(f, off + 8, off + size):
        if kind == b"traf":
            for r_off, _, r_kind in _boxes(f, t_off + 8, t_off + t_size):
                if r_kind == b"trun":
                    f.seek(r_off + 12)              # box header, version + flags
                    n += struct.unpack(">I", f.read(4))[0]
    return n


def keep_whole_fragments(path: str) -> int:
    """Cut a fragmented mp4 (ftyp, moov, then moof + mdat pairs) back to its last whole fragment, or
    delete it when none is whole. Returns the frames kept."""
    if not os.path.isfile(path):
        return 0
    end = os.path.getsize(path)
    keep, frames, pending, header = 0, 0, None, set()
    with open(path, "rb") as f:
        for off, size, kind in _boxes(f, 0, end):
            if off + size > end:
                break                               # cut off by the full disk
            if kind in (b"ftyp", b"moov") and not frames and pending is None:
                header.add(kind)
            elif kind == b"moof":
                pending = _samples(f, off, size)
            elif kind == b"mdat" and pending is not None:
                frames, keep, pending = frames + pending, off + size, None
            else:
                break                               # mfra and the like: written last, not needed to play
    if not frames or header != {b"ftyp", b"moov"}:
        os.remove(path)
        return 0
    if keep < end:
        os.truncate(path, keep)
    return frames


def kept_words(frames: int) -> str:
    return f"{frames} frames ({frames / FPS:.2f} s)"


# ----------------------------------------------------------------------------- reuse by Save Video

@dataclass(frozen=True)
class FinishedVideo:
    path: str
    file: str
    subfolder: str
    prefix: str
    vae: weakref.ref
    stat: tuple[int, int]           # (size, mtime_ns) when finished: a file changed since is not reused


_FINISHED: dict[int, tuple[weakref.ref, FinishedVideo]] = {}     # id(LATENT samples) -> (the tensor, its video)


def remember_video(samples, live, vae) -> None:
    """`samples` (the sampler's LATENT output) is the video `live` (streaming.LiveVideo) finished writing."""
    st = os.stat(live.path)
    key = id(samples)
    _FINISHED[key] = (weakref.ref(samples, lambda _: _FINISHED.pop(key, None)),
                      FinishedVideo(live.path, live.file, live.subfolder, live.prefix, weakref.ref(vae),
                                    (st.st_size, st.st_mtime_ns)))


def finished_video(samples, vae, fps: float, codec: str, crf: int) -> FinishedVideo | None:
    """The stream a sampler wrote of exactly these `samples`, when it is what Save Video with these
    settings would write (same VAE, 16 fps, h264, crf 19) and the file is unchanged."""
    entry = _FINISHED.get(id(samples))
    if entry is None or entry[0]() is not samples:
        return None
    video = entry[1]
    if video.vae() is not vae or (fps, codec, crf) != (FPS, CODEC, CRF):
        return None
    try:
        st = os.stat(video.path)
    except OSError:
        return None
    return video if (st.st_size, st.st_mtime_ns) == video.stat else None
