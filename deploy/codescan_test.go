package deploy

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// repoRoot is the module root: go test runs in the package directory.
const repoRoot = ".."

const (
	promPkg       = "github.com/prometheus/client_golang/prometheus"
	collectorsPkg = "github.com/prometheus/client_golang/prometheus/collectors"
	modulePath    = "github.com/tidemarkhq/tidemark"
)

// metricInfo is one metric the code registers, as Prometheus exposes it.
type metricInfo struct {
	kind   string // counter, gauge, histogram, summary, untyped, desc
	labels []string
	where  string // file:line of the definition
}

// codeMetrics is what scanning the code found.
type codeMetrics struct {
	// byName holds every series name a scrape can show: a histogram's
	// _bucket, _sum and _count as well as its base name.
	byName map[string]metricInfo
	// unresolved lists definitions whose name is not a constant expression.
	unresolved []string
	// goCollector and processCollector say whether the standard collectors are
	// registered somewhere (their go_* and process_* series then exist).
	goCollector, processCollector bool
}

var (
	scanOnce sync.Once
	scanned  *codeMetrics
	scanErr  error
)

// scanMetrics reads every non-test Go file of the module once and collects the
// metrics defined with client_golang: prometheus.{Counter,Gauge,Histogram,
// Summary,Untyped}Opts literals (Namespace, Subsystem and Name joined the way
// client_golang does), their label lists when the literal is the first
// argument of a New…Vec call, and prometheus.NewDesc. Reading the source,
// rather than calling the packages' unexported constructors, covers every
// package (including ones being written now) without importing them.
func scanMetrics(t *testing.T) *codeMetrics {
	t.Helper()
	scanOnce.Do(func() { scanned, scanErr = doScan() })
	if scanErr != nil {
		t.Fatalf("scanning the code for metrics: %v", scanErr)
	}
	return scanned
}

func doScan() (*codeMetrics, error) {
	cm := &codeMetrics{byName: map[string]metricInfo{}}
	files, err := goFiles()
	if err != nil {
		return nil, err
	}
	fset := token.NewFileSet()
	parsed := map[string][]*ast.File{} // by directory (one package per directory)
	for _, path := range files {
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return nil, err
		}
		parsed[filepath.Dir(path)] = append(parsed[filepath.Dir(path)], f)
	}
	for _, fs := range parsed {
		consts := stringConsts(fs)
		for _, f := range fs {
			scanFile(fset, f, consts, cm)
		}
	}
	return cm, nil
}

// goFiles lists the module's non-test Go files, skipping state and caches.
func goFiles() ([]string, error) {
	var out []string
	err := filepath.WalkDir(repoRoot, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			name := d.Name()
			if path != repoRoot && (strings.HasPrefix(name, ".") || name == "testdata" || name == "vendor" || name == "node_modules") {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(path, ".go") && !strings.HasSuffix(path, "_test.go") {
			out = append(out, path)
		}
		return nil
	})
	return out, err
}

// stringConsts maps the package-level string constants of one package.
func stringConsts(files []*ast.File) map[string]string {
	m := map[string]string{}
	for _, f := range files {
		for _, d := range f.Decls {
			gd, ok := d.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, s := range gd.Specs {
				vs := s.(*ast.ValueSpec)
				for i, n := range vs.Names {
					if i < len(vs.Values) {
						if lit, ok := vs.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
							m[n.Name], _ = strconv.Unquote(lit.Value)
						}
					}
				}
			}
		}
	}
	return m
}

// importName returns the name a file uses for an import path ("" if not imported).
func importName(f *ast.File, path string) string {
	for _, im := range f.Imports {
		if p, _ := strconv.Unquote(im.Path.Value); p == path {
			if im.Name != nil {
				return im.Name.Name
			}
			return path[strings.LastIndex(path, "/")+1:]
		}
	}
	return ""
}

func isSel(e ast.Expr, pkg string, names ...string) (string, bool) {
	se, ok := e.(*ast.SelectorExpr)
	if !ok {
		return "", false
	}
	id, ok := se.X.(*ast.Ident)
	if !ok || id.Name != pkg {
		return "", false
	}
	for _, n := range names {
		if se.Sel.Name == n {
			return n, true
		}
	}
	return "", false
}

