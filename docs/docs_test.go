package docs

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
)

const root = ".."

// markdown lists README.md and every Markdown file under docs/.
func markdown(t *testing.T) []string {
	t.Helper()
	files := []string{filepath.Join(root, "README.md")}
	ms, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	return append(files, ms...)
}

var (
	linkRE    = regexp.MustCompile(`\]\(([^)\s]+)\)`)
	headingRE = regexp.MustCompile(`(?m)^#{1,6} +(.+)$`)
	fenceRE   = regexp.MustCompile("(?s)```.*?```")
)

// anchors are the GitHub anchors of a Markdown file's headings.
func anchors(text string) map[string]bool {
	out := map[string]bool{}
	for _, m := range headingRE.FindAllStringSubmatch(fenceRE.ReplaceAllString(text, ""), -1) {
		a := strings.ToLower(strings.TrimSpace(m[1]))
		a = regexp.MustCompile("[^a-z0-9 _-]").ReplaceAllString(a, "")
		out[strings.ReplaceAll(a, " ", "-")] = true
	}
	return out
}

// TestRelativeLinksResolve: every link that is not a URL names a file or
// folder of the repository, and its #anchor, when it has one, a heading there.
func TestRelativeLinksResolve(t *testing.T) {
	for _, f := range markdown(t) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		text := fenceRE.ReplaceAllString(string(b), "")
		for _, m := range linkRE.FindAllStringSubmatch(text, -1) {
			link := m[1]
			if strings.Contains(link, "://") || strings.HasPrefix(link, "mailto:") {
				continue
			}
			path, anchor, _ := strings.Cut(link, "#")
			target := f
			if path != "" {
				target = filepath.Join(filepath.Dir(f), path)
				if _, err := os.Stat(target); err != nil {
					t.Errorf("%s: link %q: %v", f, link, err)
					continue
				}
			}
			if anchor != "" && strings.HasSuffix(target, ".md") {
				tb, _ := os.ReadFile(target)
				if !anchors(string(tb))[anchor] {
					t.Errorf("%s: link %q: no heading #%s in %s", f, link, anchor, target)
				}
			}
		}
	}
}

// yamlKeys reads the yaml tags of every struct field in the Go files.
func yamlKeys(t *testing.T, files ...string) []string {
	t.Helper()
	seen := map[string]bool{}
	fset := token.NewFileSet()
	for _, f := range files {
		file, err := parser.ParseFile(fset, filepath.Join(root, f), nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(file, func(n ast.Node) bool {
			st, ok := n.(*ast.StructType)
			if !ok {
				return true
			}
			for _, fld := range st.Fields.List {
				if fld.Tag == nil {
					continue
				}
				tag, _ := strconv.Unquote(fld.Tag.Value)
				name, _, _ := strings.Cut(reflect.StructTag(tag).Get("yaml"), ",")
				if name != "" && name != "-" {
					seen[name] = true
				}
			}
			return true
		})
	}
	keys := make([]string, 0, len(seen))
	for k := range seen {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

var codeSpanRE = regexp.MustCompile("`[^`\n]+`")

// documented is every identifier inside a code span of the files.
func documented(t *testing.T, files ...string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		text := string(b)
		for _, span := range append(codeSpanRE.FindAllString(text, -1), fenceRE.FindAllString(text, -1)...) {
			for _, w := range regexp.MustCompile(`[a-z0-9_]+`).FindAllString(span, -1) {
				out[w] = true
			}
		}
	}
	return out
}

// TestConfigKeysDocumented: a key a user can write in a config, spec or plan
// and that no reference page names is a key nobody can use on purpose.
func TestConfigKeysDocumented(t *testing.T) {
	goFiles := func(pattern string) []string {
		ms, _ := filepath.Glob(filepath.Join(root, pattern))
		var out []string
		for _, m := range ms {
			if !strings.HasSuffix(m, "_test.go") {
				rel, _ := filepath.Rel(root, m)
				out = append(out, rel)
			}
		}
		return out
	}
	cases := []struct {
		what  string
		code  []string
		pages []string
	}{
		{"daemon config", append(append(append(append(goFiles("config/*.go"), goFiles("capture/config.go")...),
			goFiles("sink/config.go")...), goFiles("reconcile/config.go")...), goFiles("leader/*.go")...),
			[]string{"docs/configuration.md", "docs/reconcile.md"}},
		{"mapping spec", goFiles("transform/spec.go"), []string{"docs/spec.md"}},
		{"rollout plan", goFiles("rollout/plan.go"), []string{"docs/rollout.md"}},
	}
	for _, c := range cases {
		have := documented(t, c.pages...)
		for _, k := range yamlKeys(t, c.code...) {
			if !have[k] {
				t.Errorf("%s key %q (from %v) is in none of %v", c.what, k, c.code, c.pages)
			}
		}
	}
}

// TestNamedTestsExist: every test, benchmark or fuzz target the docs name
// (`TestX`, `TestX/sub`) is a function somewhere in the repository, so a
// doc cannot keep citing a test that was renamed or removed.
func TestNamedTestsExist(t *testing.T) {
	nameRE := regexp.MustCompile("`((?:Test|Benchmark|Fuzz)[A-Z][A-Za-z0-9_]*)(\\*?)")
	funcs := map[string]bool{}
	funcRE := regexp.MustCompile(`(?m)^func ((?:Test|Benchmark|Fuzz)[A-Za-z0-9_]*)\(`)
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") && path != root) {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range funcRE.FindAllStringSubmatch(string(b), -1) {
			funcs[m[1]] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range markdown(t) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range nameRE.FindAllStringSubmatch(string(b), -1) {
			found := funcs[m[1]]
			for fn := range funcs {
				// `TestX*` names every test starting with TestX.
				found = found || (m[2] == "*" && strings.HasPrefix(fn, m[1]))
			}
			if !found {
				t.Errorf("%s names %s%s, which no _test.go file defines", f, m[1], m[2])
			}
		}
	}
}
