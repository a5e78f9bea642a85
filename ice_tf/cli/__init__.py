"""The `ice-tf` command: `ice-tf <command> [flags]`, also `python -m ice_tf <command>`.

  ice-tf train --flagfile=demo --loss=ice --output_dir=runs/ice
  ice-tf evaluate --model=runs/ice --scores=ice,msp,mahalanobis
  ice-tf export --model=runs/ice/model.keras --output=exported/ice
  ice-tf compare --flagfile=demo --seeds=1,2,3
  ice-tf demo                     # the embedded benchmark: ce, oe, energy, ice (tuned baselines)
  ice-tf train --helpshort        # a command's flags, grouped, with their defaults
  ice-tf train ... --verbose      # also TensorFlow's own start-up lines (hidden otherwise)

Flag files: `--flagfile=PATH`, or the name of a shipped one (`demo`, `demo_near`,
`experiments/cifar10_wrn40_2_finetune_ice`, `method/ice`, ...) from any directory;
nested flag files resolve relative to the file that includes them (`flagfiles`).
"""

from __future__ import annotations

import importlib
import sys

from ice_tf.cli import quiet

quiet.import_tensorflow()  # first, so that its start-up lines are held back (quiet.py)

COMMANDS = {
    "train": "train, evaluate and export one model into a run folder",
    "evaluate": "OOD detection and accuracy of a run folder or a .keras model",
    "export": "a serving SavedModel of a .keras model",
    "compare": "several methods (and seeds) with one budget, as a table",
    "demo": "the demo on the embedded benchmark: ce, ice, and OE and Energy tuned on validation",
}


def usage():
    """The text `ice-tf --help` prints.

    Example:
      print(usage())
    """
    width = max(map(len, COMMANDS))
    lines = [__doc__.strip(), "", "Commands:"]
    lines += [f"  {name:<{width}}  {what}" for name, what in COMMANDS.items()]
    return "\n".join(lines) + "\n"


def main(argv=None):
    """Runs `ice-tf <command> ...` (the console entry point).

    Example:
      main(["ice-tf", "train", "--flagfile=demo", "--dry_run"])
    """
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "-help", "help", "--helpshort"):
        sys.stdout.write(usage())
        sys.exit(0 if len(argv) >= 2 else 2)
    name = argv[1]
    if name not in COMMANDS:
        sys.stderr.write(f"error: unknown command {name!r}; choose one of: "
                         f"{', '.join(COMMANDS)} (ice-tf --help)\n")
        sys.exit(2)
    try:
        command = importlib.import_module(f"ice_tf.cli.{name}")
    except ModuleNotFoundError as error:
        if error.name != "tensorflow":
            raise
        sys.stderr.write(f"error: {str(error).splitlines()[0]}\n")
        sys.exit(1)
    command.run([f"ice-tf {name}", *argv[2:]])


__all__ = ["main", "usage", "COMMANDS"]
