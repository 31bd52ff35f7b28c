"""Kubernetes: RayJob manifests for pipeline stages and their submission through the kubernetes client.

The Helm chart (charts/mrlkit) is the other half: RayCluster, RayJobs, RayService.
"""
