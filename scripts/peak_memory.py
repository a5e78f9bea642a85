"""Peak resident memory of this process over a block of code, for the benchmark's two
sides (`benchmark.py` in TensorFlow's process, `torch_reference.py` in PyTorch's); no
dependency beyond the standard library.

Linux keeps the process's peak resident set size as VmHWM in /proc/self/status; writing
5 to /proc/self/clear_refs resets it to the current size, so the value read after the
block is the peak within it (the memory the process held before included). Elsewhere the
peak is None.

Example:
  with PeakMemory() as memory:
      step()
  print(memory.peak_mb)
"""


class PeakMemory:
    """Peak resident memory in MB of this process within a `with` block (None where
    Linux's VmHWM is not available)."""

    def __init__(self):
        self.peak_mb = None

    def __enter__(self):
        try:
            with open("/proc/self/clear_refs", "w") as stream:
                stream.write("5")
        except OSError:
            pass
        return self

    def __exit__(self, *exc):
        try:
            with open("/proc/self/status") as stream:
                for line in stream:
                    if line.startswith("VmHWM:"):
                        self.peak_mb = int(line.split()[1]) / 1024.0
        except OSError:
            self.peak_mb = None
        return False
