"""Traffic routing between the stable and canary tracks: one interface, one module per provider."""
