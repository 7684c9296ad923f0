"""Device profiles and the cost model (execution-provider presets live in runtime.providers)."""
