"""TensorFlow's start-up lines, hidden from the command line unless asked for.

Importing TensorFlow prints C++ log lines ("All log messages before absl::InitializeLog()",
"oneDNN custom operations are on", the CPU-instruction notice) that TF_CPP_MIN_LOG_LEVEL
does not silence. Every `ice-tf` command imports TensorFlow through `import_tensorflow`,
which holds the process's standard error while it loads and passes on every line but
those (`STARTUP_NOISE`); a failed import shows all of it. `--verbose` on the command
line, or TF_CPP_MIN_LOG_LEVEL=0 set by the user, shows them.

Example:
  quiet.import_tensorflow(verbose="--verbose" in sys.argv)
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile

VERBOSE_FLAG = "--verbose"
STARTUP_NOISE = (
    "All log messages before absl::InitializeLog()",
    "oneDNN custom operations are on",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "To enable the following instructions:",
    "rebuild TensorFlow with the appropriate compiler flags",
    "Unable to register cuDNN factory", "Unable to register cuFFT factory",
    "Unable to register cuBLAS factory", "computation placer already registered",
    "TF-TRT Warning: Could not find TensorRT", "Could not find cuda drivers on your machine",
    "cuda_executor.cc", "Unable to register cuSPARSE factory",
)


def wants_verbose(argv=None):
    """Whether the user asked for TensorFlow's own lines: `--verbose` in `argv`, or
    TF_CPP_MIN_LOG_LEVEL=0 in the environment.

    Example:
      wants_verbose(["ice-tf", "train", "--verbose"])  # True
    """
    argv = sys.argv if argv is None else argv
    return VERBOSE_FLAG in argv or os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0"


def without_noise(text):
    """`text` less the lines of `STARTUP_NOISE`.

    Example:
      without_noise("I0000 port.cc:153] oneDNN custom operations are on.\\nreal\\n")  # 'real\\n'
    """
    kept = [line for line in text.splitlines(keepends=True)
            if not any(noise in line for noise in STARTUP_NOISE)]
    return "".join(kept)


def import_tensorflow(verbose=None):
    """Imports TensorFlow with its start-up lines hidden (see the module); returns the
    module, or None when TensorFlow is not installed.

    Example:
      import_tensorflow(verbose=False)
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    if verbose is None:
        verbose = wants_verbose()
    try:
        if verbose:
            return importlib.import_module("tensorflow")
        return _import_holding_stderr("tensorflow")
    except ModuleNotFoundError as error:
        if error.name != "tensorflow":
            raise
        return None


def _import_holding_stderr(name):
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        failed = True
        try:
            module = importlib.import_module(name)
            failed = False
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            text = held.read().decode(errors="replace")
            sys.stderr.write(text if failed else without_noise(text))
            sys.stderr.flush()
    return module


__all__ = ["import_tensorflow", "wants_verbose", "without_noise", "STARTUP_NOISE", "VERBOSE_FLAG"]
