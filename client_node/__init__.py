"""client_node."""
