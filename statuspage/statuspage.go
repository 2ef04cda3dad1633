// Package statuspage is the daemon's status page: static HTML, CSS and plain
// JavaScript embedded in the binary. The page holds no data of its own; it
// polls the daemon's JSON API from the same origin (/healthz, /readyz,
// /v1/status, /v1/plan, /v1/reports/latest, /v1/audit, /v1/whoami; less often
// /v1/lag/history and /v1/reports) and renders what they answer, charts
// included (ui/charts.js draws them as SVG). Nothing is fetched from outside the machine: there is no CDN, and the
// Content-Security-Policy the handler sends lets the browser load and connect
// to this origin only.
package statuspage

import (
	"embed"
	"io/fs"
	"net/http"
	"strings"
)

//go:embed ui
var files embed.FS

// Patterns are the routes Handler answers, for an http.ServeMux: the page at
// "/" (exactly; "{$}" keeps unknown API paths answering 404 rather than the
// page) and its assets under /ui/. Both only read.
var Patterns = []string{"GET /{$}", "GET /ui/"}

// csp confines the page to its own origin: scripts, styles and API calls from
// here only, no frames, no inline script. An inline data: URI is allowed for
// images so the page needs no favicon request.
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// Handler serves index.html at "/" and the files of ui/ under /ui/.
func Handler() http.Handler {
	ui, err := fs.Sub(files, "ui")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	index, err := fs.ReadFile(ui, "index.html")
	if err != nil {
		panic(err)
	}
	assets := http.StripPrefix("/ui/", http.FileServerFS(ui))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", csp)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		// The assets change only with the binary; revalidating is cheap and
		// keeps a page from an older daemon version out of the cache.
		h.Set("Cache-Control", "no-cache")
		switch {
		case r.URL.Path == "/":
			h.Set("Content-Type", "text/html; charset=utf-8")
			w.Write(index)
		case strings.HasPrefix(r.URL.Path, "/ui/") && !strings.HasSuffix(r.URL.Path, "/"):
			assets.ServeHTTP(w, r)
		default:
			// No directory listings.
			http.NotFound(w, r)
		}
	})
}
