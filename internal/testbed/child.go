package testbed

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"sync"
	"testing"
)

// ChildMain is TestMain for packages whose tests SIGKILL a component: when
// env is set, this process is a child started by StartChild and runs
// run(value) instead of the tests.
func ChildMain(m *testing.M, env string, run func(conf string) int) {
	if v := os.Getenv(env); v != "" {
		os.Exit(run(v))
	}
	os.Exit(m.Run())
}

// LockedBuffer collects a child process's output while the test may read it.
type LockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *LockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String is everything written so far.
func (l *LockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Tail is the last n bytes written.
func (l *LockedBuffer) Tail(n int) string { return Tail(l.String(), n) }

// Tail is the last n bytes of s, for failure messages.
func Tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// RunDaemon runs `bin run --config config` until the test ends (then SIGINT)
// and prints the end of its log, named name, if the test failed. The process
// is returned for tests that kill it themselves.
func RunDaemon(t testing.TB, ctx context.Context, bin, name, config string) *exec.Cmd {
	t.Helper()
	cmd, _ := StartDaemon(t, ctx, bin, name, config)
	return cmd
}

// StartDaemon is RunDaemon that also returns the daemon's log as it grows.
func StartDaemon(t testing.TB, ctx context.Context, bin, name, config string) (*exec.Cmd, *LockedBuffer) {
	t.Helper()
	cmd := exec.CommandContext(ctx, bin, "run", "--config", config)
	logs := &LockedBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
		if t.Failed() {
			t.Logf("%s log tail:\n%s", name, logs.Tail(5000))
		}
	})
	return cmd, logs
}

// StartChild re-executes the test binary as a child process with conf in env.
// The child is killed at cleanup; its log tail is printed if the test failed.
func StartChild(t testing.TB, env, conf string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), env+"="+conf)
	logs := &LockedBuffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("child %d log tail:\n%s", cmd.Process.Pid, logs.Tail(3000))
		}
	})
	return cmd
}
