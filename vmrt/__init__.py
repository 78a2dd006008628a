"""vmrt: a VM-isolated sandbox runtime for Kubernetes."""

__version__ = "0.1.0"
