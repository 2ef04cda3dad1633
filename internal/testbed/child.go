package testbed

import (
	"bytes"
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

// lockedBuffer collects a child's stderr while the test may read it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) tail(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.b.String()
	if len(s) > n {
		s = s[len(s)-n:]
	}
	return s
}

// StartChild re-executes the test binary as a child process with conf in env.
// The child is killed at cleanup; its log tail is printed if the test failed.
func StartChild(t testing.TB, env, conf string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), env+"="+conf)
	logs := &lockedBuffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("child %d log tail:\n%s", cmd.Process.Pid, logs.tail(3000))
		}
	})
	return cmd
}
