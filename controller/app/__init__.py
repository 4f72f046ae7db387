"""The controller: reconciler, rollout driver, monitoring, daemon, reporting, wiring."""
