package main

import (
	"context"
	"net/http"

	"github.com/tidemarkhq/tidemark/admin"
	"github.com/tidemarkhq/tidemark/statuspage"
	"golang.org/x/sync/errgroup"
)

func init() {
	daemonParts = append(daemonParts, daemonPart{name: "status page", start: startStatusPage})
}

// publicHandler is a server that can mount a route without the token check of
// read routes. The page's HTML, CSS and JS hold no data, and a browser cannot
// send a bearer token for a page it has not loaded yet: without such a route, a
// daemon with admin.open_status false would answer the page itself with 401 and
// the page's token field could never be reached.
type publicHandler interface {
	HandlePublic(pattern string, h http.Handler)
}

// startStatusPage serves the status page at GET / and GET /ui/. It only reads:
// the page polls the same read routes the CLI uses, with the caller's token.
func startStatusPage(_ context.Context, d *daemon, srv *admin.Server, _ *errgroup.Group) error {
	h := statuspage.Handler()
	pub, public := any(srv).(publicHandler)
	for _, p := range statuspage.Patterns {
		if public {
			pub.HandlePublic(p, h)
		} else {
			srv.Handle(p, h, false)
		}
	}
	if !public && !d.cfg.Admin.OpenStatus {
		d.log.Warn("the status page needs admin.open_status: true on this build (its files are served behind the token check)")
	}
	return nil
}
