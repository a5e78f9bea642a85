"""Builds the API reference into docs/api/ (pdoc), after checking every public docstring.

  python scripts/api_docs.py              # check, then write docs/api/index.html and one page per module
  python scripts/api_docs.py --check      # check only (the test suite runs this)

A public name is one a module lists in `__all__` (or, without `__all__`, one it defines
without a leading underscore), and every public method of a public class. Each needs a
docstring with a short example (an `Example` section or a `>>>` line); methods need a
docstring. Any that lacks one is listed and the command exits with status 1, so the
reference never shows an undocumented name. pdoc: `pip install "ice-tf[docs]"`.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import pathlib
import pkgutil
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = pathlib.Path(__file__).resolve().parents[1]
OUTPUT = REPO / "docs" / "api"
# Inherited Keras/absl machinery is documented upstream; these are the methods a class
# defines itself.
_EXAMPLE_MARKERS = ("Example", ">>>")


def modules():
    """Every module of the ice_tf package, imported, sorted by name."""
    import ice_tf

    names = ["ice_tf"] + sorted(
        info.name for info in pkgutil.walk_packages(ice_tf.__path__, "ice_tf.")
        if not any(part.startswith("_") for part in info.name.split("."))  # private modules
        and info.name.split(".", 1)[1] not in ice_tf._OLD_PATHS)  # aliases of moved modules
    return [importlib.import_module(name) for name in names]


def public_names(module):
    """(name, object) of a module's public API: `__all__`, else what it defines."""
    if hasattr(module, "__all__"):
        names = list(module.__all__)
    else:
        names = [n for n, obj in vars(module).items() if not n.startswith("_")
                 and getattr(obj, "__module__", None) == module.__name__
                 and (inspect.isclass(obj) or inspect.isfunction(obj))]
    return [(name, getattr(module, name)) for name in names]


def _own_methods(cls):
    for name, member in vars(cls).items():
        if name.startswith("_") or not callable(getattr(member, "__func__", member)):
            continue
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        if inspect.isfunction(member):
            yield name, member


def problems():
    """One line per public name that lacks a docstring (or, for classes and functions,
    an example in it)."""
    found = []
    for module in modules():
        if not (module.__doc__ or "").strip():
            found.append(f"{module.__name__}: module without a docstring")
        for name, obj in public_names(module):
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue  # constants are described in the module docstring
            if getattr(obj, "__module__", module.__name__) != module.__name__:
                continue  # re-exported: checked where it is defined
            where = f"{module.__name__}.{name}"
            doc = inspect.getdoc(obj) or ""
            if inspect.isclass(obj) and doc.startswith(f"{obj.__name__}("):
                doc = ""  # the signature dataclasses and named tuples make up
            if not doc.strip():
                found.append(f"{where}: no docstring")
            elif not any(marker in doc for marker in _EXAMPLE_MARKERS):
                found.append(f"{where}: docstring without an example")
            if inspect.isclass(obj):
                for method_name, method in _own_methods(obj):
                    if not (method.__doc__ or "").strip() and not _overrides(obj, method_name):
                        found.append(f"{where}.{method_name}: no docstring")
    return found


def _overrides(cls, name):
    """Whether `name` overrides a base class's method (Keras's `call`, `build`, ...), whose
    contract the base documents."""
    return any(name in vars(base) for base in cls.__mro__[1:] if base is not object)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="check the docstrings only")
    parser.add_argument("--output", default=str(OUTPUT), help="folder of the HTML reference")
    args = parser.parse_args(argv)
    missing = problems()
    if missing:
        sys.stderr.write(f"{len(missing)} public names lack a docstring or an example:\n")
        sys.stderr.write("".join(f"  {line}\n" for line in missing))
        return 1
    print(f"docstrings: every public name of {len(modules())} modules has one, with an example")
    if args.check:
        return 0
    try:
        import pdoc
    except ImportError:
        sys.stderr.write('error: pdoc is not installed: pip install "ice-tf[docs]"\n')
        return 1
    import warnings

    # pdoc cannot resolve string annotations of named tuples ('np.ndarray'); harmless.
    warnings.filterwarnings("ignore", category=UserWarning, module="pdoc")
    pdoc.render.configure(docformat="google", footer_text="ice-tf API reference")
    pdoc.pdoc("ice_tf", output_directory=pathlib.Path(args.output))
    pages = sorted(pathlib.Path(args.output).rglob("*.html"))
    print(f"API reference: {len(pages)} pages in {args.output} (open index.html)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
