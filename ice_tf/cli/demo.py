"""The demo on the embedded benchmark: `ice-tf demo` is `ice-tf compare --flagfile=demo
--flagfile=compare/demo_methods`: plain training, OE, Energy and ICE, the baselines at
the hyperparameters chosen on the validation split.

  ice-tf demo                              # ce, oe, energy, ice; small CNN, 6 epochs
  ice-tf demo --seeds=1,2,3 --output_dir=runs/demo3
  ice-tf demo --flagfile=compare/demo_reference_baselines   # + the reference's defaults

It runs offline on a CPU (the data ships with the package); further flags go to
`ice-tf compare` and override the demo's flag files.
"""

import sys

from ice_tf.cli import compare

METHODS_FLAGFILE = "compare/demo_methods"  # the methods and their tuned hyperparameters


def run(argv=None):
    """Runs `ice-tf compare --flagfile=demo --flagfile=compare/demo_methods` with the extra
    arguments after it.

    Example:
      run(["ice-tf demo", "--seeds=1,2,3"])
    """
    argv = list(sys.argv if argv is None else argv)
    compare.run([argv[0], "--flagfile=demo", f"--flagfile={METHODS_FLAGFILE}", *argv[1:]])


if __name__ == "__main__":
    run()
