// Package deploy holds tidemark's deployment files: the container image
// (docker/), a Docker Compose stack with real servers (compose/), Kubernetes
// manifests (kubernetes/), a Grafana dashboard (grafana/) and Prometheus alert
// rules (prometheus/). The package has no code: its tests check that every file
// parses, that the manifests keep the properties the README promises (probes,
// limits, non-root, read-only), that the files agree with each other (ports,
// mount paths, secret keys), and that every metric the dashboard and the
// alerts query is one the code registers. deploy/local is the test stack, not
// a deployment, and is not checked here.
package deploy