func scanFile(fset *token.FileSet, f *ast.File, consts map[string]string, cm *codeMetrics) {
	if c := importName(f, collectorsPkg); c != "" {
		ast.Inspect(f, func(n ast.Node) bool {
			if call, ok := n.(*ast.CallExpr); ok {
				if _, ok := isSel(call.Fun, c, "NewGoCollector"); ok {
					cm.goCollector = true
				}
				if _, ok := isSel(call.Fun, c, "NewProcessCollector"); ok {
					cm.processCollector = true
				}
			}
			return true
		})
	}
	p := importName(f, promPkg)
	if p == "" {
		return
	}
	str := func(e ast.Expr) (string, bool) {
		switch v := e.(type) {
		case *ast.BasicLit:
			if v.Kind == token.STRING {
				s, err := strconv.Unquote(v.Value)
				return s, err == nil
			}
		case *ast.Ident:
			s, ok := consts[v.Name]
			return s, ok
		case *ast.CallExpr: // prometheus.BuildFQName(ns, sub, name)
			if _, ok := isSel(v.Fun, p, "BuildFQName"); ok && len(v.Args) == 3 {
				var parts []string
				for _, a := range v.Args {
					s, ok := strOf(a, consts)
					if !ok {
						return "", false
					}
					parts = append(parts, s)
				}
				return fqName(parts[0], parts[1], parts[2]), true
			}
		}
		return "", false
	}
	// Label lists: []string literals, or identifiers bound to one in the same
	// function or at package level.
	for _, d := range f.Decls {
		lists := stringLists(d)
		labelsOf := func(e ast.Expr) []string {
			switch v := e.(type) {
			case *ast.CompositeLit:
				return litStrings(v, consts)
			case *ast.Ident:
				if l, ok := lists[v.Name]; ok {
					return l
				}
				return fileLists(f)[v.Name]
			}
			return nil
		}
		vecLabels := map[*ast.CompositeLit][]string{}
		ast.Inspect(d, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			fn := call.Fun
			if _, ok := isSel(fn, p, "NewCounterVec", "NewGaugeVec", "NewHistogramVec", "NewSummaryVec"); ok && len(call.Args) == 2 {
				if opts, ok := call.Args[0].(*ast.CompositeLit); ok {
					vecLabels[opts] = labelsOf(call.Args[1])
				}
			}
			if _, ok := isSel(fn, p, "NewDesc"); ok && len(call.Args) >= 3 {
				pos := fset.Position(call.Pos())
				where := filepath.ToSlash(pos.Filename) + ":" + strconv.Itoa(pos.Line)
				name, ok := str(call.Args[0])
				if !ok {
					cm.unresolved = append(cm.unresolved, where)
					return true
				}
				// A Desc does not say its type: accept the histogram suffixes too.
				cm.add(name, "desc", labelsOf(call.Args[2]), where)
			}
			return true
		})
		ast.Inspect(d, func(n ast.Node) bool {
			lit, ok := n.(*ast.CompositeLit)
			if !ok {
				return true
			}
			kind, ok := isSel(lit.Type, p, "CounterOpts", "GaugeOpts", "HistogramOpts", "SummaryOpts", "UntypedOpts")
			if !ok {
				return true
			}
			pos := fset.Position(lit.Pos())
			where := filepath.ToSlash(pos.Filename) + ":" + strconv.Itoa(pos.Line)
			var ns, sub, name string
			resolved := true
			for _, el := range lit.Elts {
				kv, ok := el.(*ast.KeyValueExpr)
				if !ok {
					continue
				}
				key, _ := kv.Key.(*ast.Ident)
				if key == nil {
					continue
				}
				var dst *string
				switch key.Name {
				case "Namespace":
					dst = &ns
				case "Subsystem":
					dst = &sub
				case "Name":
					dst = &name
				default:
					continue
				}
				s, ok := str(kv.Value)
				if !ok {
					resolved = false
				}
				*dst = s
			}
			if !resolved || name == "" {
				cm.unresolved = append(cm.unresolved, where)
				return true
			}
			cm.add(fqName(ns, sub, name), strings.ToLower(strings.TrimSuffix(kind, "Opts")), vecLabels[lit], where)
			return true
		})
	}
}

func strOf(e ast.Expr, consts map[string]string) (string, bool) {
	switch v := e.(type) {
	case *ast.BasicLit:
		s, err := strconv.Unquote(v.Value)
		return s, err == nil
	case *ast.Ident:
		s, ok := consts[v.Name]
		return s, ok
	}
	return "", false
}

// fqName joins the parts the way prometheus.BuildFQName does.
func fqName(ns, sub, name string) string {
	var parts []string
	for _, s := range []string{ns, sub, name} {
		if s != "" {
			parts = append(parts, s)
		}
	}
	if name == "" {
		return ""
	}
	return strings.Join(parts, "_")
}

