package testbed

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// ServerCPU reads the stack's pid file and that process's CPU time; a
// missing pid file or process is 0.
func TestServerCPU(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("TIDEMARK_STACK_DIR", dir)
	if got := ServerCPU("kafka"); got != 0 {
		t.Fatalf("no pid file: %v, want 0", got)
	}
	if err := os.WriteFile(filepath.Join(dir, "kafka.pid"), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for c0 := SelfCPU(); SelfCPU()-c0 < 50*time.Millisecond; { // more than a 10 ms tick of CPU, busy or not
	}
	got := ServerCPU("kafka")
	if got <= 0 || got > SelfCPU()+10*time.Millisecond {
		t.Fatalf("ServerCPU of this process %v, SelfCPU %v", got, SelfCPU())
	}
	if err := os.WriteFile(filepath.Join(dir, "kafka.pid"), []byte("0"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := ServerCPU("kafka"); got != 0 {
		t.Fatalf("no such process: %v, want 0", got)
	}
}
