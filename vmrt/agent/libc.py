"""The C library, for the system calls Python's os module lacks (prctl,
mount): one handle for the whole agent, errno kept for ctypes.get_errno()."""

import ctypes

LIBC = ctypes.CDLL(None, use_errno=True)
