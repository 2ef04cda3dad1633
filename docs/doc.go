// Package docs holds tidemark's reference documentation (the Markdown files
// beside this one). It has no code; its test keeps the documentation honest:
// every relative link in README.md and docs/ resolves, and every key the
// daemon's config, the mapping spec and the rollout plan accept is documented.
package docs
