"""Pod sandboxes: their VM, their directory and what is mounted into it."""
