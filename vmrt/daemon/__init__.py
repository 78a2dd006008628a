"""vmrtd: the CRI daemon."""
