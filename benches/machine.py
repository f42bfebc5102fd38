"""What machine a benchmark ran on, for the benches' reports (no third-party imports)."""
import platform


def cpu_name():
    """The CPU model from /proc/cpuinfo, else what platform reports."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
