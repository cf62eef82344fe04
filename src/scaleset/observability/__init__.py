"""What an operator sees of a running control plane: Prometheus metrics and structured logs."""
