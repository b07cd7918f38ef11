"""Developer tooling for pgherd: the pinned tools and a real local Kubernetes control plane.

Nothing here ships in the operator image; it exists so that tests and `make run` have a
real kube-apiserver (with etcd, controller manager, scheduler and kwok nodes) on 127.0.0.1.
"""
