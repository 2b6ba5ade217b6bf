"""A local Kubernetes pod-API simulator that the official ``kubernetes`` client cannot tell from a cluster.

Why: no kube-apiserver can run where the bridge is developed and tested, and a mock that accepts anything
proves nothing. The simulator serves the real HTTP API (validation, resourceVersions, selectors, watches,
logs, errors as ``Status`` objects) and runs pods through a scheduler and a kubelet that write the statuses a
real cluster writes. Production code never imports this package; tests, the demo, the benchmarks and
``kbridge sim`` do.

Modules: ``store`` (objects, resourceVersions, events), ``validation`` and ``selectors`` (admission and
filtering rules), ``patch`` (the PATCH dialects), ``api`` (the HTTP server), ``logs`` (container logs),
``faults`` (injected errors), ``profiles`` (latencies), ``kubeconfig``; ``scheduler`` and ``kubelet`` (the
pod lifecycle), ``cluster`` (everything wired: :class:`bridge.sim.cluster.Simulator`), ``cli``
(``kbridge sim``, also ``python -m bridge.sim``) and ``bench``. User guide: ``docs/simulator.md``.
"""
