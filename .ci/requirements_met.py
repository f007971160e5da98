"""Exit 0 iff every requirement in the file (argv[1]) is installed in this Python at a matching
version: the set-up scripts' fast path, no network. Uses pip's vendored `packaging`, which every
venv has even before anything else is installed."""
import importlib.metadata as md
import sys

from pip._vendor.packaging.requirements import Requirement

for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    r = Requirement(line)
    try:
        version = md.version(r.name)
    except md.PackageNotFoundError:
        sys.exit(f"{r.name} is not installed")
    if r.specifier and not r.specifier.contains(version, prereleases=True):
        sys.exit(f"{r.name} {version} does not satisfy {line}")
