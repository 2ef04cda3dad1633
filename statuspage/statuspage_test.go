package statuspage

import (
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

func serve(t *testing.T) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	for _, p := range Patterns {
		mux.Handle(p, Handler())
	}
	mux.Handle("GET /v1/status", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("{}")) }))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func TestRoutes(t *testing.T) {
	srv := serve(t)
	for _, tc := range []struct {
		path, ctype string
		code        int
	}{
		{"/", "text/html", 200},
		{"/ui/app.js", "javascript", 200},
		{"/ui/charts.js", "javascript", 200},
		{"/ui/style.css", "text/css", 200},
		{"/ui/", "", 404}, // no directory listing
		{"/ui/missing.js", "", 404},
		{"/v1/plan", "", 404}, // unknown API paths stay 404: the page reads 404 as "not configured"
		{"/v1/status", "", 200},
	} {
		resp, err := http.Get(srv.URL + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code {
			t.Errorf("GET %s: %d, want %d", tc.path, resp.StatusCode, tc.code)
			continue
		}
		if tc.ctype != "" && !strings.Contains(resp.Header.Get("Content-Type"), tc.ctype) {
			t.Errorf("GET %s: Content-Type %q, want %s", tc.path, resp.Header.Get("Content-Type"), tc.ctype)
		}
		if tc.path == "/" {
			// charts.js first: app.js uses what it defines (deferred
			// scripts run in document order).
			if i, j := strings.Index(string(body), `src="/ui/charts.js"`), strings.Index(string(body), `src="/ui/app.js"`); i < 0 || j < i {
				t.Errorf("index does not load charts.js, then app.js")
			}
			if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "connect-src 'self'") || !strings.Contains(csp, "default-src 'none'") {
				t.Errorf("CSP %q does not confine the page to its origin", csp)
			}
		}
	}
}

// TestNothingFromOutside: no embedded file names another origin (the SVG
// namespace name aside), and the script never builds HTML from strings
// (data is free text).
func TestNothingFromOutside(t *testing.T) {
	external := regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}|@import|url\(\s*['"]?(https?:|//)`)
	err := fs.WalkDir(files, "ui", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, _ := fs.ReadFile(files, path)
		for _, line := range strings.Split(string(b), "\n") {
			// The SVG namespace is a name, never fetched: the charts need it
			// for createElementNS. Only that exact string is let through.
			line = strings.ReplaceAll(line, `"http://www.w3.org/2000/svg"`, `""`)
			if m := external.FindString(line); m != "" {
				t.Errorf("%s refers to another origin: %q in %q", path, m, strings.TrimSpace(line))
			}
		}
		if strings.HasSuffix(path, ".js") {
			for _, bad := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("} {
				if strings.Contains(string(b), bad) {
					t.Errorf("%s uses %s; build nodes with textContent", path, bad)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
