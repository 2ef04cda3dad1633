package testbed

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/primitive"
	"go.mongodb.org/mongo-driver/mongo"
)

// Standin is a MongoDB stand-in (deploy/local/mongo) started for one test,
// on its own port: tests that cap its oplog or measure its CPU must not
// share it with the stack's, which other tests use at the same time.
type Standin struct {
	URI string
	Pid int
}

// StartStandin compiles deploy/local/mongo (once per source version) and
// starts it with args (e.g. "--oplog-max-entries", "100"); it is killed at
// cleanup. It needs a JDK and the jars `deploy/local/stack up` resolved.
func StartStandin(t testing.TB, args ...string) *Standin {
	t.Helper()
	java, classes, jars := standinBuild(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command(java, append([]string{"-Xms64m", "-Xmx512m", "-cp", classes + ":" + jars + "/*",
		"-Dorg.slf4j.simpleLogger.defaultLogLevel=warn", "TidemarkMongo", "127.0.0.1", strconv.Itoa(port)}, args...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	logs := &LockedBuffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("start the stand-in: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("stand-in log tail:\n%s", logs.Tail(3000))
		}
	})
	ready := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "listening on") {
				ready <- nil
				io.Copy(logs, out)
				return
			}
		}
		ready <- fmt.Errorf("stand-in exited before listening: %s", logs.Tail(2000))
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(90 * time.Second):
		t.Fatalf("stand-in not listening after 90s: %s", logs.Tail(2000))
	}
	return &Standin{URI: fmt.Sprintf("mongodb://127.0.0.1:%d", port), Pid: cmd.Process.Pid}
}

var standinOnce struct {
	sync.Mutex
	classes string
}

// standinBuild returns the java binary, the compiled launcher's folder and
// the jar folder. Classes go to a temporary folder named by the sources'
// hash, so a test binary compiles once and a changed source recompiles.
func standinBuild(t testing.TB) (java, classes, jars string) {
	t.Helper()
	java = javaBin()
	if java == "" {
		t.Fatal("no java found: install a JDK 17 (the local stack needs one too)")
	}
	cache := env("TIDEMARK_CACHE", filepath.Join(RepoRoot(), ".cache"))
	jars = filepath.Join(cache, "jars", "mongo")
	if _, err := os.Stat(jars); err != nil {
		t.Fatalf("no mongo-java-server jars in %s: %v; %s", jars, err, hint)
	}
	srcs, _ := filepath.Glob(filepath.Join(RepoRoot(), "deploy/local/mongo/*.java"))
	sort.Strings(srcs)
	h := sha256.New()
	for _, s := range srcs {
		b, err := os.ReadFile(s)
		if err != nil {
			t.Fatal(err)
		}
		h.Write(b)
	}
	standinOnce.Lock()
	defer standinOnce.Unlock()
	classes = filepath.Join(os.TempDir(), "tidemark-standin-"+hex.EncodeToString(h.Sum(nil))[:16])
	if _, err := os.Stat(filepath.Join(classes, "TidemarkMongo.class")); err == nil {
		return java, classes, jars
	}
	tmp, err := os.MkdirTemp(os.TempDir(), "tidemark-standin-build-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	javac := filepath.Join(filepath.Dir(java), "javac")
	if b, err := exec.Command(javac, append([]string{"-d", tmp, "-cp", jars + "/*"}, srcs...)...).CombinedOutput(); err != nil {
		t.Fatalf("compile deploy/local/mongo: %v\n%s", err, b)
	}
	// Another test binary may have raced us to the same folder: either copy is complete.
	if err := os.Rename(tmp, classes); err != nil {
		if _, statErr := os.Stat(filepath.Join(classes, "TidemarkMongo.class")); statErr != nil {
			t.Fatal(err)
		}
	}
	return java, classes, jars
}

func javaBin() string {
	if h := os.Getenv("JAVA_HOME"); h != "" {
		if p := filepath.Join(h, "bin", "java"); isExec(p) {
			return p
		}
	}
	if p := "/usr/lib/jvm/java-17-openjdk-amd64/bin/java"; isExec(p) {
		return p
	}
	p, _ := exec.LookPath("java")
	return p
}

func isExec(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode()&0o111 != 0
}

// OplogCap is the stand-in's answer to tidemarkOplogCap: its bounds (0 is
// none) and what its oplog holds.
type OplogCap struct {
	MaxEntries int64               `bson:"maxEntries"`
	MaxBytes   int64               `bson:"maxBytes"`
	Entries    int64               `bson:"entries"`
	Bytes      int64               `bson:"bytes"`
	Oldest     primitive.Timestamp `bson:"oldest"`
	Newest     primitive.Timestamp `bson:"newest"`
}

// SetOplogCap sets the stand-in's oplog bounds (a negative value keeps that
// bound) and returns the state after trimming to them.
func SetOplogCap(ctx context.Context, cl *mongo.Client, maxEntries, maxBytes int64) (OplogCap, error) {
	cmd := bson.D{{Key: "tidemarkOplogCap", Value: 1}}
	if maxEntries >= 0 {
		cmd = append(cmd, bson.E{Key: "maxEntries", Value: maxEntries})
	}
	if maxBytes >= 0 {
		cmd = append(cmd, bson.E{Key: "maxBytes", Value: maxBytes})
	}
	var c OplogCap
	err := cl.Database("admin").RunCommand(ctx, cmd).Decode(&c)
	if err != nil {
		return c, fmt.Errorf("tidemarkOplogCap: %w", err)
	}
	return c, nil
}