func litStrings(cl *ast.CompositeLit, consts map[string]string) []string {
	var out []string
	for _, e := range cl.Elts {
		if s, ok := strOf(e, consts); ok {
			out = append(out, s)
		}
	}
	return out
}

// stringLists maps identifiers assigned a []string literal within one declaration.
func stringLists(d ast.Node) map[string][]string {
	m := map[string][]string{}
	ast.Inspect(d, func(n ast.Node) bool {
		switch v := n.(type) {
		case *ast.AssignStmt:
			for i, l := range v.Lhs {
				if id, ok := l.(*ast.Ident); ok && i < len(v.Rhs) {
					if cl, ok := v.Rhs[i].(*ast.CompositeLit); ok {
						m[id.Name] = litStrings(cl, nil)
					}
				}
			}
		case *ast.ValueSpec:
			for i, id := range v.Names {
				if i < len(v.Values) {
					if cl, ok := v.Values[i].(*ast.CompositeLit); ok {
						m[id.Name] = litStrings(cl, nil)
					}
				}
			}
		}
		return true
	})
	return m
}

func fileLists(f *ast.File) map[string][]string {
	m := map[string][]string{}
	for _, d := range f.Decls {
		if gd, ok := d.(*ast.GenDecl); ok && gd.Tok == token.VAR {
			for k, v := range stringLists(gd) {
				m[k] = v
			}
		}
	}
	return m
}

func (cm *codeMetrics) add(name, kind string, labels []string, where string) {
	info := metricInfo{kind: kind, labels: labels, where: where}
	cm.byName[name] = info
	switch kind {
	case "histogram", "desc":
		withLE := append(append([]string(nil), labels...), "le")
		cm.byName[name+"_bucket"] = metricInfo{kind: kind, labels: withLE, where: where}
		cm.byName[name+"_sum"] = info
		cm.byName[name+"_count"] = info
	case "summary":
		cm.byName[name+"_sum"] = info
		cm.byName[name+"_count"] = info
	}
}

