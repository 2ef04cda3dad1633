package testbed

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// ServerCPU is the CPU time a server of the local stack (kafka, cassandra,
// mongo) has used so far, read from /proc by the pid deploy/local/stack
// keeps in TIDEMARK_STACK_DIR (default the repository's .stack); 0 when the
// stack is elsewhere. Benchmarks print it beside their own CPU, since on a
// small machine the servers' share decides the figures.
func ServerCPU(name string) time.Duration {
	dir := os.Getenv("TIDEMARK_STACK_DIR")
	if dir == "" {
		dir = filepath.Join(RepoRoot(), ".stack")
	}
	pid, err := os.ReadFile(filepath.Join(dir, name+".pid"))
	if err != nil {
		return 0
	}
	stat, err := os.ReadFile(filepath.Join("/proc", strings.TrimSpace(string(pid)), "stat"))
	if err != nil {
		return 0
	}
	// Fields after the command name, which ends with ")": utime and stime
	// are the 12th and 13th, in clock ticks (100 per second on Linux).
	f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+st) * 10 * time.Millisecond
}
