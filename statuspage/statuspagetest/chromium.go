// Package statuspagetest drives Debian's headless Chromium against the status
// page and reads what it rendered. Tests use it; the daemon does not.
package statuspagetest

import (
	"context"
	"fmt"
	"github.com/tidemarkhq/tidemark/internal/testbed"
	"html"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// Install is the command that provides the browser on a fresh Debian machine.
const Install = "apt-get install -y chromium"

// Chromium returns the browser binary: $TIDEMARK_CHROMIUM, else chromium on
// PATH. Under CI (CI set) a missing browser fails the test, because the browser
// test is one of the things CI must show passing; on a workstation it skips
// with the command that installs it.
func Chromium(t testing.TB) string {
	t.Helper()
	name := os.Getenv("TIDEMARK_CHROMIUM")
	if name == "" {
		name = "chromium"
	}
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	msg := fmt.Sprintf("headless Chromium not found (%s: %v); install it with `%s`, or set TIDEMARK_CHROMIUM to the binary", name, err, Install)
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg + " (skipped because CI is not set; under CI this fails)")
	return ""
}

// args are the flags every run uses: headless, no sandbox (CI and containers
// run as root), a throw-away profile, and none of the browser's own calls home,
// so nothing leaves the machine.
func args(profile string, budget time.Duration) []string {
	return []string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--no-first-run", "--no-default-browser-check", "--disable-extensions",
		"--disable-background-networking", "--disable-sync", "--disable-component-update",
		"--disable-default-apps", "--metrics-recording-only", "--mute-audio",
		"--user-data-dir=" + profile,
		// Virtual time runs the page's timers and waits for its fetches, so
		// the dump is taken after the page has polled the API a few times.
		fmt.Sprintf("--virtual-time-budget=%d", budget.Milliseconds()),
	}
}

// DumpDOM loads url and returns the DOM as serialised after budget of virtual
// time.
func DumpDOM(t testing.TB, ctx context.Context, bin, url string, budget time.Duration) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append(args(t.TempDir(), budget), "--dump-dom", url)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium --dump-dom %s: %v\n%s", url, err, testbed.Tail(stderr.String(), 3000))
	}
	if !strings.Contains(string(out), "<body") {
		t.Fatalf("chromium --dump-dom %s printed no document:\n%s\n%s", url, testbed.Tail(string(out), 2000), testbed.Tail(stderr.String(), 3000))
	}
	return string(out)
}

// Screenshot saves a PNG of url at width×height to path.
func Screenshot(t testing.TB, ctx context.Context, bin, url, path string, width, height int, budget time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	a := append(args(t.TempDir(), budget), "--hide-scrollbars", fmt.Sprintf("--window-size=%d,%d", width, height),
		"--screenshot="+path, url)
	if out, err := exec.CommandContext(ctx, bin, a...).CombinedOutput(); err != nil {
		t.Fatalf("chromium --screenshot: %v\n%s", err, testbed.Tail(string(out), 3000))
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() == 0 {
		t.Fatalf("chromium wrote no screenshot at %s: %v", path, err)
	}
}

// Elements returns the inner HTML of every element carrying attribute attr,
// keyed by the attribute's value, in document order of first appearance. It
// reads the serialisation Chromium produces (well-formed, attributes quoted),
// not arbitrary HTML.
func Elements(doc, attr string) (keys []string, inner map[string]string) {
	inner = map[string]string{}
	re := regexp.MustCompile(`<([a-zA-Z][a-zA-Z0-9]*)\b[^>]*\s` + regexp.QuoteMeta(attr) + `="([^"]*)"[^>]*>`)
	for _, m := range re.FindAllStringSubmatchIndex(doc, -1) {
		tag, val := doc[m[2]:m[3]], html.UnescapeString(doc[m[4]:m[5]])
		body := innerOf(doc[m[1]:], tag)
		if _, seen := inner[val]; !seen {
			keys = append(keys, val)
		}
		inner[val] = body
	}
	return keys, inner
}

// All is the inner HTML of every element with attr="value", in document order.
func All(doc, attr, value string) []string {
	var out []string
	re := regexp.MustCompile(`<([a-zA-Z][a-zA-Z0-9]*)\b[^>]*\s` + regexp.QuoteMeta(attr) + `="([^"]*)"[^>]*>`)
	for _, m := range re.FindAllStringSubmatchIndex(doc, -1) {
		if html.UnescapeString(doc[m[4]:m[5]]) == value {
			out = append(out, innerOf(doc[m[1]:], doc[m[2]:m[3]]))
		}
	}
	return out
}

// Element is the inner HTML of the first element with attr="value".
func Element(doc, attr, value string) (string, bool) {
	_, all := Elements(doc, attr)
	s, ok := all[value]
	return s, ok
}

// innerOf returns rest up to the close tag matching an already opened tag.
func innerOf(rest, tag string) string {
	depth := 1
	open := regexp.MustCompile(`(?i)<(/?)` + tag + `\b[^>]*>`)
	for _, m := range open.FindAllStringSubmatchIndex(rest, -1) {
		if m[3] > m[2] { // a close tag
			depth--
			if depth == 0 {
				return rest[:m[0]]
			}
		} else if !strings.HasSuffix(rest[m[0]:m[1]], "/>") {
			depth++
		}
	}
	return rest
}

var tags = regexp.MustCompile(`<[^>]*>`)

// Text is what a reader sees of an HTML fragment: tags removed, entities
// decoded, white space collapsed.
func Text(fragment string) string {
	s := html.UnescapeString(tags.ReplaceAllString(fragment, " "))
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\u00a0", " ")), " ")
}

// Cells maps the data-col attribute of each cell in a row to its text.
func Cells(row string) map[string]string {
	keys, inner := Elements(row, "data-col")
	out := make(map[string]string, len(keys))
	for _, k := range keys {
		out[k] = Text(inner[k])
	}
	return out
}

// Number reads a figure the page printed with thousands separators.
func Number(s string) string { return strings.ReplaceAll(strings.TrimSpace(s), ",", "") }

// Keys are the values of attribute attr in a fragment, in document order of
// first appearance.
func Keys(fragment, attr string) []string {
	keys, _ := Elements(fragment, attr)
	return keys
}

// Texts is the text of every element with attr="value", in document order.
func Texts(doc, attr, value string) []string {
	var out []string
	for _, inner := range All(doc, attr, value) {
		out = append(out, Text(inner))
	}
	return out
}

// Attr is attribute name of the first element with attr="value" ("" when
// there is none).
func Attr(doc, attr, value, name string) string {
	re := regexp.MustCompile(`<[a-zA-Z][a-zA-Z0-9]*\b[^>]*\s` + regexp.QuoteMeta(attr) + `="` + regexp.QuoteMeta(html.EscapeString(value)) + `"[^>]*>`)
	tag := re.FindString(doc)
	if tag == "" {
		return ""
	}
	m := regexp.MustCompile(`\s` + regexp.QuoteMeta(name) + `="([^"]*)"`).FindStringSubmatch(tag)
	if m == nil {
		return ""
	}
	return html.UnescapeString(m[1])
}
