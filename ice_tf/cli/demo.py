"""The demo on the embedded benchmark: `ice-tf demo` is `ice-tf compare --flagfile=demo`.

  ice-tf demo                              # ce, oe, energy, ice; small CNN, 6 epochs
  ice-tf demo --seeds=1,2,3 --output_dir=runs/demo3

It runs offline on a CPU (the data ships with the package); further flags go to
`ice-tf compare` and override the demo's flag file.
"""

import sys

from ice_tf.cli import compare


def run(argv=None):
    """Runs `ice-tf compare --flagfile=demo` with the extra arguments after it.

    Example:
      run(["ice-tf demo", "--seeds=1,2,3"])
    """
    argv = list(sys.argv if argv is None else argv)
    compare.run([argv[0], "--flagfile=demo", *argv[1:]])


if __name__ == "__main__":
    run()
