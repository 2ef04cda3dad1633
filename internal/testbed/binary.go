package testbed

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

var built struct {
	once sync.Once
	bin  string
	out  []byte
	err  error
}

// Tidemark builds cmd/tidemark once per test process and returns the
// binary's path. RemoveTidemark, from TestMain, deletes it.
func Tidemark(t testing.TB) string {
	t.Helper()
	built.once.Do(func() {
		d, err := os.MkdirTemp("", "tidemark-bin")
		if err != nil {
			built.err = err
			return
		}
		built.bin = filepath.Join(d, "tidemark")
		cmd := exec.Command("go", "build", "-o", built.bin, "./cmd/tidemark")
		cmd.Dir = RepoRoot()
		built.out, built.err = cmd.CombinedOutput()
	})
	if built.err != nil {
		t.Fatalf("build tidemark: %v\n%s", built.err, built.out)
	}
	return built.bin
}

// RemoveTidemark deletes the binary Tidemark built, if it built one.
func RemoveTidemark() {
	if built.bin != "" {
		os.RemoveAll(filepath.Dir(built.bin))
	}
}

// FreeAddr is a loopback address no one listens on right now.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
