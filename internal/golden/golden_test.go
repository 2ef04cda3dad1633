package golden

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// recorder is a testing.TB that keeps what Check reports.
type recorder struct {
	testing.TB
	failed bool
	msg    string
}

func (r *recorder) Helper() {}
func (r *recorder) Errorf(format string, a ...any) {
	r.failed = true
	r.msg = fmt.Sprintf(format, a...)
}

func TestCheck(t *testing.T) {
	t.Chdir(t.TempDir())
	if err := os.MkdirAll("testdata", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join("testdata", "g.txt"), []byte("a\nb\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		got  string
		fail bool
	}{
		{"equal", "a\nb\n", false},
		{"a line differs", "a\nc\n", true},
		{"a line more", "a\nb\nc\n", true},
		{"a line less", "a\n", true},
	} {
		r := &recorder{TB: t}
		Check(r, "g.txt", []byte(c.got))
		if r.failed != c.fail {
			t.Errorf("%s: failed %v, want %v (%s)", c.name, r.failed, c.fail, r.msg)
		}
	}
	*update = true
	defer func() { *update = false }()
	Check(t, "new/h.txt", []byte("x"))
	if b, err := os.ReadFile(filepath.Join("testdata", "new", "h.txt")); err != nil || string(b) != "x" {
		t.Fatalf("-update wrote %q, %v", b, err)
	}
}
