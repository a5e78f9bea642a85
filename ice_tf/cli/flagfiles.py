"""Flag files that run from any directory.

absl reads `--flagfile=PATH` relative to the current directory, so a flag file that
includes another (`--flagfile=common.flags`) only worked from one place. `expand`
reads flag files itself, before absl parses anything:

- a nested `--flagfile=` is resolved relative to the file that includes it;
- a name not found there (or, on the command line, in the current directory) is looked
  up on the flag search path: the folders in `$ICE_TF_FLAGS_PATH` (separated by
  `os.pathsep`), then the flag files shipped with ice-tf (`flag_dir()`);
- `.flags` may be left out, and a leading `flags/` names the shipped folder, so
  `--flagfile=demo`, `--flagfile=flags/demo.flags` and `--flagfile=method/ice.flags`
  work from a wheel in any directory.

Syntax is absl's: one flag per line, `#` or `//` comments, blank lines ignored.

Example:
  expand(["train", "--flagfile=demo", "--loss=ice"])
  # ['train', '--momentum=0.9', ..., '--output_dir=runs/demo', '--loss=ice']
"""

from __future__ import annotations

import os
from pathlib import Path

SEARCH_PATH_ENV = "ICE_TF_FLAGS_PATH"
_FLAGFILE_PREFIXES = ("--flagfile=", "-flagfile=")


class FlagFileError(ValueError):
    """A flag file that cannot be found or read; the message names it and where it was sought.

    Example:
      try:
          expand(["train", "--flagfile=typo"])
      except FlagFileError as error:
          print(error)  # flag file 'typo' not found (looked in ...); ...
    """


def flag_dir():
    """The folder of flag files shipped with ice-tf: `ice_tf/flagfiles/` in an installed
    wheel, the repository's `flags/` in a source checkout.

    Example:
      (flag_dir() / "demo.flags").is_file()  # True
    """
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "flagfiles", package.parent / "flags"):
        if (candidate / "common.flags").is_file():
            return candidate
    raise FlagFileError(
        f"the flag files shipped with ice-tf are missing (neither {package / 'flagfiles'} nor "
        f"{package.parent / 'flags'}); reinstall ice-tf.")


def search_path():
    """The folders a flag file name is looked up in after its own folder:
    `$ICE_TF_FLAGS_PATH`, then `flag_dir()`.

    Example:
      search_path()[-1] == flag_dir()  # True
    """
    extra = [Path(p) for p in os.environ.get(SEARCH_PATH_ENV, "").split(os.pathsep) if p]
    return [*extra, flag_dir()]


def _candidates(name):
    names = [name] if name.endswith(".flags") else [name, name + ".flags"]
    return names


def resolve(name, base_dir):
    """The path of flag file `name`, included from a file in `base_dir` (or given on the
    command line, with `base_dir` the current directory).

    Example:
      resolve("common.flags", flag_dir())  # <flag_dir>/common.flags
    """
    if not name:
        raise FlagFileError("--flagfile= names no file; give a path or a shipped name such as demo.")
    base_dir = Path(base_dir)
    tried = []
    for candidate in _candidates(os.path.expanduser(name)):
        path = Path(candidate)
        if path.is_absolute():
            if path.is_file():
                return path
            tried.append(str(path))
            continue
        for folder in [base_dir, *search_path()]:
            for relative in (path, *_without_flags_prefix(path)):
                if (folder / relative).is_file():
                    return folder / relative
        tried.append(candidate)
    folders = ", ".join(str(f) for f in [base_dir, *search_path()])
    raise FlagFileError(
        f"flag file {name!r} not found (looked in {folders}); give its path, a name relative "
        f"to the including file, or add its folder to ${SEARCH_PATH_ENV}.")


def _without_flags_prefix(path):
    # 'flags/demo.flags' (a path from the repository root) names the shipped folder's file.
    parts = path.parts
    return [Path(*parts[1:])] if len(parts) > 1 and parts[0] == "flags" else []


def _flag_lines(path):
    try:
        text = path.read_text()
    except OSError as error:
        raise FlagFileError(f"flag file {str(path)!r} cannot be read ({error.strerror}).") from None
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "//")):
            yield line


def _flagfile_value(arg):
    for prefix in _FLAGFILE_PREFIXES:
        if arg.startswith(prefix):
            return arg[len(prefix):]
    return None


def expand(argv, cwd=None):
    """`argv` with every `--flagfile=` replaced by the flags it holds, recursively
    (absl's order: a file's flags stand where the file was named; later flags win).

    argv[0] (the program) is kept; nothing after a bare `--` is touched.

    Raises:
      FlagFileError: a file not found, unreadable, or including itself.

    Example:
      expand(["prog", "--flagfile=flags/demo.flags", "--epochs=1"])
    """
    cwd = Path(cwd or os.getcwd())
    out = list(argv[:1])

    def visit(arg, base_dir, chain):
        value = _flagfile_value(arg)
        if value is None:
            out.append(arg)
            return
        path = resolve(value, base_dir).resolve()
        if path in chain:
            cycle = " -> ".join(str(p) for p in (*chain, path))
            raise FlagFileError(f"flag files include each other: {cycle}; remove one --flagfile line.")
        for line in _flag_lines(path):
            visit(line, path.parent, (*chain, path))

    args = list(argv[1:])
    for index, arg in enumerate(args):
        if arg == "--":
            out.extend(args[index:])
            break
        visit(arg, cwd, ())
    return out


__all__ = ["expand", "resolve", "flag_dir", "search_path", "FlagFileError", "SEARCH_PATH_ENV"]
