"""Runtime services every layer may use: atomic files, devices and processes, precision, stopping, progress."""
