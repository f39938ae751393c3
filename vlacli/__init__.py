"""`vla`: the command-line face. Parses options, calls `stages`, prints; holds no maths."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vla")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
