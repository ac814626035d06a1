"""Optional integrations: OpenTelemetry (extra ``otel``), Prometheus (extra ``prometheus``), Django.

Django plugs into the core through the entry-point group ``sentinel.frameworks``
(see ``sentinel._frameworks`` and :mod:`sentinel.contrib.frameworks`): the core
never imports a plug-in.
"""