func (cm *codeMetrics) names(prefix string) []string {
	var out []string
	for n, info := range cm.byName {
		if strings.HasPrefix(n, prefix) && (info.kind != "histogram" || !hasAnySuffix(n, "_bucket", "_sum", "_count")) {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

func hasAnySuffix(s string, suffixes ...string) bool {
	for _, x := range suffixes {
		if strings.HasSuffix(s, x) {
			return true
		}
	}
	return false
}

// TestScanFindsKnownMetrics guards the scanner itself: if it stopped finding
// metrics (a refactor of capture/metrics.go into another style), every later
// "exists" check would be meaningless.
func TestScanFindsKnownMetrics(t *testing.T) {
	cm := scanMetrics(t)
	for name, labels := range map[string][]string{
		"tidemark_capture_events_total":                    {"namespace", "op"},
		"tidemark_capture_produce_duration_seconds":        nil,
		"tidemark_capture_produce_duration_seconds_bucket": {"le"},
		"tidemark_sink_rows_total":                         {"table", "op"},
		"tidemark_replication_lag_seconds":                 {"topic", "partition"},
		"tidemark_sink_write_duration_seconds_count":       nil,
	} {
		info, ok := cm.byName[name]
		if !ok {
			t.Errorf("scanner did not find %s", name)
			continue
		}
		if !reflect.DeepEqual(info.labels, labels) && !(len(info.labels) == 0 && len(labels) == 0) {
			t.Errorf("%s: labels %v, want %v", name, info.labels, labels)
		}
	}
	if !cm.goCollector || !cm.processCollector {
		t.Errorf("the daemon's Go and process collectors were not found (go_*, process_* series)")
	}
	if len(cm.unresolved) > 0 {
		t.Logf("metric definitions whose name is not a constant (not checked): %v", cm.unresolved)
	}
	if _, err := os.Stat(filepath.Join(repoRoot, "go.mod")); err != nil {
		t.Fatalf("repo root: %v", err)
	}
}

// configTree is the set of YAML keys the daemon's Config accepts, read from
// the struct definitions (yaml tags) in config and the packages whose
// config sections it embeds. The daemon decodes with KnownFields(true), so a
// key outside this tree stops it at start-up.
type configTree struct {
	fields map[string]*configTree // nil for a leaf (scalar, list of scalars, duration)
	anyKey bool                   // a map: every key is accepted
	elem   *configTree            // list elements, when they are structs
}

type typeIndex struct {
	fset  *token.FileSet
	types map[string]map[string]ast.Expr // package dir → type name → type expression
	files map[string][]*ast.File
}

func loadConfigTree(t *testing.T) *configTree {
	t.Helper()
	ti := &typeIndex{fset: token.NewFileSet(), types: map[string]map[string]ast.Expr{}, files: map[string][]*ast.File{}}
	root, err := ti.resolve("config", nil, &ast.Ident{Name: "Config"}, 0)
	if err != nil {
		t.Fatalf("reading the daemon's Config: %v", err)
	}
	return root
}

func (ti *typeIndex) load(dir string) (map[string]ast.Expr, []*ast.File, error) {
	if m, ok := ti.types[dir]; ok {
		return m, ti.files[dir], nil
	}
	m := map[string]ast.Expr{}
	entries, err := os.ReadDir(filepath.Join(repoRoot, dir))
	if err != nil {
		return nil, nil, err
	}
	var files []*ast.File
	for _, e := range entries {
		n := e.Name()
		if !strings.HasSuffix(n, ".go") || strings.HasSuffix(n, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(ti.fset, filepath.Join(repoRoot, dir, n), nil, parser.SkipObjectResolution)
		if err != nil {
			return nil, nil, err
		}
		files = append(files, f)
		for _, d := range f.Decls {
			if gd, ok := d.(*ast.GenDecl); ok && gd.Tok == token.TYPE {
				for _, s := range gd.Specs {
					ts := s.(*ast.TypeSpec)
					m[ts.Name.Name] = ts.Type
				}
			}
		}
	}
	ti.types[dir], ti.files[dir] = m, files
	return m, files, nil
}

// resolve turns a type expression used in package dir (file f) into a tree.
func (ti *typeIndex) resolve(dir string, f *ast.File, e ast.Expr, depth int) (*configTree, error) {
	if depth > 20 {
		return nil, nil
	}
	switch v := e.(type) {
	case *ast.StarExpr:
		return ti.resolve(dir, f, v.X, depth+1)
	case *ast.ArrayType:
		el, err := ti.resolve(dir, f, v.Elt, depth+1)
		if err != nil || el == nil {
			return nil, err
		}
		return &configTree{elem: el}, nil
	case *ast.MapType:
		return &configTree{anyKey: true}, nil
	case *ast.Ident:
		types, _, err := ti.load(dir)
		if err != nil {
			return nil, err
		}
		te, ok := types[v.Name]
		if !ok {
			return nil, nil // a predeclared type: a leaf
		}
		return ti.resolve(dir, ti.fileDeclaring(dir, v.Name, f), te, depth+1)
	case *ast.SelectorExpr:
		pkg, _ := v.X.(*ast.Ident)
		if pkg == nil || f == nil {
			return nil, nil
		}
		for _, im := range f.Imports {
			path, _ := strconv.Unquote(im.Path.Value)
			name := path[strings.LastIndex(path, "/")+1:]
			if im.Name != nil {
				name = im.Name.Name
			}
			if name == pkg.Name && strings.HasPrefix(path, modulePath+"/") {
				return ti.resolve(strings.TrimPrefix(path, modulePath+"/"), nil, v.Sel, depth+1)
			}
		}
		return nil, nil // time.Duration and other outside types are scalars
	case *ast.StructType:
		tree := &configTree{fields: map[string]*configTree{}}
		for _, fl := range v.Fields.List {
			tag := ""
			if fl.Tag != nil {
				raw, _ := strconv.Unquote(fl.Tag.Value)
				tag = reflect.StructTag(raw).Get("yaml")
			}
			name, opts, _ := strings.Cut(tag, ",")
			if name == "-" {
				continue
			}
			sub, err := ti.resolve(dir, f, fl.Type, depth+1)
			if err != nil {
				return nil, err
			}
			if strings.Contains(opts, "inline") && sub != nil {
				for k, x := range sub.fields {
					tree.fields[k] = x
				}
				continue
			}
			for _, n := range fl.Names {
				key := name
				if key == "" {
					key = strings.ToLower(n.Name)
				}
				tree.fields[key] = sub
			}
		}
		return tree, nil
	}
	return nil, nil
}

// fileDeclaring returns the file of dir that declares type name (its imports
// resolve the selectors in that type), or fallback.
func (ti *typeIndex) fileDeclaring(dir, name string, fallback *ast.File) *ast.File {
	for _, f := range ti.files[dir] {
		for _, d := range f.Decls {
			if gd, ok := d.(*ast.GenDecl); ok && gd.Tok == token.TYPE {
				for _, s := range gd.Specs {
					if s.(*ast.TypeSpec).Name.Name == name {
						return f
					}
				}
			}
		}
	}
	return fallback
}
