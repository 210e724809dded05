"""Test-only helpers: the CRD schema checker, the Kubernetes API emulator, the Prometheus
fixture, the fake pods app and the operator process runner. Production code never imports this."""
