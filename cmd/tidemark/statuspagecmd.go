package main

import (
	"context"

	"github.com/tidemarkhq/tidemark/admin"
	"github.com/tidemarkhq/tidemark/statuspage"
	"golang.org/x/sync/errgroup"
)

func init() {
	daemonParts = append(daemonParts, daemonPart{name: "status page", start: startStatusPage})
}

// startStatusPage serves the status page at GET / and GET /ui/. It only reads:
// the page polls the same read routes the CLI uses, with the caller's token.
func startStatusPage(_ context.Context, d *daemon, srv *admin.Server, _ *errgroup.Group) error {
	// The page's HTML, CSS and JS hold no data, and a browser cannot send a
	// bearer token for a page it has not loaded yet: behind the token check,
	// the page's own token field could never be reached.
	h := statuspage.Handler()
	for _, p := range statuspage.Patterns {
		srv.HandlePublic(p, h)
	}
	return nil
}
