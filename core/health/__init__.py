"""A node's health: the AgentChecker (stages from component readiness and monitored inputs), the
PerformanceMonitor, the one auto-save, the node's probes put together (node_health) and the
/healthz, /readyz and /metrics routes (http)."""
