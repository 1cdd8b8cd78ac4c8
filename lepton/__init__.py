"""The `lepton` command: one entry point over the coordinator, the node and the demo.

This package assembles the product; `lepton_fl` (shared vocabulary), `coordinator` and
`client_node` never import it.
"""
