"""What ice-tf wrote, and removing that alone: a user's file is never removed or overwritten.

Two kinds of folder are ice-tf's own:
- a run folder, marked by `ice_tf.experiment.run_folder.RUN_MARKER` written before anything else;
- an exported SavedModel, marked by `EXPORT_MARKER`, which lists every file the export
  wrote.

Removal goes by name and pattern (`remove_owned`): a file that matches none of the
names ice-tf writes is kept, and the caller is told which. An export is replaced only
when it is an ice-tf export holding nothing but the files it lists (`check_replaceable_export`).

Example:
  kept = remove_owned("runs/x/checkpoints", ("epoch-*.weights.h5", "last.json"))
  kept  # ['mine.txt']: the user's file stays
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import shutil
import time

EXPORT_MARKER = "ice-tf-export.json"
MARKER_WRITER = "ice-tf"


class NotOwnedError(RuntimeError):
    """A folder or file is not ice-tf's to write or remove; the message names it and the fix.

    Example:
      try:
          check_replaceable_export("exported")
      except NotOwnedError as error:
          print(error)  # exported is not an ice-tf export ...
    """


def marker_record(**fields):
    """The JSON record of a marker file: who wrote it, when, and `fields`.

    Example:
      marker_record(kind="run")  # {'written_by': 'ice-tf', 'kind': 'run', 'created': ...}
    """
    return {"written_by": MARKER_WRITER, **fields,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def read_marker(path):
    """The record of a marker file, or None when it is missing, unreadable or not ice-tf's.

    Example:
      read_marker("runs/x/ice-tf-run.json")  # {'written_by': 'ice-tf', ...}
    """
    try:
        with open(path) as stream:
            record = json.load(stream)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("written_by") == MARKER_WRITER else None


def files_below(folder):
    """Every file below `folder`, as sorted paths relative to it ('/'-separated).

    Example:
      files_below("exported")  # ['fingerprint.pb', 'saved_model.pb', 'variables/...']
    """
    found = []
    for root, _, names in os.walk(folder):
        for name in names:
            relative = os.path.relpath(os.path.join(root, name), folder)
            found.append(relative.replace(os.sep, "/"))
    return sorted(found)


def _matches(relative, patterns):
    return any(fnmatch.fnmatchcase(relative, pattern) for pattern in patterns)


def remove_owned(folder, patterns):
    """Removes the files below `folder` whose relative path matches one of `patterns`,
    then the folders left empty (`folder` too); returns the files kept, which matched
    none (relative paths).

    Example:
      remove_owned("runs/x/tensorboard", ("*/events.out.tfevents.*",))  # [] when all were ice-tf's
    """
    if not os.path.isdir(folder):
        return []
    kept = []
    for relative in files_below(folder):
        if _matches(relative, patterns):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, relative))
        else:
            kept.append(relative)
    for root, _, _ in sorted(os.walk(folder), key=lambda entry: -len(entry[0])):
        with contextlib.suppress(OSError):
            os.rmdir(root)  # only succeeds when empty
    return kept


# ------------------------------------------------------------------ reports
def check_replaceable(path, written_by_ice_tf, what):
    """Raises `NotOwnedError` when `path` exists and `written_by_ice_tf(text)` does not
    recognise its text as a report ice-tf writes (`what`): a command replaces its own
    report, never a file of the same name that is the user's.

    Example:
      check_replaceable("runs/demo/comparison.md", lambda text: text.startswith("In-distribution:"),
                        "ice-tf compare's table")
    """
    if not os.path.exists(path):
        return
    try:
        with open(path, errors="replace") as stream:
            text = stream.read(1 << 16)
    except OSError:
        text = None
    if text is None or not written_by_ice_tf(text):
        raise NotOwnedError(f"{path} exists and is not {what}; move it away or write elsewhere "
                            "(the output folder or --output).")


def json_with_keys(keys):
    """A recogniser for `check_replaceable`: JSON text of an object holding every one of `keys`.

    Example:
      json_with_keys({"runs", "aggregated"})('{"runs": {}, "aggregated": {}}')  # True
    """
    def recognise(text):
        try:
            record = json.loads(text)
        except ValueError:
            return False
        return isinstance(record, dict) and set(keys) <= set(record)

    return recognise


# ------------------------------------------------------------------ exports
def write_export_marker(folder, **fields):
    """Writes `EXPORT_MARKER` into a finished export folder, listing every file in it.

    Example:
      write_export_marker(staging, score="ice")
    """
    record = marker_record(kind="saved_model", files=files_below(folder), **fields)
    with open(os.path.join(folder, EXPORT_MARKER), "w") as stream:
        stream.write(json.dumps(record, indent=2) + "\n")


def foreign_files_of_export(folder):
    """The files in `folder` that an ice-tf export did not write ([] for a clean ice-tf
    export), or None when `folder` is not an ice-tf export at all.

    Example:
      foreign_files_of_export("runs/x/saved_model")  # []
    """
    record = read_marker(os.path.join(folder, EXPORT_MARKER))
    if record is None or record.get("kind") != "saved_model":
        return None
    listed = set(record.get("files", ())) | {EXPORT_MARKER}
    return [name for name in files_below(folder) if name not in listed]


def check_replaceable_export(path):
    """Raises `NotOwnedError` unless `path` is an earlier ice-tf export holding only the
    files it wrote (what `export --overwrite` may replace).

    Example:
      check_replaceable_export("exported/ice")  # passes for an earlier ice-tf export
    """
    if not os.path.isdir(path):
        raise NotOwnedError(f"{path} exists and is not a folder; give --output a new path.")
    foreign = foreign_files_of_export(path)
    if foreign is None:
        raise NotOwnedError(
            f"{path} is not an ice-tf export (no {EXPORT_MARKER}); --overwrite replaces only an "
            "earlier export: give --output a new path, or move that folder away yourself.")
    if foreign:
        raise NotOwnedError(
            f"{path} holds files the export did not write ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}); move them out, or give --output a new path.")


def remove_export(path):
    """Removes an ice-tf export (after `check_replaceable_export` allows it).

    Example:
      remove_export("exported/ice")
    """
    check_replaceable_export(path)
    shutil.rmtree(path)


__all__ = ["EXPORT_MARKER", "NotOwnedError", "check_replaceable", "json_with_keys", "marker_record", "read_marker", "files_below",
           "remove_owned", "write_export_marker", "foreign_files_of_export",
           "check_replaceable_export", "remove_export"]
