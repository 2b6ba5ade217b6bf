"""kube-redis-bridge: run Airflow tasks as Kubernetes pods, with Redis between the scheduler and the cluster.

Importing this package is cheap and side-effect free: it never imports the workers, the pod-API simulator
or Airflow. Import the module you need (``bridge.naming``, ``bridge.config``, ...).
"""

__version__ = "0.1.0"
