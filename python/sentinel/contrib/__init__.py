"""Optional integrations: OpenTelemetry (extra ``otel``) and Prometheus (extra ``prometheus``)."""
