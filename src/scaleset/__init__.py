"""scaleset: a self-hosted control plane for virtual machine scale sets, Azure-compatible on the wire."""

__version__ = "0.1.0"
