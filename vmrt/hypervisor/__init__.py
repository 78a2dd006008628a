"""The QEMU driver: host probing, argv building, process and QMP management."""
