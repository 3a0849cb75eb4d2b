"""Loaded by every Python process of a rehearsal task (PYTHONPATH): files under the Unity
Catalog Volumes root behave as on a Databricks cluster, so code that would fail there fails here.

* A Volume exists only once the workspace created it: ``mkdir`` of ``<root>/<catalog>``,
  ``<root>/<catalog>/<schema>`` or ``<root>/<catalog>/<schema>/<volume>`` is refused, except
  from the workspace stand-in's ``_create_volume`` (lookalike.workspace).
* Volumes take whole-file writes only (Databricks: "Work with files in Unity Catalog volumes"):
  opening a file there for appending or for reading and writing is refused, and so is a sqlite
  database there.
Native code (TensorFlow, faiss, the JVM) opens files without Python's audit events: those
writes are not checked.
"""

import errno
import os
import sys

_ROOT = os.environ.get("LOOKALIKE_VOLUMES_ROOT")


def _depth(path):
    """Components of ``path`` below the Volumes root, or None outside it."""
    try:
        text = os.fsdecode(path)
    except TypeError:
        return None
    if not text.startswith(_ROOT):
        return None
    rel = os.path.relpath(os.path.realpath(text), _ROOT)
    if rel == "." or rel.startswith(".."):
        return None if rel.startswith("..") else 0
    return len(rel.split(os.sep))


def _from_standin():
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name == "_create_volume":
            return True
        frame = frame.f_back
    return False


def _hook(event, args):
    if event == "open":
        path, mode, flags = args
        if path is None or isinstance(path, int) or _depth(path) is None:
            return
        writes = (("a" in mode or "+" in mode) if isinstance(mode, str)
                  else bool(flags & (os.O_APPEND | os.O_RDWR)))
        if writes:
            raise OSError(errno.EOPNOTSUPP, "Unity Catalog Volumes support no appends or random "
                          "writes (rehearsal)", os.fsdecode(path))
        if (isinstance(mode, str) and "w" in mode) or (flags & (os.O_WRONLY | os.O_CREAT)):
            parent = os.path.dirname(os.fsdecode(path))
            if (_depth(parent) or 0) < 3 or not os.path.isdir(parent):
                raise FileNotFoundError(errno.ENOENT, "no such Volume or folder", parent)
    elif event == "os.mkdir":
        depth = _depth(args[0])
        if depth is not None and depth <= 3 and not _from_standin():
            raise PermissionError(errno.EACCES, "a Unity Catalog Volume (or its catalog and "
                                  "schema) is created through the workspace, not by mkdir "
                                  "(rehearsal)", os.fsdecode(args[0]))
    elif event == "sqlite3.connect":
        if _depth(args[0]) is not None:
            raise OSError(errno.EOPNOTSUPP, "sqlite needs random writes: not on a Volume "
                          "(rehearsal)", os.fsdecode(args[0]))


if _ROOT:
    _ROOT = os.path.realpath(_ROOT)
    sys.addaudithook(_hook)
