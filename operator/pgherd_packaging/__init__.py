"""The packaging generators: the CRDs (from pgherd.api's models), the install manifests and
RBAC (from the permissions the operator's code uses), the OLM bundle, the file-based catalog,
the release history and the OperatorHub submission tree. `make generate` runs them; they are
development tooling, never in the wheel or the images.
"""
