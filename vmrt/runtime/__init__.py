"""vmrtd's core, below the CRI layer: pods, containers, logs, recovery."""
