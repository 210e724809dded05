"""Test-only helpers: the fake pods app, a small Kubernetes client, rollout manifests and the
operator process runner. The emulator, the CRD schema checker, Prometheus and managed processes
live in the sandbox (`asr_sandbox`), which the demo shares. Production code never imports this."""
