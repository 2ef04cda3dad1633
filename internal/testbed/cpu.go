package testbed

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
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
	n, err := strconv.Atoi(strings.TrimSpace(string(pid)))
	if err != nil {
		return 0
	}
	d, _ := ProcessCPU(n)
	return d
}

// ProcessCPU is the CPU time pid has used (user + system, /proc/<pid>/stat).
func ProcessCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name, which is in parentheses and may hold spaces.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("parse /proc/%d/stat: %v %v", pid, err1, err2)
	}
	// USER_HZ is 100 on Linux.
	return time.Duration(utime+stime) * 10 * time.Millisecond, nil
}

// SelfCPU is the CPU time this process has used, user and system, from
// getrusage: microseconds, where /proc (ProcessCPU) counts 10 ms ticks.
func SelfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// CPU is CPU time used by this process (Client) and by the stack's servers
// (zero for a server whose pid is not found).
type CPU struct{ Client, Kafka, Cassandra time.Duration }

// CPUNow is the CPU time used so far.
func CPUNow() CPU {
	return CPU{SelfCPU(), ServerCPU("kafka"), ServerCPU("cassandra")}
}

// AddSince adds the CPU time used since t to sum.
func (t CPU) AddSince(sum *CPU) {
	now := CPUNow()
	sum.Client += now.Client - t.Client
	sum.Kafka += now.Kafka - t.Kafka
	sum.Cassandra += now.Cassandra - t.Cassandra
}

// Median is the median of xs (0 for none); xs is not changed.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	ys := slices.Clone(xs)
	slices.Sort(ys)
	if len(ys)%2 == 1 {
		return ys[len(ys)/2]
	}
	return (ys[len(ys)/2-1] + ys[len(ys)/2]) / 2
}

// NeighbourRatios divides each of the n passes of one side by the mean of
// the passes of the baseline on either side of it; bases holds n+1 passes,
// base i ran before pass i. Benchmarks alternate the two on a shared
// machine so that neither warm-up nor a neighbour's burst lands on one side
// only, and report the median of these ratios.
func NeighbourRatios(passes, bases []float64) []float64 {
	out := make([]float64, 0, len(passes))
	for i, p := range passes {
		out = append(out, 2*p/(bases[i]+bases[i+1]))
	}
	return out
}
