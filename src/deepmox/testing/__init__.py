"""Contract suites for deepmox's bindings, run against every implementation."""
