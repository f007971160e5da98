"""Input paths checked in one place, and a command's outputs written as a set: all of them or none.

An input that is missing, a folder given for a file (or a file for a folder) or unreadable is one
line that names it (`what`: an option such as "--vae", or words such as "prompt embeddings file").

Each file goes to a temporary beside it; only when every temporary is whole are they renamed into
place. A read-only folder, a full disk or a path through a file then leaves what was there before
(no JSON without its PNG) and ends in one line that names the option and the path.
"""
from __future__ import annotations

import os


class InputPathError(FileNotFoundError, ValueError):
    """An input path that is missing, of the wrong kind or unreadable (a FileNotFoundError and a
    ValueError, so callers catching either keep working)."""


def input_file(what: str, path) -> str:
    """`path` as a string if it is a readable file; else InputPathError: '<what>: 'x' is a folder; give a
    file' when `what` is an option (starts with -), '<what> 'x' ...' otherwise."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputPathError(_named(what, path, "does not exist"))
    if os.path.isdir(path):
        raise InputPathError(_named(what, path, "is a folder; give a file"))
    if not os.access(path, os.R_OK):
        raise InputPathError(_named(what, path, "is not readable"))
    return path


def input_folder(what: str, path) -> str:
    """`path` as a string if it is a folder (the counterpart of input_file)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputPathError(_named(what, path, "does not exist"))
    if not os.path.isdir(path):
        raise InputPathError(_named(what, path, "is a file; give a folder"))
    return path


def _named(what: str, path: str, problem: str) -> str:
    return f"{what}: '{path}' {problem}" if what.startswith("-") else f"{what} '{path}' {problem}"


class OutputError(ValueError):
    """An output could not be written; the message names the option and the path."""

    def __init__(self, option: str, path: str, err: OSError | str):
        why = err if isinstance(err, str) else (err.strerror or str(err))
        super().__init__(f"{option}: cannot write '{path}': {why}")


def check_output_folder(option: str, path: str) -> None:
    """`path` is, or can be created as, a writable folder."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(option, path, "it is a file; give a folder (it is created if missing)")
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise OutputError(option, path, f"'{parent}' is a file, not a folder")
    if not _writable(parent):
        raise OutputError(option, path, f"the folder '{parent}' is not writable")


def check_output_file(option: str, path: str) -> None:
    """`path` names a file (not a folder) inside an existing writable folder."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise OutputError(option, path, "it is a folder; give a file name")
    if not os.path.isdir(folder):
        raise OutputError(option, path, f"the folder '{folder}' does not exist; create it first")
    if not _writable(folder):
        raise OutputError(option, path, f"the folder '{folder}' is not writable")


def _writable(folder: str) -> bool:
    """os.access alone says yes to root on a read-only mount: ask the file system."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    try:
        return not os.statvfs(folder).f_flag & os.ST_RDONLY
    except OSError:
        return True


def write_files(files: dict[str, bytes], option: str) -> list[str]:
    """Write {path: content} all-or-nothing; returns the paths. Folders are created as needed."""
    done: list[tuple[str, str]] = []
    path = next(iter(files), "")
    try:
        for path, data in files.items():
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            tmp = f"{path}.tmp-{os.getpid()}"
            done.append((tmp, path))
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())      # a full disk shows here, not after the rename
        for tmp, path in done:
            os.replace(tmp, path)
    except OSError as e:
        for tmp, _ in done:
            if os.path.exists(tmp):
                os.remove(tmp)
        raise OutputError(option, path, e) from None
    return list(files)


def write_file(path: str, data: bytes, option: str) -> str:
    return write_files({path: data}, option)[0]
